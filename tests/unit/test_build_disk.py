"""Partition tables, sizes and boot-loader config text for the disk and ISO formats (pure functions)."""

from __future__ import annotations

import struct
import uuid
import zlib
from typing import Any

import pytest

from lkctl.build._disk import ESP_TYPE, FIRST_LBA, SECTOR, gpt_layout, mbr, partition_for
from lkctl.build._media import _grub_quote, _syslinux_cfg
from lkctl.errors import BuildError

MIB = 1 << 20


def test_partition_starts_at_one_mib_and_spans_whole_mibs() -> None:
    part = partition_for(64 * MIB, gpt=False)
    assert (part.start, part.offset, part.size) == (FIRST_LBA, MIB, 63 * MIB)
    gpt_part = partition_for(64 * MIB, gpt=True)
    assert gpt_part.size == 62 * MIB  # the backup table takes the end: the last whole MiB is left out
    with pytest.raises(BuildError, match="no room"):
        partition_for(MIB, gpt=False)


def test_mbr_has_boot_code_signature_and_one_active_lba_partition() -> None:
    part = partition_for(32 * MIB, gpt=False)
    code = bytes(range(256)) + b"\x90" * 184
    sector = mbr(32 * MIB, part, part_type=0x0E, signature=0xDEADBEEF, boot_code=code)
    assert len(sector) == SECTOR and sector[:440] == code and sector[510:] == b"\x55\xaa"
    assert struct.unpack_from("<I", sector, 440)[0] == 0xDEADBEEF
    status, _, ptype, _, start, count = struct.unpack_from("<B3sB3sII", sector, 446)
    assert (status, ptype, start, count) == (0x80, 0x0E, 2048, part.sectors)
    assert sector[462:510] == bytes(48)  # the other three entries are empty
    with pytest.raises(BuildError, match="at most 440"):
        mbr(32 * MIB, part, part_type=0x0E, signature=0, boot_code=b"x" * 441)


def _header(data: bytes | bytearray) -> dict[str, Any]:
    fields = struct.unpack_from("<8sIIIIQQQQ16sQIII", data)
    keys = ["sig", "rev", "size", "crc", "res", "current", "backup", "first", "last", "guid", "entries", "n", "esize",
            "ecrc"]  # fmt: skip
    return dict(zip(keys, fields, strict=True))


def test_gpt_headers_and_entries_are_consistent_and_checksummed() -> None:
    size = 40 * MIB
    total = size // SECTOR
    part = partition_for(size, gpt=True)
    disk_guid, part_guid = uuid.uuid4(), uuid.uuid4()
    layout = gpt_layout(size, part, disk_guid=disk_guid, part_guid=part_guid)
    image = bytearray(size)
    image[: len(layout.head)] = layout.head
    image[layout.tail_offset : layout.tail_offset + len(layout.tail)] = layout.tail

    protective = image[446:462]
    assert protective[4] == 0xEE and struct.unpack_from("<II", protective, 8) == (1, total - 1)
    primary, backup = _header(image[SECTOR:]), _header(image[(total - 1) * SECTOR :])
    for h, here, other in ((primary, 1, total - 1), (backup, total - 1, 1)):
        assert h["sig"] == b"EFI PART" and (h["current"], h["backup"]) == (here, other)
        raw = bytearray(image[here * SECTOR : here * SECTOR + 92])
        raw[16:20] = bytes(4)
        assert zlib.crc32(raw) == h["crc"]
        entries = image[int(h["entries"]) * SECTOR :][: 128 * 128]
        assert zlib.crc32(entries) == h["ecrc"]
        assert uuid.UUID(bytes_le=bytes(h["guid"])) == disk_guid
    entry = image[2 * SECTOR : 2 * SECTOR + 128]
    assert uuid.UUID(bytes_le=bytes(entry[:16])) == ESP_TYPE
    assert uuid.UUID(bytes_le=bytes(entry[16:32])) == part_guid
    first, last = struct.unpack_from("<QQ", entry, 32)
    assert (first, last) == (2048, 2048 + part.sectors - 1) and last <= primary["last"]
    assert entry[56:76].decode("utf-16-le") == "EFI System"


def test_grub_gets_the_command_line_word_for_word() -> None:
    quoted = _grub_quote("console=ttyS0 init=$x a='b' ; echo")
    assert quoted == "'console=ttyS0' 'init=$x' 'a='\\''b'\\''' ';' 'echo'"


def test_syslinux_config_boots_the_kernel_with_the_initrd_and_command_line() -> None:
    cfg = _syslinux_cfg("/kernel", "/initrd.img", "console=ttyS0 quiet")
    assert "DEFAULT linux" in cfg and "  KERNEL /kernel\n  INITRD /initrd.img\n  APPEND console=ttyS0 quiet\n" in cfg

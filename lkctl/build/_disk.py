"""Partition tables as bytes (pure functions): an MBR for BIOS disks, a protective MBR + GPT for EFI disks.

Written here rather than with sfdisk/sgdisk so a disk image is made without root, loop devices or extra
packages, and so the identifiers (disk signature, GUIDs) come from the build key: the same inputs give the same
disk. Layout: one partition from 1 MiB (LBA 2048) to the end (GPT: to the backup table's start).
"""

from __future__ import annotations

import struct
import uuid
import zlib
from dataclasses import dataclass

from lkctl.errors import BuildError

__all__ = [
    "ESP_TYPE",
    "FIRST_LBA",
    "SECTOR",
    "GptLayout",
    "Partition",
    "gpt_layout",
    "mbr",
    "partition_for",
]

SECTOR = 512
FIRST_LBA = 2048  # 1 MiB: the alignment every partitioning tool uses
ESP_TYPE = uuid.UUID("C12A7328-F81F-11D2-BA4B-00A0C93EC93B")
_GPT_ENTRIES = 128
_GPT_ENTRY_SIZE = 128
_GPT_TABLE_SECTORS = _GPT_ENTRIES * _GPT_ENTRY_SIZE // SECTOR  # 32
FIRST_LBA_USABLE = 2 + _GPT_TABLE_SECTORS  # 34: after the protective MBR, the header and the entries
_CHS_MAX = b"\xfe\xff\xff"  # "use LBA": the CHS fields of a partition beyond what CHS can address


@dataclass(frozen=True)
class Partition:
    """The one partition of a disk image: first sector and length, in 512-byte sectors."""

    start: int
    sectors: int

    @property
    def offset(self) -> int:
        return self.start * SECTOR

    @property
    def size(self) -> int:
        return self.sectors * SECTOR


def partition_for(disk_size: int, *, gpt: bool) -> Partition:
    """The partition spanning `disk_size` bytes after the 1 MiB gap (and before GPT's backup table)."""
    if disk_size % SECTOR:
        raise BuildError(f"disk size {disk_size} is not a multiple of {SECTOR}")
    total = disk_size // SECTOR
    end = total - (1 + _GPT_TABLE_SECTORS if gpt else 0)
    sectors = (end - FIRST_LBA) // 2048 * 2048  # whole MiBs: mkfs.fat takes the size in KiB
    if sectors <= 0:
        raise BuildError(f"a disk of {disk_size} bytes leaves no room for a partition")
    return Partition(FIRST_LBA, sectors)


def mbr(disk_size: int, part: Partition, *, part_type: int, signature: int, boot_code: bytes = b"") -> bytes:
    """Sector 0 of a BIOS disk: `boot_code` (at most 440 bytes), the disk signature and one active partition."""
    if len(boot_code) > 440:
        raise BuildError(f"MBR boot code is {len(boot_code)} bytes; at most 440 fit")
    if part.start + part.sectors > min(disk_size // SECTOR, 1 << 32):
        raise BuildError("the partition does not fit an MBR disk of that size (2 TiB at most)")
    sector = bytearray(SECTOR)
    sector[: len(boot_code)] = boot_code
    struct.pack_into("<IH", sector, 440, signature & 0xFFFFFFFF, 0)
    struct.pack_into("<B3sB3sII", sector, 446, 0x80, _CHS_MAX, part_type, _CHS_MAX, part.start, part.sectors)
    sector[510:512] = b"\x55\xaa"
    return bytes(sector)


@dataclass(frozen=True)
class GptLayout:
    """What to write where: `head` at offset 0 (protective MBR, header, entries), `tail` at `tail_offset`."""

    head: bytes
    tail: bytes
    tail_offset: int


def _gpt_header(current: int, backup: int, entries_lba: int, last_usable: int, disk: uuid.UUID, crc: int) -> bytes:
    fields = (b"EFI PART", 0x00010000, 92, 0, 0, current, backup, FIRST_LBA_USABLE, last_usable, disk.bytes_le)
    header = struct.pack("<8sIIIIQQQQ16sQIII", *fields, entries_lba, _GPT_ENTRIES, _GPT_ENTRY_SIZE, crc)
    header = header[:16] + struct.pack("<I", zlib.crc32(header)) + header[20:]
    return header.ljust(SECTOR, b"\0")


def gpt_layout(disk_size: int, part: Partition, *, disk_guid: uuid.UUID, part_guid: uuid.UUID,
               part_type: uuid.UUID = ESP_TYPE, name: str = "EFI System") -> GptLayout:  # fmt: skip
    """A GPT disk with one partition (an ESP by default), primary and backup tables, and the protective MBR."""
    total = disk_size // SECTOR
    last_usable = total - 2 - _GPT_TABLE_SECTORS
    if part.start < FIRST_LBA_USABLE or part.start + part.sectors - 1 > last_usable:
        raise BuildError("the partition does not fit between the GPT tables")
    label = name.encode("utf-16-le")[:72].ljust(72, b"\0")
    entry = part_type.bytes_le + part_guid.bytes_le + struct.pack("<QQQ", part.start, part.start + part.sectors - 1, 0)
    entries = (entry + label).ljust(_GPT_ENTRIES * _GPT_ENTRY_SIZE, b"\0")
    crc = zlib.crc32(entries)
    protective = bytearray(SECTOR)
    struct.pack_into("<B3sB3sII", protective, 446, 0, b"\x00\x02\x00", 0xEE, _CHS_MAX, 1, min(total - 1, 0xFFFFFFFF))
    protective[510:512] = b"\x55\xaa"
    primary = _gpt_header(1, total - 1, 2, last_usable, disk_guid, crc)
    backup = _gpt_header(total - 1, 1, total - 1 - _GPT_TABLE_SECTORS, last_usable, disk_guid, crc)
    return GptLayout(bytes(protective) + primary + entries, entries + backup, (total - 1 - _GPT_TABLE_SECTORS) * SECTOR)

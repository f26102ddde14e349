import struct
from pathlib import Path

import pytest

from lkctl.runtime.pvh import has_pvh_entry, pvh_kernel


def elf_with_note(name: bytes, ntype: int) -> bytes:
    desc = b"\0" * 4
    note = struct.pack("<III", len(name) + 1, len(desc), ntype) + (name + b"\0").ljust(
        4 * ((len(name) + 4) // 4), b"\0"
    )
    note += desc
    header = bytearray(64)
    header[:6] = b"\x7fELF\x02\x01"
    struct.pack_into("<Q", header, 0x20, 64)  # e_phoff
    struct.pack_into("<HH", header, 0x36, 56, 1)  # e_phentsize, e_phnum
    phdr = bytearray(56)
    struct.pack_into("<I", phdr, 0, 4)  # PT_NOTE
    struct.pack_into("<Q", phdr, 8, 64 + 56)  # p_offset
    struct.pack_into("<Q", phdr, 32, len(note))  # p_filesz
    return bytes(header) + bytes(phdr) + note


def test_pvh_entry_note_is_recognised() -> None:
    assert has_pvh_entry(elf_with_note(b"Xen", 18))


@pytest.mark.parametrize("blob", [elf_with_note(b"Xen", 17), elf_with_note(b"GNU", 18), b"MZ not an elf", b""])
def test_anything_else_is_not_pvh(blob: bytes) -> None:
    assert not has_pvh_entry(blob)


def test_a_kernel_without_pvh_keeps_booting_as_is(tmp_path: Path) -> None:
    kernel = tmp_path / "kernel"
    kernel.write_bytes(b"\x00" * 4096)
    assert pvh_kernel(kernel) is None
    assert pvh_kernel(kernel) is None  # the negative answer is cached too


def test_debian_kernel_is_extracted_once_for_pvh() -> None:
    kernels = sorted(Path("/boot").glob("vmlinuz-*"))
    if not kernels or not kernels[-1].stat().st_mode & 0o004:
        pytest.skip("no readable kernel in /boot")
    vmlinux = pvh_kernel(kernels[-1])
    if vmlinux is None:
        pytest.skip("this kernel has no PVH entry (CONFIG_PVH off)")
    assert has_pvh_entry(vmlinux.read_bytes())
    assert pvh_kernel(kernels[-1]) == vmlinux

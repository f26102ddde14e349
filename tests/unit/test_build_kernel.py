"""`--decompress-kernel`: the raw kernel out of a gzip file or a bzImage's gzip, xz or zstd payload."""

from __future__ import annotations

import gzip
import lzma
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from lkctl.build._kernel import decompress_kernel
from lkctl.errors import BuildError

VMLINUX = b"\x7fELF" + bytes(range(256)) * 64


def bzimage(payload: bytes, setup_sects: int = 3) -> bytes:
    """A bzImage-shaped file: boot sector + setup (protocol 2.15) + protected-mode part holding `payload`."""
    setup = bytearray((setup_sects + 1) * 512)
    setup[0x1F1] = setup_sects
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", setup, 0x206, 0x020F)
    offset = 0x100  # the decompressor stub comes first in the protected-mode part
    struct.pack_into("<II", setup, 0x248, offset, len(payload) + 4)
    sized = payload + struct.pack("<I", len(VMLINUX))  # the kernel build appends the uncompressed size
    return bytes(setup) + b"\xcc" * offset + sized + b"\0" * 64


def test_a_gzip_kernel_is_gunzipped() -> None:
    assert decompress_kernel(gzip.compress(VMLINUX)) == VMLINUX


@pytest.mark.parametrize("compress", [gzip.compress, lambda d: lzma.compress(d, lzma.FORMAT_XZ)], ids=["gzip", "xz"])
def test_a_bzimage_payload_is_found_and_decompressed(compress: object) -> None:
    assert decompress_kernel(bzimage(compress(VMLINUX))) == VMLINUX  # type: ignore[operator]


def test_a_zstd_payload_goes_through_the_zstd_program() -> None:
    if shutil.which("zstd") is None:
        pytest.skip("zstd not installed")
    payload = subprocess.run(["zstd", "-q", "-c"], input=VMLINUX, capture_output=True, check=True).stdout
    assert decompress_kernel(bzimage(payload)) == VMLINUX


def test_this_machines_kernel_decompresses_to_an_elf_image() -> None:
    kernels = sorted(Path("/boot").glob("vmlinuz-*"))
    if not kernels:
        pytest.skip("no kernel in /boot")
    assert decompress_kernel(kernels[-1].read_bytes())[:4] == b"\x7fELF"


def test_an_uncompressed_kernel_is_refused_with_a_reason() -> None:
    with pytest.raises(BuildError, match="neither compressed nor a bzImage"):
        decompress_kernel(VMLINUX)
    with pytest.raises(BuildError, match="cannot decompress the kernel"):
        decompress_kernel(b"\x1f\x8b\x08\x00garbage")

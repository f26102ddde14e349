"""`--decompress-kernel`: the uncompressed kernel (vmlinux) out of a gzip file or an x86 bzImage.

Some boot paths want the raw kernel (arm64 `Image` loaders, Firecracker-style VMMs). LinuxKit gunzips a gzip file
or the gzip payload of a bzImage; Debian and most distributions compress the payload with xz or zstd, so those
are handled too (zstd through the `zstd` program: the standard library has no zstd before Python 3.14).
"""

from __future__ import annotations

import bz2
import lzma
import struct
import zlib
from collections.abc import Callable
from typing import Any

from lkctl.errors import BuildError
from lkctl.proc import find_program, run

__all__ = ["decompress_kernel"]

_MAGICS = (
    (b"\x1f\x8b", "gzip"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"BZh", "bzip2"),
    (b"\x5d\x00\x00", "lzma"),
)


_DECOMPRESSORS: dict[str, Callable[[], Any]] = {
    "gzip": lambda: zlib.decompressobj(31),
    "xz": lambda: lzma.LZMADecompressor(lzma.FORMAT_XZ),
    "lzma": lambda: lzma.LZMADecompressor(lzma.FORMAT_ALONE),
    "bzip2": bz2.BZ2Decompressor,
}


def _payload(data: bytes) -> bytes:
    """A bzImage's compressed payload (boot protocol >= 2.08 records where it is); else the data itself."""
    if len(data) < 0x250 or data[0x202:0x206] != b"HdrS":
        return data
    version = struct.unpack_from("<H", data, 0x206)[0]
    if version < 0x208:
        raise BuildError(f"bzImage boot protocol {version >> 8}.{version & 0xFF} is too old to find its payload")
    setup_sects = data[0x1F1] or 4
    offset, length = struct.unpack_from("<II", data, 0x248)
    start = (setup_sects + 1) * 512 + offset
    if start + length > len(data):
        raise BuildError("bzImage payload lies beyond the end of the file")
    return data[start : start + length]


def decompress_kernel(data: bytes) -> bytes:
    """The kernel in `data` uncompressed (a gzip/xz/zstd/bzip2/lzma file, or a bzImage holding one)."""
    payload = _payload(data)
    kind = next((k for magic, k in _MAGICS if payload.startswith(magic)), None)
    try:
        if kind == "zstd":
            if payload is not data:
                payload = payload[:-4]  # the kernel build appends the size, which zstd would read as a bad frame
            return run([find_program("zstd"), "-dcq"], input=payload, what="zstd (kernel payload)").stdout
        if kind is not None:
            d = _DECOMPRESSORS[kind]()
            out: bytes = d.decompress(payload)  # stops at the end of the stream: the build appends the size
            if not d.eof:
                raise EOFError("the compressed data ends early")
            return out
    except (zlib.error, lzma.LZMAError, OSError, EOFError) as e:
        raise BuildError(f"cannot decompress the kernel ({kind}): {e}") from None
    raise BuildError("--decompress-kernel: the kernel is neither compressed nor a bzImage with a known payload")

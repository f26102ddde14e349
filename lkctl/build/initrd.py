"""The initrd sink: entries → newc cpio → gzip, streamed, compressed on every core.

newc (`070701`) is the only cpio format the kernel's initramfs unpacker reads. Compression is pigz-style:
the stream is cut into 1 MiB blocks, each deflated on a worker thread (zlib drops the GIL) with the previous
block's last 32 KiB as its dictionary and ended with a sync flush, so the blocks join into one ordinary gzip
member that `gzip -d` and the kernel read as usual, and the ratio matches single-threaded gzip at that level.
"""

from __future__ import annotations

import collections
import os
import struct
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol

from lkctl.build._entry import Entry, EntryKind
from lkctl.build._formats import DEFAULT_LEVEL
from lkctl.errors import BuildError

__all__ = [
    "DEFAULT_LEVEL",
    "CpioWriter",
    "GzipState",
    "GzipStream",
    "InitrdCheckpoint",
    "InitrdWriter",
    "crc32_combine",
    "is_boot_path",
]

_BLOCK = 1 << 20
_WINDOW = 1 << 15
_CHUNK = 1 << 20
_U32 = 0xFFFFFFFF

_TYPE_BITS = {
    EntryKind.FILE: 0o100000,
    EntryKind.DIR: 0o040000,
    EntryKind.SYMLINK: 0o120000,
    EntryKind.CHAR: 0o020000,
    EntryKind.BLOCK: 0o060000,
    EntryKind.FIFO: 0o010000,
}
_HEADER = b"070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X"
_PAD = (b"", b"\0\0\0", b"\0\0", b"\0")  # indexed by length % 4


class _Sink(Protocol):
    def write(self, data: bytes, /) -> object: ...


class _Source(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


def is_boot_path(path: str) -> bool:
    """`boot/` holds the kernel, cmdline and ucode: LinuxKit keeps all of it out of the initrd."""
    return path == "boot" or path.startswith("boot/")


def _deflate(block: bytes, zdict: bytes, level: int, final: bool) -> bytes:
    if zdict:
        c = zlib.compressobj(level, zlib.DEFLATED, -15, 8, zlib.Z_DEFAULT_STRATEGY, zdict)
    else:
        c = zlib.compressobj(level, zlib.DEFLATED, -15, 8)
    return c.compress(block) + c.flush(zlib.Z_FINISH if final else zlib.Z_SYNC_FLUSH)


@dataclass(frozen=True)
class GzipState:
    """Where a gzip stream stood at a checkpoint: enough to append to its bytes later and still end up with one
    ordinary gzip member (the deflate data so far ends on a sync flush, so more blocks can follow it)."""

    crc: int
    size: int
    tail: bytes  # the last 32 KiB of uncompressed data: the next block's dictionary


def _gf2_times(mat: list[int], vec: int) -> int:
    out, i = 0, 0
    while vec:
        if vec & 1:
            out ^= mat[i]
        vec >>= 1
        i += 1
    return out


def _gf2_square(mat: list[int]) -> list[int]:
    return [_gf2_times(mat, mat[n]) for n in range(32)]


def crc32_combine(crc1: int, crc2: int, len2: int) -> int:
    """crc32(a + b) from crc32(a), crc32(b) and len(b) (zlib's crc32_combine, which Python does not expose)."""
    if len2 <= 0:
        return crc1
    odd = [0xEDB88320] + [1 << n for n in range(31)]  # the operator for one zero bit
    even = _gf2_square(odd)  # two zero bits
    odd = _gf2_square(even)  # four
    while True:  # apply len2 zero bytes to crc1, squaring the operator for each bit of len2
        even = _gf2_square(odd)
        if len2 & 1:
            crc1 = _gf2_times(even, crc1)
        len2 >>= 1
        if not len2:
            break
        odd = _gf2_square(even)
        if len2 & 1:
            crc1 = _gf2_times(odd, crc1)
        len2 >>= 1
        if not len2:
            break
    return crc1 ^ crc2


class GzipStream:
    """A write-only gzip stream whose blocks are deflated in parallel; `close()` writes the trailer.

    `resume` continues a stream from a `checkpoint()` whose bytes are already in `out` (no header is written).
    `header=False` makes a fragment: raw deflate blocks ending on a sync flush (`checkpoint()` then `abort()`),
    which `splice` copies into another stream, so a compressed piece can be kept and reused.
    """

    def __init__(
        self,
        out: _Sink,
        level: int = DEFAULT_LEVEL,
        *,
        threads: int | None = None,
        resume: GzipState | None = None,
        header: bool = True,
    ) -> None:
        if not 0 <= level <= 9:
            raise BuildError(f"gzip level must be 0..9, not {level}")
        self._out, self._level = out, level
        self._threads = threads or os.cpu_count() or 1
        self._pool = ThreadPoolExecutor(max_workers=self._threads, thread_name_prefix="lkctl-gzip")
        self._inflight: collections.deque[Future[bytes]] = collections.deque()
        self._pending = bytearray()
        self._tail = resume.tail if resume else b""
        self._crc = resume.crc if resume else 0
        self._size = resume.size if resume else 0
        self._closed = False
        if resume is None and header:
            xfl = b"\x02" if level == 9 else b"\x04" if level == 1 else b"\x00"
            out.write(b"\x1f\x8b\x08\x00\x00\x00\x00\x00" + xfl + b"\x03")  # no name, mtime 0, OS unix

    def write(self, data: bytes, /) -> None:
        self._pending += data
        if len(self._pending) >= _BLOCK:
            self._submit(final=False)

    def _submit(self, *, final: bool, drain: bool = False) -> None:
        block = bytes(self._pending)
        self._pending.clear()
        self._crc = zlib.crc32(block, self._crc)
        self._size += len(block)
        self._inflight.append(self._pool.submit(_deflate, block, self._tail, self._level, final))
        self._tail = block[-_WINDOW:] if len(block) >= _WINDOW else (self._tail + block)[-_WINDOW:]
        # bounded look-ahead: memory stays at a few blocks per thread
        while self._inflight and (final or drain or len(self._inflight) > 2 * self._threads):
            self._out.write(self._inflight.popleft().result())

    def checkpoint(self) -> GzipState:
        """Flush everything written so far to `out` (ending on a sync flush) and say how to resume from here."""
        self._submit(final=False, drain=True)
        return GzipState(self._crc, self._size, self._tail)

    def splice(self, fragment: _Source, state: GzipState) -> None:
        """Append a fragment's deflate bytes (read from `fragment` to its end) as if its data had been written.

        A fragment starts without a dictionary and ends on a sync flush, so it fits anywhere between blocks."""
        if self._pending:
            self._submit(final=False, drain=True)
        while self._inflight:
            self._out.write(self._inflight.popleft().result())
        while chunk := fragment.read(_CHUNK):
            self._out.write(chunk)
        self._crc = crc32_combine(self._crc, state.crc, state.size)
        self._size += state.size
        self._tail = (self._tail + state.tail)[-_WINDOW:]

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._submit(final=True)
            self._out.write(struct.pack("<II", self._crc, self._size & _U32))
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def abort(self) -> None:
        self._closed = True
        self._pool.shutdown(wait=True, cancel_futures=True)


class CpioWriter:
    """newc cpio framing: a header per entry, 4-byte alignment, unique inode numbers, a `TRAILER!!!`.

    `first_ino` continues the numbering of an archive whose earlier entries were written by another writer."""

    def __init__(self, out: _Sink, *, first_ino: int = 0) -> None:
        self._out = out
        self._ino = first_ino

    @property
    def ino(self) -> int:
        """The last inode number used."""
        return self._ino

    def add(self, e: Entry) -> None:
        type_bits = _TYPE_BITS.get(e.kind)
        if type_bits is None:
            raise BuildError(f"{e.path}: cannot put a {e.kind.value} in a cpio archive")
        data = b""
        size = 0
        if e.kind is EntryKind.SYMLINK:
            data = os.fsencode(e.linkname)
            size = len(data)
        elif e.kind is EntryKind.FILE:
            size = e.size
            if size > _U32:
                raise BuildError(f"{e.path}: {size} bytes is over the newc cpio limit of 4 GiB per file")
            if size and e.data is None:
                raise BuildError(f"{e.path}: file entry without content")
        if e.uid > _U32 or e.gid > _U32 or e.uid < 0 or e.gid < 0:
            raise BuildError(f"{e.path}: uid/gid {e.uid}/{e.gid} does not fit in a cpio header")
        name = os.fsencode(e.path) + b"\0"
        self._ino += 1
        header = _HEADER % (
            self._ino,
            type_bits | (e.mode & 0o7777),
            e.uid,
            e.gid,
            2 if e.kind is EntryKind.DIR else 1,
            min(max(e.mtime, 0), _U32),
            size,
            0,
            0,
            e.devmajor,
            e.devminor,
            len(name),
            0,
        )
        head = header + name + _PAD[(110 + len(name)) % 4]
        if e.kind is not EntryKind.FILE or size == 0:
            self._out.write(head + data + _PAD[size % 4])
            return
        assert e.data is not None
        if size <= _CHUNK:
            content = e.data.read(size)
            if len(content) != size:
                raise BuildError(f"{e.path}: content is shorter than its recorded size ({len(content)} < {size})")
            self._out.write(head + content + _PAD[size % 4])
            return
        self._out.write(head)
        left = size
        while left:
            chunk = e.data.read(min(left, _CHUNK))
            if not chunk:
                raise BuildError(f"{e.path}: content is shorter than its recorded size ({size - left} < {size})")
            self._out.write(chunk)
            left -= len(chunk)
        self._out.write(_PAD[size % 4])

    def close(self) -> None:
        name = b"TRAILER!!!\0"
        trailer = _HEADER % (0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, len(name), 0)
        self._out.write(trailer + name + _PAD[(110 + len(name)) % 4])


@dataclass(frozen=True)
class InitrdCheckpoint:
    """An initrd stream paused between two entries (see `InitrdWriter.checkpoint`)."""

    gzip: GzipState
    ino: int


class InitrdWriter:
    """gzip(newc cpio) of the entries given to `add`, written to `out`; entries under boot/ are skipped.

    Use as a context manager: a clean exit writes the trailers, an exception stops the workers. A writer made
    with `resume=` appends to the bytes a checkpointed writer left in `out`: the result is one cpio archive in
    one gzip member, as if a single writer had been given every entry.
    """

    def __init__(
        self,
        out: _Sink,
        *,
        level: int = DEFAULT_LEVEL,
        threads: int | None = None,
        resume: InitrdCheckpoint | None = None,
        fragment: bool = False,
    ) -> None:
        self._gzip = GzipStream(
            out, level, threads=threads, resume=resume.gzip if resume else None, header=not fragment
        )
        self._cpio = CpioWriter(self._gzip, first_ino=resume.ino if resume else 0)
        self._closed = False
        self.count = 0

    def checkpoint(self) -> InitrdCheckpoint:
        """Flush what has been added; the bytes in `out` so far plus this state let a later writer go on."""
        return InitrdCheckpoint(self._gzip.checkpoint(), self._cpio.ino)

    def splice(self, fragment: _Source, state: GzipState) -> None:
        """Append a fragment made by a `fragment=True` writer (its cpio entries, compressed)."""
        self._gzip.splice(fragment, state)

    def add(self, entry: Entry) -> None:
        if is_boot_path(entry.path):
            return
        self._cpio.add(entry)
        self.count += 1

    def close(self) -> None:
        """Write the cpio trailer and finish the gzip stream (once; later calls do nothing)."""
        if not self._closed:
            self._closed = True
            self._cpio.close()
            self._gzip.close()

    def abort(self) -> None:
        self._closed = True
        self._gzip.abort()

    def __enter__(self) -> InitrdWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

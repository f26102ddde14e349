"""The tar sink: entries → a PAX tar, streamed, resumable between two entries.

This is LinuxKit's `tar` format (the whole root filesystem, `boot/` included) and the input of anything that
wants the tree as an archive (`image.export --format filesystem`). The end-of-archive blocks are written only
by `close()`, so a build can keep the bytes of everything but the `files` section and append a new one later.
"""

from __future__ import annotations

import tarfile
from typing import Protocol

from lkctl.build._entry import Entry, EntryKind
from lkctl.errors import BuildError

__all__ = ["TarWriter"]

_BLOCK = tarfile.BLOCKSIZE
_CHUNK = 1 << 20
_TYPES = {
    EntryKind.FILE: tarfile.REGTYPE,
    EntryKind.DIR: tarfile.DIRTYPE,
    EntryKind.SYMLINK: tarfile.SYMTYPE,
    EntryKind.CHAR: tarfile.CHRTYPE,
    EntryKind.BLOCK: tarfile.BLKTYPE,
    EntryKind.FIFO: tarfile.FIFOTYPE,
}


class _Out(Protocol):
    def write(self, data: bytes, /) -> object: ...


class TarWriter:
    """PAX tar framing for `Entry` values: long names, large ids and sizes go into PAX records."""

    def __init__(self, out: _Out) -> None:
        self._out = out
        self.count = 0
        self._closed = False

    def add(self, e: Entry) -> None:
        ti = tarfile.TarInfo(e.path + "/" if e.kind is EntryKind.DIR else e.path)
        ti.type = _TYPES[e.kind]
        ti.mode, ti.uid, ti.gid, ti.mtime = e.mode & 0o7777, e.uid, e.gid, e.mtime
        ti.uname = ti.gname = ""
        if e.kind is EntryKind.SYMLINK:
            ti.linkname = e.linkname
        elif e.kind in (EntryKind.CHAR, EntryKind.BLOCK):
            ti.devmajor, ti.devminor = e.devmajor, e.devminor
        elif e.kind is EntryKind.FILE:
            ti.size = e.size
            if e.size and e.data is None:
                raise BuildError(f"{e.path}: file entry without content")
        self._out.write(ti.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))
        if e.kind is EntryKind.FILE and e.size:
            assert e.data is not None
            left = e.size
            while left:
                chunk = e.data.read(min(left, _CHUNK))
                if not chunk:
                    got = e.size - left
                    raise BuildError(f"{e.path}: content is shorter than its recorded size ({got} < {e.size})")
                self._out.write(chunk)
                left -= len(chunk)
            if e.size % _BLOCK:
                self._out.write(b"\0" * (_BLOCK - e.size % _BLOCK))
        self.count += 1

    def close(self) -> None:
        """The end-of-archive marker (two zero blocks); later calls do nothing."""
        if not self._closed:
            self._closed = True
            self._out.write(b"\0" * (2 * _BLOCK))

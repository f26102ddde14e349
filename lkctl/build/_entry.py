"""The unit that flows through the builder: one filesystem entry, from a source (kernel, image, files) to a sink.

Sources yield `Entry` values lazily; sinks (the initrd writer now, tar/ISO/disk writers later) consume them in
order. A file's `data` is a reader that is only valid until the next entry is pulled from the stream, which is
what lets a multi-gigabyte layer pass through without being held in memory or extracted to disk.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol

from lkctl.errors import BuildError

__all__ = ["DEFAULT_MTIME", "Entry", "EntryKind", "Reader", "clean_path", "parent_dirs"]

# 2017-04-18T16:30:00Z: LinuxKit's `defaultModTime` for every entry the build generates itself.
DEFAULT_MTIME = 1492533000


class Reader(Protocol):
    """What a file entry's content is read through (a file, BytesIO, or a window on a tar stream)."""

    def read(self, size: int = -1, /) -> bytes: ...


class EntryKind(enum.Enum):
    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"
    CHAR = "char"
    BLOCK = "block"
    FIFO = "fifo"


@dataclass(frozen=True, slots=True)
class Entry:
    """A filesystem entry. `path` is relative to the root: no leading `/`, no trailing `/`, no `.` or `..`."""

    path: str
    kind: EntryKind
    mode: int = 0o644  # permission bits only (07777)
    uid: int = 0
    gid: int = 0
    mtime: int = DEFAULT_MTIME
    size: int = 0  # FILE only: exactly this many bytes can be read from `data`
    linkname: str = ""  # SYMLINK target, used verbatim
    devmajor: int = 0
    devminor: int = 0
    data: Reader | None = None

    def under(self, prefix: str) -> Entry:
        """This entry moved below `prefix` (a clean relative directory path)."""
        if not prefix:
            return self
        return Entry(
            f"{prefix}/{self.path}" if self.path else prefix,
            self.kind,
            self.mode,
            self.uid,
            self.gid,
            self.mtime,
            self.size,
            self.linkname,
            self.devmajor,
            self.devminor,
            self.data,
        )


def clean_path(name: str, what: str = "entry") -> str:
    """Normalise a tar-style name (`./a//b/`, `/a/b`) to `a/b`; `..` anywhere is refused (BuildError).

    A leading `/` is dropped rather than refused: tar and LinuxKit both treat member names as relative.
    """
    parts = [p for p in name.split("/") if p and p != "."]
    if ".." in parts:
        raise BuildError(f"{what} {name!r} escapes the root ('..' component)")
    if any("\0" in p for p in parts):
        raise BuildError(f"{what} {name!r} contains a NUL byte")
    return "/".join(parts)


def parent_dirs(path: str) -> list[str]:
    """Every ancestor of a clean relative path, outermost first: `a/b/c` → [`a`, `a/b`]."""
    out = []
    i = path.find("/")
    while i != -1:
        out.append(path[:i])
        i = path.find("/", i + 1)
    return out

"""A download in progress on disk (`<final>.part` + its `.part.json` sidecar) and the sha256 fed alongside it.

No HTTP here: lkctl.http streams the bytes; this is what it keeps and verifies.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lkctl.fsutil import atomic_write

__all__ = ["CHUNK", "FollowHash", "Part", "WriteBack", "hash_file", "hash_range"]

CHUNK = 1 << 20


def hash_file(path: Path, hasher: Any | None = None) -> Any:
    """sha256 of a file's bytes (or feed them into `hasher`)."""
    h = hasher if hasher is not None else hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h


@dataclass
class Part:
    """What is on disk for an unfinished download: `<final>.part` and its sidecar `<final>.part.json`."""

    path: Path
    meta_path: Path
    offset: int = 0
    hasher: Any = field(default_factory=hashlib.sha256)
    hashed: int = 0  # how many leading bytes of the .part `hasher` has seen (the rest is hashed while downloading)
    validator: str = ""
    url: str = ""

    def reset(self) -> None:
        for p in (self.path, self.meta_path):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
        self.offset, self.hasher, self.hashed, self.validator, self.url = 0, hashlib.sha256(), 0, "", ""

    def catch_up(self) -> None:
        """Hash what the hasher has not seen yet of the `.part` (when no download ran to do it alongside)."""
        if self.hashed < self.offset:
            with open(self.path, "rb") as f:
                hash_range(f, self.hashed, self.offset, self.hasher)
            self.hashed = self.offset

    def load(self, expected: str | None) -> None:
        """Adopt an existing `.part` if it belongs to the same file (same expected sha256), else drop it.

        Its bytes are not hashed here: the download's FollowHash hashes them while the rest streams in."""
        self.offset, self.hasher, self.hashed = 0, hashlib.sha256(), 0
        if not self.path.is_file():
            self.reset()
            return
        try:
            meta = json.loads(self.meta_path.read_text())
        except (OSError, ValueError):
            meta = {}
        if not isinstance(meta, dict) or meta.get("sha256") != (expected or ""):
            self.reset()
            return
        self.validator, self.url = str(meta.get("validator", "")), str(meta.get("url", ""))
        self.offset = self.path.stat().st_size

    def save_meta(self, url: str, validator: str, expected: str | None, total: int | None) -> None:
        self.url, self.validator = url, validator
        meta = {"url": url, "validator": validator, "sha256": expected or "", "total": total}
        atomic_write(self.meta_path, json.dumps(meta))


def hash_range(f: Any, start: int, end: int, hasher: Any) -> None:
    f.seek(start)
    left = end - start
    while left > 0 and (chunk := f.read(min(CHUNK * 4, left))):
        hasher.update(chunk)
        left -= len(chunk)


class FollowHash:
    """Hash a file in a second thread while it is being written: the bytes up to what the writer reports
    (`advance`) are read back from the page cache and fed to `hasher`, 4 MiB at a time (file reads and hashlib
    both release the GIL, so the writer keeps its core). Starting below what is already on disk (a resumed `.part`)
    hashes the kept bytes while the rest downloads. sha256 is sequential, so this is also the only order that works
    without holding the new bytes in memory until the kept ones are hashed."""

    def __init__(self, path: Path, hasher: Any, start: int, written: int) -> None:
        self.hasher = hasher
        self.pos = start
        self._limit = written
        self._done = False
        self._error: OSError | None = None
        self._cond = threading.Condition()
        self._fd = os.open(path, os.O_RDONLY)
        self._thread = threading.Thread(target=self._run, name="lkctl-sha256", daemon=True)
        self._thread.start()

    def advance(self, written: int) -> None:
        """The file now holds `written` bytes."""
        with self._cond:
            self._limit = written
            self._cond.notify()

    def _run(self) -> None:
        buf = memoryview(bytearray(_FOLLOW_READ))
        try:
            while True:
                with self._cond:
                    while self.pos >= self._limit and not self._done:
                        self._cond.wait()
                    limit = self._limit
                if self.pos >= limit:
                    return
                want = min(len(buf), limit - self.pos)
                if hasattr(os, "preadv"):  # into one reused buffer
                    n = os.preadv(self._fd, [buf[:want]], self.pos)
                    data: bytes | memoryview = buf[:n]
                else:  # macOS
                    data = os.pread(self._fd, want, self.pos)
                    n = len(data)
                if n <= 0:
                    raise OSError(f"the file ended at {self.pos} bytes, {limit} were written")
                self.hasher.update(data)
                self.pos += n
        except OSError as e:
            self._error = e

    def finish(self, written: int) -> int:
        """Hash up to `written`, stop, and return how many leading bytes the hasher has seen."""
        with self._cond:
            self._limit, self._done = written, True
            self._cond.notify()
        self._thread.join()
        os.close(self._fd)
        if self._error is not None:
            raise self._error
        return self.pos


_FOLLOW_READ = 4 << 20


class WriteBack:
    """Start writing a growing file to disk while it downloads (fdatasync in a second thread every `every` bytes),
    so the fsync before the final rename has little left to do instead of the whole file."""

    def __init__(self, fd: int, every: int = 64 << 20) -> None:
        self._fd, self._every, self._next = fd, every, every
        self._wake = threading.Event()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="lkctl-writeback", daemon=True)
        self._thread.start()

    def written(self, n: int) -> None:
        if n >= self._next:
            self._next = n + self._every
            self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._stop:
                return
            with contextlib.suppress(OSError):  # the final fsync reports what matters
                os.fdatasync(self._fd)

    def stop(self) -> None:
        self._stop = True
        self._wake.set()
        self._thread.join()

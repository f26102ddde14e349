"""A download in progress on disk (`<final>.part` + its `.part.json` sidecar) and the sha256 fed alongside it.

No HTTP here: lkctl.http streams the bytes; this is what it keeps and verifies.

When a download stops short (a dropped connection, a timeout, Ctrl-C), the `.part` is made durable and the sidecar
records a checkpoint: the SHA-256 midstate of its bytes (lkctl.http._sha256), bound to the file as it is then
(device, inode, size, mtime in ns, and the sha256 of its last 64 KiB). A resume whose `.part` still matches all of
these takes the hash up from there and hashes only the bytes it downloads; any mismatch (the file was touched,
copied, replaced, or this Python's libcrypto cannot take up a midstate) falls back to hashing the kept bytes from
disk while the rest downloads (FollowHash), so the digest always describes the bytes on disk.

The `.part` is hashed through a shared mapping (`Sha256.update_file(..., mapped=True)`): only the process holding
the download's lock writes it, so it cannot shrink under the mapping. Other files (`hash_file`) are read.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lkctl.fsutil import atomic_write
from lkctl.http._sha256 import Midstate, Sha256

__all__ = ["FollowHash", "Part", "WriteBack", "hash_file"]

_TAIL = 64 << 10  # bytes before the checkpoint hashed into its binding


def hash_file(path: Path, hasher: Any | None = None) -> Any:
    """sha256 of a file's bytes (or feed them into `hasher`, a hashlib object or a Sha256). Read, not mapped: the
    file may be anyone's. OSError when it cannot be read or shrinks meanwhile."""
    h = hasher if hasher is not None else Sha256()
    with open(path, "rb") as f:
        if isinstance(h, Sha256):
            h.update_file(f.fileno(), 0, os.fstat(f.fileno()).st_size)
            h.close()
        else:
            while chunk := f.read(4 << 20):
                h.update(chunk)
    return h


@dataclass
class Part:
    """What is on disk for an unfinished download: `<final>.part` and its sidecar `<final>.part.json`."""

    path: Path
    meta_path: Path
    offset: int = 0
    hasher: Sha256 = field(default_factory=Sha256)
    hashed: int = 0  # how many leading bytes of the .part `hasher` has seen (the rest is hashed while downloading)
    validator: str = ""
    url: str = ""
    _meta: dict[str, Any] = field(default_factory=dict, repr=False)

    def reset(self) -> None:
        for p in (self.path, self.meta_path):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
        self.offset, self.hasher, self.hashed, self.validator, self.url = 0, Sha256(), 0, "", ""
        self._meta = {}

    def catch_up(self) -> None:
        """Hash what the hasher has not seen yet of the `.part` (when no download ran to do it alongside)."""
        if self.hashed < self.offset:
            with open(self.path, "rb") as f:
                self.hasher.update_file(f.fileno(), self.hashed, self.offset - self.hashed, mapped=True)
            self.hasher.close()
            self.hashed = self.offset

    def load(self, expected: str | None) -> None:
        """Adopt an existing `.part` if it belongs to the same file (same expected sha256), else drop it.

        A valid checkpoint seeds the hash; otherwise the kept bytes are not hashed here: the download's FollowHash
        hashes them while the rest streams in."""
        self.offset, self.hasher, self.hashed = 0, Sha256(), 0
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
        self._meta = meta
        self.validator, self.url = str(meta.get("validator", "")), str(meta.get("url", ""))
        self.offset = self.path.stat().st_size
        state = _checked_midstate(self.path, meta.get("checkpoint"))
        if state is not None:
            self.hasher, self.hashed = Sha256(state), state.length

    def save_meta(self, url: str, validator: str, expected: str | None, total: int | None) -> None:
        self.url, self.validator = url, validator
        self._meta = {"url": url, "validator": validator, "sha256": expected or "", "total": total}
        atomic_write(self.meta_path, json.dumps(self._meta))

    def checkpoint(self) -> bool:
        """After a download stopped short: make the `.part` durable and record the hash's midstate for a resume.

        Returns False (nothing recorded, a resume will hash from disk) when the hash cannot be exported, has not
        seen the whole `.part`, or the file cannot be synced."""
        state = self.hasher.midstate()
        if state is None or not self._meta or self.hashed != self.offset:
            return False
        try:
            with open(self.path, "rb") as f:
                os.fdatasync(f.fileno())  # the midstate may only describe bytes a power cut cannot take back
                st = os.fstat(f.fileno())
                if st.st_size != self.offset:
                    return False
                tail = _tail_sha256(f.fileno(), state.length, st.st_size)
            self._meta["checkpoint"] = {
                "length": state.length, "state": state.to_hex(), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                "ino": st.st_ino, "dev": st.st_dev, "tail": tail,
            }  # fmt: skip
            atomic_write(self.meta_path, json.dumps(self._meta))
        except OSError:
            return False
        return True


def _tail_sha256(fd: int, length: int, size: int) -> str:
    h = Sha256()
    start = max(0, length - _TAIL)
    h.update_file(fd, start, size - start, mapped=True)
    h.close()
    return h.hexdigest()


def _checked_midstate(path: Path, cp: object) -> Midstate | None:
    """The checkpoint's midstate if it still describes `path` exactly (see the module docstring), else None."""
    if not isinstance(cp, dict) or not Sha256.can_resume():
        return None
    try:
        state = Midstate.from_hex(str(cp["state"]), int(cp["length"]))
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            same = (st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev) == (
                int(cp["size"]), int(cp["mtime_ns"]), int(cp["ino"]), int(cp["dev"])
            )  # fmt: skip
            if not same or state.length > st.st_size:
                return None
            if _tail_sha256(f.fileno(), state.length, st.st_size) != cp["tail"]:
                return None
    except (KeyError, TypeError, ValueError, OSError):
        return None
    return state


class FollowHash:
    """Hash a file in a second thread while it is being written: the bytes up to what the writer reports
    (`advance`) are hashed from the page cache (Sha256.update_file; the hash releases the GIL, so the writer keeps
    its core). Starting below what is already on disk (a resumed `.part` without a usable checkpoint) hashes the
    kept bytes while the rest downloads. sha256 is sequential, so this is also the only order that works without
    holding the new bytes in memory until the kept ones are hashed."""

    def __init__(self, path: Path, hasher: Sha256, start: int, written: int) -> None:
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
        try:
            while True:
                with self._cond:
                    while self.pos >= self._limit and not self._done:
                        self._cond.wait()
                    limit = self._limit
                if self.pos >= limit:
                    return
                want = min(_FOLLOW_STEP, limit - self.pos)
                self.hasher.update_file(self._fd, self.pos, want, mapped=True)
                self.pos += want
        except OSError as e:
            self._error = OSError(f"the file ended at {self.pos} bytes, {self._limit} were written ({e})")
        finally:
            self.hasher.close()

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


_FOLLOW_STEP = 8 << 20


class WriteBack:
    """Write a growing file to disk while it downloads (fdatasync in a second thread every `every` bytes), so the
    fsync before the final rename has little left to do instead of the whole file.

    `sync_file_range(SYNC_FILE_RANGE_WRITE)` every 4-64 MiB was tried instead and measured slower here (ext4 on
    virtio: 512 MiB in 2.7 s against 2.0 s, the final fsync then waiting 0.3-0.7 s instead of ~0.1 s)."""

    def __init__(self, fd: int, every: int = 32 << 20) -> None:
        self._fd, self._every, self._next = fd, every, every
        self._wake = threading.Event()
        self._stop = self._flush = False
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
            if self._stop and not self._flush:
                return
            with contextlib.suppress(OSError):  # the final fsync reports what matters
                os.fdatasync(self._fd)
            if self._stop:
                return

    def stop(self, *, flush: bool = False) -> None:
        """Ask the thread to end (after one last fdatasync with `flush`: it then overlaps whatever the caller does
        next, e.g. waiting for the hash); `join` waits for it."""
        self._flush = flush
        self._stop = True
        self._wake.set()

    def join(self) -> None:
        self._thread.join()

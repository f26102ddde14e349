"""A download in progress on disk (`<final>.part` + its `.part.json` sidecar) and the sha256 fed alongside it.

No HTTP here: lkctl.http streams the bytes; this is what it keeps and verifies.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import queue
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lkctl.fsutil import atomic_write

__all__ = ["CHUNK", "BackgroundHash", "Part", "hash_file", "hash_range"]

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

        Its bytes are hashed here, before the rest is asked for. Hashing them in the hash thread while the rest
        streams in measured slower (bench/fetch.py: the two threads hand the GIL back and forth per chunk)."""
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
        self.catch_up()

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


class BackgroundHash:
    """Feed a hash from a second thread (hashlib releases the GIL): reading, writing and hashing overlap, which
    makes a verified download faster than hashing inline. Chunks go over in ~1 MiB batches; the queue is bounded."""

    def __init__(self, hasher: Any) -> None:
        self.hasher = hasher
        self._queue: queue.Queue[list[bytes] | None] = queue.Queue(maxsize=64)
        self._batch: list[bytes] = []
        self._size = 0
        self._thread = threading.Thread(target=self._run, name="lkctl-sha256", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (batch := self._queue.get()) is not None:
            for data in batch:
                self.hasher.update(data)

    def update(self, chunk: bytes) -> None:
        self._batch.append(chunk)
        self._size += len(chunk)
        if self._size >= CHUNK:
            self._queue.put(self._batch)
            self._batch, self._size = [], 0

    def finish(self) -> None:
        if self._batch:
            self._queue.put(self._batch)
            self._batch, self._size = [], 0
        self._queue.put(None)
        self._thread.join()

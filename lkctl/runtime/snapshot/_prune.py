"""The snapshot store's size and its pruning (`image.prune`, `image.rm`, `lkctl doctor`). See lkctl.runtime.snapshot."""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from lkctl.fsutil import try_lock
from lkctl.paths import cache_dir
from lkctl.runtime.snapshot._store import is_stale, snapshot_files, snapshots_dir, version_memo

__all__ = ["PrunedSnapshots", "SnapshotUsage", "prune_snapshots", "snapshot_usage"]


@dataclass(frozen=True)
class SnapshotUsage:
    """How many snapshots the store holds and their size in bytes (state files and their .json)."""

    directory: Path
    count: int
    size: int


@dataclass(frozen=True)
class PrunedSnapshots:
    """What `prune_snapshots` removed (snapshot digests), the bytes that freed, and what is left."""

    removed: tuple[str, ...]
    freed: int
    left: SnapshotUsage


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def snapshot_usage() -> SnapshotUsage:
    """The snapshot store's size, reading only its listing (creates nothing)."""
    directory = cache_dir() / "snapshots"
    count = size = 0
    with contextlib.suppress(OSError):
        for entry in os.scandir(directory):
            if entry.name.endswith((".vmstate", ".json")) and entry.is_file(follow_symlinks=False):
                count += entry.name.endswith(".vmstate")
                size += entry.stat(follow_symlinks=False).st_size
    return SnapshotUsage(directory, count, size)


def prune_snapshots() -> PrunedSnapshots:
    """Remove the snapshots that can never be restored again (their image's kernel or initrd, or their QEMU, changed
    or is gone; an older snapshot format; a state file without its .json or of the wrong size), what killed
    template boots left, locks and QEMU version notes nothing uses. A snapshot being taken (its lock held) is
    left alone."""
    from lkctl.leftovers import reclaim

    directory = cache_dir() / "snapshots"
    if not directory.is_dir():
        return PrunedSnapshots((), 0, snapshot_usage())
    snapshots_dir()  # 0700 again, if someone loosened it
    freed = sum(_size(p) for p in reclaim(directory, "take-") if p.is_file())  # dirs: already gone
    removed: list[str] = []
    memos: set[Path] = set()
    digests = {p.name.split(".", 1)[0] for p in directory.iterdir() if p.suffix in (".vmstate", ".json", ".lock")}
    for digest in sorted(digests):
        state, meta = snapshot_files(digest)
        lock = directory / f"{digest}.lock"
        with try_lock(lock, missing_is_free=True) as free:
            if not free:
                continue
            try:
                info = json.loads(meta.read_text())
            except (OSError, ValueError):
                info = None
            whole = isinstance(info, dict) and info.get("size") == _size(state) and state.exists()
            if whole and not is_stale(info):
                assert isinstance(info, dict)
                qemu = info["inputs"]["qemu"]
                memos.add(version_memo(qemu["path"], qemu["identity"]))
                continue
            if state.exists() or meta.exists():
                freed += _size(state) + _size(meta)
                removed.append(digest)
            for p in (state, meta, lock):
                p.unlink(missing_ok=True)
    for memo in directory.glob("qemu-*.version"):
        if memo not in memos:
            memo.unlink(missing_ok=True)
    return PrunedSnapshots(tuple(removed), freed, snapshot_usage())

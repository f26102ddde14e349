"""Compressed initrd fragments kept per image and place, so layers are decompressed and recompressed only once.

Most of a build is the same from one build to the next: the kernel's modules, the init image, each container's
root filesystem. Each `ImageRun` of the entry stream (one image at one place in the tree) is compressed on its
own into raw deflate blocks ending on a sync flush, which splice into any gzip stream (`GzipStream.splice`),
and kept here by the run's key. A later build that puts the same image at the same place copies those bytes
instead of reading the layers: only the first build of an image pays for gunzip, tar parsing and deflate.
LinuxKit re-reads every layer on every build (linuxkit/linuxkit#3850).

Each fragment is a directory `<key>/` holding `data` (the deflate bytes), `meta.json` (CRC, length, last 32 KiB
for the next block's dictionary, the directories the run leaves, an init image's apk database) and for the kernel
run its `kernel` and `ucode`. Directories are renamed into place complete; the least recently used are pruned
when the cache outgrows its limit (`LKCTL_BUILD_FRAGMENT_LIMIT`, bytes; default 2 GiB).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from lkctl.build.initrd import GzipState
from lkctl.leftovers import owned_tempdir, reclaim

__all__ = ["Fragment", "FragmentCache", "FragmentDraft"]

_VERSION = 1
_DRAFT = ".draft-"  # temp dirs of fragments being written (owner-tagged, see lkctl.leftovers)
_DEFAULT_LIMIT = 2 << 30


@dataclass(frozen=True)
class Fragment:
    dir: Path
    state: GzipState
    added: frozenset[str]
    removed: frozenset[str]
    apk: bytes | None
    side: frozenset[str]  # side files kept with it ("kernel", "ucode")

    @property
    def data(self) -> Path:
        return self.dir / "data"


@dataclass
class FragmentDraft:
    """A fragment being written: `data` takes the deflate bytes, `side(name)` the side files."""

    dir: Path
    data: IO[bytes]
    meta: dict[str, Any] = field(default_factory=dict)

    def side(self, name: str) -> IO[bytes]:
        self.meta.setdefault("side", []).append(name)
        return open(self.dir / name, "wb")


class FragmentCache:
    """Fragments under `root`; with root=None nothing is kept (drafts live in a temp dir until used)."""

    def __init__(self, root: Path | None, *, limit: int | None = None) -> None:
        self.root = Path(root) if root is not None else None
        env = os.environ.get("LKCTL_BUILD_FRAGMENT_LIMIT", "")
        self.limit = limit if limit is not None else int(env) if env.isdigit() else _DEFAULT_LIMIT

    def get(self, key: str) -> Fragment | None:
        if self.root is None:
            return None
        d = self.root / key
        try:
            meta = json.loads((d / "meta.json").read_text())
            if meta.get("version") != _VERSION or not (d / "data").is_file():
                return None
            os.utime(d / "meta.json")  # recently used: pruned last
            state = GzipState(int(meta["crc"]), int(meta["usize"]), base64.b64decode(meta["tail"]))
            apk = base64.b64decode(meta["apk"]) if meta.get("apk") is not None else None
            side = frozenset(meta.get("side") or [])
            if any(not (d / s).is_file() for s in side):
                return None
            return Fragment(d, state, frozenset(meta["added"]), frozenset(meta["removed"]), apk, side)
        except (OSError, ValueError, KeyError, TypeError):
            return None

    @contextlib.contextmanager
    def draft(self, key: str) -> Iterator[FragmentDraft]:
        """A temp directory to write a fragment into; kept (renamed to `key`) if the block ends normally and
        `finish` was called on it. Use its bytes inside the block: afterwards they may be gone (a cache that
        cannot be written, or another build that kept the same fragment first)."""
        tmp: Path | None = None
        if self.root is not None:
            with contextlib.suppress(OSError):  # a read-only store: build without keeping the fragment
                self.root.mkdir(parents=True, exist_ok=True)
                tmp = owned_tempdir(self.root, _DRAFT)  # named after us: reclaimed by `prune` if we are killed
        keep = tmp is not None
        tmp = tmp or Path(tempfile.mkdtemp(prefix="lkctl-fragment-"))
        try:
            with open(tmp / "data", "w+b", buffering=1 << 20) as data:
                draft = FragmentDraft(tmp, data)
                yield draft
            if keep and self.root is not None and draft.meta.get("version") == _VERSION:
                (tmp / "meta.json").write_text(json.dumps(draft.meta))
                with contextlib.suppress(OSError):  # another build kept the same fragment first: theirs stays
                    os.rename(tmp, self.root / key)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    @staticmethod
    def finish(draft: FragmentDraft, state: GzipState, added: set[str], removed: set[str], apk: bytes | None) -> None:
        draft.meta.update(
            version=_VERSION,
            crc=state.crc,
            usize=state.size,
            tail=base64.b64encode(state.tail).decode(),
            added=sorted(added),
            removed=sorted(removed),
            apk=base64.b64encode(apk).decode() if apk is not None else None,
        )

    def prune(self) -> None:
        """Drop drafts of killed builds, and the least recently used fragments while the cache is over its limit."""
        if self.root is None or not self.root.is_dir():
            return
        reclaim(self.root, _DRAFT)
        try:
            entries = []
            for d in self.root.iterdir():
                if d.name.startswith("."):
                    continue
                size = sum(f.stat().st_size for f in d.iterdir())
                entries.append(((d / "meta.json").stat().st_mtime if (d / "meta.json").exists() else 0, size, d))
        except OSError:
            return
        total = sum(size for _, size, _ in entries)
        for _, size, d in sorted(entries):
            if total <= self.limit:
                break
            shutil.rmtree(d, ignore_errors=True)
            total -= size

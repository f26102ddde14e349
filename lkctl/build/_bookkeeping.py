"""A build's bookkeeping (lock, stamp, parts) lives in lkctl's cache, never in the user's output directory.

`cache/build-state/<hash of the output dir>/` holds `NAME.lock`, `NAME.json` (what the outputs were built from)
and `NAME.parts/` (kernel, initrd and rootfs parts reused by the next build), plus `out-dir` naming the output
directory, for `image.prune`. Only the staging dir that makes publication atomic sits in the output directory
(`os.replace` needs one file system); it is removed when the build ends, and a build killed with SIGKILL leaves
one that the next build of that name (holding the lock, so no build owns it) or `image.prune` removes.
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from lkctl import paths
from lkctl.errors import BuildError
from lkctl.fsutil import atomic_write, private_dir, try_lock, unmakeable_dir

__all__ = ["BuildPaths", "build_paths", "created_output_dir", "prune_builds", "reclaim_leftovers"]


@dataclass(frozen=True)
class BuildPaths:
    """Where a build of `name` into `out_dir` keeps its lock, stamp, parts and staging."""

    out_dir: Path
    name: str
    state: Path

    @property
    def lock(self) -> Path:
        return self.state / f"{self.name}.lock"

    @property
    def stamp(self) -> Path:
        return self.state / f"{self.name}.json"

    @property
    def parts(self) -> Path:
        return self.state / f"{self.name}.parts"

    @property
    def staging_prefix(self) -> str:
        return f".{self.name}.lkctl-tmp."


def _state_root() -> Path:
    return paths.cache_dir() / "build-state"


def build_paths(out_dir: Path, name: str) -> BuildPaths:
    resolved = Path(out_dir).resolve()
    key = hashlib.sha256(str(resolved).encode()).hexdigest()[:16]
    return BuildPaths(resolved, name, _state_root() / key)


def open_state(bp: BuildPaths) -> None:
    """Make the bookkeeping dir (0700) and record which output dir it serves."""
    private_dir(bp.state)
    marker = bp.state / "out-dir"
    with contextlib.suppress(OSError):
        if marker.read_text() == str(bp.out_dir):
            return
    atomic_write(marker, str(bp.out_dir), mode=0o600)


def reclaim_leftovers(bp: BuildPaths) -> None:
    """Remove what a killed build of this name left: staging in the output dir, temp parts. Call it holding the
    build lock (then no live build owns them)."""
    with contextlib.suppress(OSError):
        for entry in bp.out_dir.iterdir():
            if entry.name.startswith(bp.staging_prefix) and entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
    with contextlib.suppress(OSError):
        for entry in bp.parts.iterdir():
            if entry.name.startswith(".") and entry.name.endswith(".tmp"):
                entry.unlink(missing_ok=True)


@contextlib.contextmanager
def created_output_dir(out_dir: Path) -> Iterator[None]:
    """Create `out_dir` (and missing parents); if the block fails, remove the ones it created that are empty, so
    a failed build leaves nothing behind."""
    missing = []
    d = Path(out_dir).absolute()
    while not d.exists() and not d.is_symlink():
        missing.append(d)
        d = d.parent
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        _remove_dirs(missing)
        why = unmakeable_dir(out_dir) or e.strerror or str(e)
        raise BuildError(f"cannot make the output directory {out_dir}: {why} (choose another with --out)") from None
    try:
        yield
    except BaseException:
        _remove_dirs(missing)
        raise


def _remove_dirs(made: Sequence[Path]) -> None:
    for d in made:  # deepest first; only the empty ones go
        with contextlib.suppress(OSError):
            d.rmdir()


def _used_by_vms(directory: Path, argvs: Sequence[Sequence[str]]) -> bool:
    prefix = str(directory) + "/"
    return any(prefix in arg for argv in argvs for arg in argv)


def prune_builds(*, vm_argvs: Sequence[Sequence[str]]) -> list[Path]:
    """`image.prune`: drop leftovers of killed builds, the bookkeeping of output dirs that are gone, and the build
    outputs and template renders in lkctl's cache that no VM boots from (`vm_argvs`: the recorded QEMU command
    lines). A build that is running holds its lock and is skipped. Returns what was removed."""
    removed: list[Path] = []
    root = _state_root()
    builds = paths.cache_dir() / "builds"
    candidates: list[Path] = []
    if builds.is_dir():
        for d in sorted(builds.iterdir()):
            if d.name.startswith("template-") and d.is_dir():
                candidates += sorted(r for r in d.iterdir() if r.is_dir())
            elif d.is_dir():
                candidates.append(d)
    unused = {
        c.resolve() for c in candidates if not _used_by_vms(c, vm_argvs) and not _used_by_vms(c.resolve(), vm_argvs)
    }
    for state in sorted(root.iterdir()) if root.is_dir() else []:
        try:
            out_dir = Path((state / "out-dir").read_text())
        except OSError:
            continue
        drop_all = not out_dir.is_dir() or out_dir in unused
        for lock in sorted(state.glob("*.lock")):
            with try_lock(lock) as held:
                if not held:
                    drop_all = False  # a build is writing there now
                    continue
                bp = BuildPaths(out_dir, lock.name.removesuffix(".lock"), state)
                reclaim_leftovers(bp)
                if drop_all:
                    bp.stamp.unlink(missing_ok=True)  # first, so no one trusts outputs that are going
                    shutil.rmtree(bp.parts, ignore_errors=True)
        if drop_all:
            if out_dir in unused:
                shutil.rmtree(out_dir, ignore_errors=True)
                removed.append(out_dir)
            shutil.rmtree(state, ignore_errors=True)
    for c in sorted(unused):  # outputs without bookkeeping (built by an older lkctl)
        if c.is_dir() and not any(True for _ in _states_for(c)):
            shutil.rmtree(c, ignore_errors=True)
            removed.append(c)
    for d in sorted(builds.glob("template-*")) if builds.is_dir() else []:
        with contextlib.suppress(OSError):
            d.rmdir()  # a template's renders are all gone
    shutil.rmtree(root / "receipts", ignore_errors=True)  # shortcuts only: the next build of each writes its own
    from lkctl.build._fragments import FragmentCache

    FragmentCache(paths.oci_store_dir() / ".lkctl" / "initrd-fragments").prune()  # drafts of killed builds
    return removed


def _states_for(out_dir: Path) -> Iterator[Path]:
    key = hashlib.sha256(str(out_dir).encode()).hexdigest()[:16]
    if (_state_root() / key).is_dir():
        yield _state_root() / key

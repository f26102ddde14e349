"""Unpacking a tar stream a guest sent (`vm.cp VM:SRC DEST`) so that nothing lands outside the destination.

The guest is untrusted: its `tar` may send `../x`, `/etc/x`, `f/../../x`, symlinks that leave the copy (directly
or through other links of the stream), hardlinks to host files, or a symlink followed by a file written through
it. So the stream is unpacked into a private temp dir beside the destination, and nothing is moved into place
until every entry has passed:

- names are plain relative paths under the one root the copy asked for (no `..`, nothing absolute);
- no entry lies under a symlink or a file of the stream, and no name comes twice;
- a hardlink names a regular file earlier in the stream (so never a host file);
- a symlink resolves inside the copy, following the stream's other links; links are made last, once all are known;
- only files, directories and links: devices and fifos are refused; setuid/setgid/sticky bits are dropped.

Then the copy is renamed (or, into an existing directory, merged) into place with `docker cp`'s rules. A refused
stream leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from lkctl.errors import ConfigError, StreamRefused

__all__ = ["CopyPlan", "StreamRefused", "plan_copy", "receive_tar"]

_MAX_LINK_HOPS = 40  # like the kernel's MAXSYMLINKS
_CHUNK = 1 << 20

Rel = tuple[str, ...]


@dataclass(frozen=True)
class CopyPlan:
    """Where a copy from the guest goes, decided from the host side before the stream arrives.

    `home` is the existing directory that will hold the result (the temp dir is made there, so the final rename
    never crosses a file system); `final` is the path the copied root gets; `merge` says `final` is an existing
    directory whose contents are merged with the copy's (only a directory root may be merged).
    """

    final: Path
    home: Path
    merge: bool
    must_be_dir: bool  # DEST/ that does not exist: only a directory may be copied there (docker's rule)
    shown: str  # the destination as the user typed it, for messages


def plan_copy(dest: str | os.PathLike[str], name: str, *, contents: bool) -> CopyPlan:
    """docker cp's rules for the host side: into an existing directory the copy keeps its name (`contents`: its
    contents are merged there); otherwise it becomes DEST, whose parent must exist."""
    shown = os.fspath(dest)
    path = Path(shown)
    if path.is_dir():
        if contents:
            return CopyPlan(path, path, merge=True, must_be_dir=True, shown=shown)
        final = path / name
        return CopyPlan(final, path, merge=final.is_dir() and not final.is_symlink(), must_be_dir=False, shown=shown)
    parent = path.parent
    if not parent.is_dir():
        raise ConfigError(f"cannot copy to {shown}: its parent directory {parent} does not exist; create it first")
    if path.exists() or path.is_symlink():
        if contents:
            raise ConfigError(f"cannot copy a directory's contents to {shown}: it exists and is not a directory")
        return CopyPlan(path, parent, merge=False, must_be_dir=False, shown=shown)
    return CopyPlan(path, parent, merge=False, must_be_dir=shown.endswith("/") or contents, shown=shown)


@dataclass
class _Unpacked:
    top: Path  # the copied root inside the temp dir
    kinds: dict[Rel, str] = field(default_factory=dict)  # "dir" | "file" | "link", by path relative to the root
    links: dict[Rel, str] = field(default_factory=dict)
    dir_modes: dict[Rel, tuple[int, float]] = field(default_factory=dict)

    def path(self, rel: Rel) -> Path:
        return self.top.joinpath(*rel) if rel else self.top


def receive_tar(stream: IO[bytes], plan: CopyPlan, *, name: str | None, origin: str) -> Path:
    """Unpack `stream` (a tar whose root is `./NAME`, or `.` for a directory's contents when `name` is None) to
    `plan` after checking every entry; returns where the copy landed. `origin` names the source in messages."""
    work = Path(tempfile.mkdtemp(prefix=".lkctl-cp.", dir=plan.home))
    try:
        unpacked = _Unpacked(work / "root")
        try:
            with tarfile.open(fileobj=stream, mode="r|") as tar:
                for member in tar:
                    _extract(tar, member, unpacked, name, origin)
        except tarfile.TarError as e:
            if not unpacked.kinds:
                raise StreamRefused(f"the guest sent no copy of {origin}") from None
            raise StreamRefused(f"the guest's copy of {origin} is not a readable tar stream ({e})") from None
        if not unpacked.kinds:
            raise StreamRefused(f"the guest sent no copy of {origin}")
        _make_links(unpacked, origin)
        _apply_dir_modes(unpacked)
        return _place(unpacked, plan, origin)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _split(name: str, origin: str) -> list[str]:
    if "\0" in name or name.startswith("/"):
        raise StreamRefused(f"refusing the copy of {origin}: the guest sent an absolute path {name!r}")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise StreamRefused(f"refusing the copy of {origin}: the guest sent {name!r}, which leaves the destination")
    return parts


def _relative(name: str, root: str | None, origin: str) -> Rel:
    parts = _split(name, origin)
    if root is not None:
        if not parts or parts[0] != root:
            raise StreamRefused(f"refusing the copy of {origin}: the guest sent {name!r}, which is not under {root}")
        parts = parts[1:]
    return tuple(parts)


def _extract(tar: tarfile.TarFile, m: tarfile.TarInfo, u: _Unpacked, root: str | None, origin: str) -> None:
    rel = _relative(m.name, root, origin)
    if not u.kinds and rel:
        raise StreamRefused(f"refusing the copy of {origin}: the guest's stream does not start with its root")
    if rel in u.kinds:
        raise StreamRefused(f"refusing the copy of {origin}: the guest sent {m.name!r} twice")
    for i in range(len(rel)):
        kind = u.kinds.get(rel[:i])
        if kind == "link":
            raise StreamRefused(f"refusing the copy of {origin}: {m.name!r} would be written through a symlink")
        if kind is None:
            raise StreamRefused(f"refusing the copy of {origin}: {m.name!r} comes before its directory")
        if kind != "dir":
            raise StreamRefused(f"refusing the copy of {origin}: {m.name!r} is under a file")
    if root is None and rel == () and not m.isdir():
        raise StreamRefused(f"refusing the copy of {origin}: the guest sent a file where a directory was asked for")
    out = u.path(rel)
    mode = m.mode & 0o777  # never setuid/setgid/sticky from a guest
    if m.isdir():
        out.mkdir(mode=0o700)
        u.kinds[rel] = "dir"
        u.dir_modes[rel] = (mode, float(m.mtime))
    elif m.isreg():
        src = tar.extractfile(m)
        assert src is not None
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as f, src:
            while chunk := src.read(_CHUNK):
                f.write(chunk)
            os.fchmod(f.fileno(), mode)
            os.utime(f.fileno(), (m.mtime, m.mtime))
        u.kinds[rel] = "file"
    elif m.issym():
        if not m.linkname or "\0" in m.linkname:
            raise StreamRefused(f"refusing the copy of {origin}: {m.name!r} is a symlink with no target")
        u.kinds[rel] = "link"
        u.links[rel] = m.linkname
    elif m.islnk():
        target = _relative(m.linkname, root, origin)
        if u.kinds.get(target) != "file":
            raise StreamRefused(
                f"refusing the copy of {origin}: {m.name!r} is a hardlink to {m.linkname!r}, "
                "which is not a file earlier in the copy"
            )
        os.link(u.path(target), out, follow_symlinks=False)
        u.kinds[rel] = "file"
    else:
        raise StreamRefused(
            f"refusing the copy of {origin}: {m.name!r} is a device or fifo; vm.cp copies files, directories and links"
        )


def _escapes(at: Rel, target: str, links: dict[Rel, str]) -> bool:
    """Whether the symlink at `at` pointing to `target` resolves outside the copy (through the copy's links)."""
    if target.startswith("/"):
        return True
    stack = list(at[:-1])
    todo = [p for p in target.split("/") if p not in ("", ".")]
    hops = 0
    while todo:
        part = todo.pop(0)
        if part == "..":
            if not stack:
                return True
            stack.pop()
            continue
        stack.append(part)
        nxt = links.get(tuple(stack))
        if nxt is not None:
            hops += 1
            if hops > _MAX_LINK_HOPS or nxt.startswith("/"):
                return True
            stack.pop()
            todo = [p for p in nxt.split("/") if p not in ("", ".")] + todo
    return False


def _make_links(u: _Unpacked, origin: str) -> None:
    for rel, target in u.links.items():
        shown = "/".join(rel) or "its root"
        if rel == ():  # a copied symlink: it lands beside the destination, so it may only name a sibling
            if target.startswith("/") or ".." in target.split("/"):
                raise StreamRefused(f"refusing the copy of {origin}: it is a symlink to {target!r}, outside the copy")
        elif _escapes(rel, target, u.links):
            raise StreamRefused(f"refusing the copy of {origin}: the symlink {shown} -> {target} leaves the copy")
    for rel, target in u.links.items():
        os.symlink(target, u.path(rel))


def _apply_dir_modes(u: _Unpacked) -> None:
    """The guest's directory modes, but always owner rwx: the copy is the user's to move, change and remove."""
    for rel, (mode, mtime) in sorted(u.dir_modes.items(), key=lambda kv: -len(kv[0])):
        path = u.path(rel)
        os.chmod(path, mode | 0o700)
        os.utime(path, (mtime, mtime))


def _place(u: _Unpacked, plan: CopyPlan, origin: str) -> Path:
    is_dir = u.kinds[()] == "dir"
    if plan.merge:
        if not is_dir:
            raise ConfigError(f"cannot copy the file {origin} over the directory {plan.final}")
        conflicts = list(_merge_conflicts(u.top, plan.final))
        if conflicts:
            raise ConfigError(f"cannot copy {origin} into {plan.shown}: {conflicts[0]}")
        _merge(u.top, plan.final)
        return plan.final
    if plan.must_be_dir and not is_dir:
        raise ConfigError(f"cannot copy the file {origin} to {plan.shown}: that directory does not exist")
    existing = _lstat(plan.final)
    if existing is not None:
        if stat.S_ISDIR(existing.st_mode):
            raise ConfigError(f"cannot copy the file {origin} over the directory {plan.final}")
        if is_dir:
            raise ConfigError(f"cannot copy the directory {origin} over the file {plan.final}")
    os.replace(u.top, plan.final)
    return plan.final


def _lstat(path: Path) -> os.stat_result | None:
    with contextlib.suppress(FileNotFoundError):
        return os.lstat(path)
    return None


def _merge_conflicts(src: Path, dst: Path) -> list[str]:
    """What would stop merging `src` into the existing directory `dst`, checked before anything moves."""
    found = []
    for entry in os.scandir(src):
        there = _lstat(dst / entry.name)
        if there is None:
            continue
        if entry.is_dir(follow_symlinks=False):
            if not stat.S_ISDIR(there.st_mode):
                found.append(f"{dst / entry.name} exists and is not a directory")
            else:
                found.extend(_merge_conflicts(Path(entry.path), dst / entry.name))
        elif stat.S_ISDIR(there.st_mode):
            found.append(f"{dst / entry.name} is a directory")
    return found


def _merge(src: Path, dst: Path) -> None:
    for entry in os.scandir(src):
        target = dst / entry.name
        there = _lstat(target)
        if entry.is_dir(follow_symlinks=False) and there is not None:
            _merge(Path(entry.path), target)  # a real directory on both sides (checked by _merge_conflicts)
        else:
            os.replace(entry.path, target)

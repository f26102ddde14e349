"""What an agent's session changed in the project's git control files, which the host's own git runs.

The dev VM writes the project, `.git` included, so a sandboxed agent can plant a hook (`.git/hooks/pre-commit`)
or a setting (`core.fsmonitor`, `core.pager`, an alias) that runs on the host the next time the user runs git
there. lkctl cannot make them read-only without breaking the agent's own commits, so `dev.claude` notes them
before the session and names every one that changed after it. Only lstat and regular files of at most 1 MiB are
read: the guest wrote them (a FIFO or a link to /dev/zero must not hang or flood the host).
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

__all__ = ["changed_control_files", "control_files"]

_MAX_FILE = 1 << 20
_MAX_ENTRIES = 10_000  # a hooks dir the guest filled with files: enough is enough
_WATCHED = ("config", "hooks", "info", "modules")  # and under modules/*: each submodule's config and hooks


def _fingerprint(path: Path) -> str:
    try:
        st = os.lstat(path)
    except OSError:
        return "missing"
    if stat.S_ISLNK(st.st_mode):
        return "symlink:" + os.readlink(path)
    if not stat.S_ISREG(st.st_mode):
        return f"type {stat.S_IFMT(st.st_mode):o}"
    if st.st_size > _MAX_FILE:
        return f"large {st.st_size} {st.st_mtime_ns}"
    try:
        with open(path, "rb") as f:
            digest = hashlib.sha256(f.read(_MAX_FILE + 1)).hexdigest()
    except OSError:
        return "unreadable"
    return f"{st.st_mode & 0o7777:o} {digest}"  # a hook made executable counts as changed


def control_files(project: Path) -> dict[str, str]:
    """`.git/config`, `.git/hooks/*`, `.git/info/*` and the same under `.git/modules/` (submodules), each with a
    fingerprint of its content and mode; {} when `.git` is no directory (a worktree's gitdir lies outside the
    share)."""
    git = project / ".git"
    if not git.is_dir() or git.is_symlink():
        return {}
    out: dict[str, str] = {}
    for top in _WATCHED:
        where = git / top
        walked = os.walk(where) if where.is_dir() and not where.is_symlink() else [(str(git), [], [top])]
        for root, dirs, files in walked:
            if top == "modules":  # a submodule's objects and refs are never run; its config and hooks are
                dirs[:] = [d for d in dirs if d not in ("objects", "refs", "logs")]
                files = [f for f in files if f == "config" or Path(root).name in ("hooks", "info")]
            for name in files:
                path = Path(root) / name
                out[str(path.relative_to(project))] = _fingerprint(path)
                if len(out) >= _MAX_ENTRIES:
                    return out
    return out


def changed_control_files(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """The control files that appeared, went or changed between two control_files() readings, sorted."""
    return sorted(p for p in before.keys() | after.keys() if before.get(p) != after.get(p))

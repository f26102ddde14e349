"""Temporary directories named after the process that owns them, so what a SIGKILLed lkctl left is reclaimed.

A name carries its owner's PID and a hash of the process's start time (`keys-p1234s5f3a09c2.XXXX`): the next
command of the same kind, `vm.prune` and `image.prune` remove entries whose owner is gone, and never one whose
owner still runs (a reused PID has another start time). Names without an owner tag (older lkctl) are left alone.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from pathlib import Path

__all__ = ["owned_tempdir", "owner_alive", "reclaim"]

_TAG = re.compile(r"p(\d+)s([0-9a-f]{10})\.")


def _start_hash(start: str) -> str:
    return hashlib.sha256(start.encode()).hexdigest()[:10]


def _tag(pid: int) -> str:
    from lkctl.runtime.host import process_identity

    ident = process_identity(pid)
    return f"p{pid}s{_start_hash(ident.start if ident else '')}."


def owned_tempdir(directory: Path, prefix: str) -> Path:
    """A new private directory `<prefix>p<pid>s<start>.XXXXXX` in `directory`, owned by this process."""
    directory.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=prefix + _tag(os.getpid()), dir=directory))


def owner_alive(name: str, prefix: str) -> bool | None:
    """Whether the process that made `name` still runs; None if `name` is not an owned name with `prefix`."""
    if not name.startswith(prefix):
        return None
    m = _TAG.match(name, len(prefix))
    if m is None:
        return None
    from lkctl.runtime.host import process_identity

    ident = process_identity(int(m.group(1)))
    return ident is not None and _start_hash(ident.start) == m.group(2)


def reclaim(directory: Path, prefix: str) -> list[Path]:
    """Remove the entries of `directory` named with `prefix` whose owner process is gone; returns them."""
    removed: list[Path] = []
    try:
        entries = list(directory.iterdir())
    except OSError:
        return removed
    for entry in entries:
        if owner_alive(entry.name, prefix) is False:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed

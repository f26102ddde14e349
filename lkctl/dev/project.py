"""Which project `dev.*` works on, and the name of its dev VM.

The project is the git repository around the working directory (or the directory itself outside a repository).
Its dev VM's name is derived from the project's absolute path, so every sub-directory finds the same VM and two
projects with the same basename still get two VMs.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

__all__ = ["GUEST_APP", "Project", "dev_vm_name", "find_project"]

GUEST_APP = "/app"  # where the project is mounted in the dev VM

_NOT_NAME = re.compile(r"[^a-z0-9_.-]+")


@dataclass(frozen=True)
class Project:
    """A project directory on the host and the name of its dev VM."""

    root: Path
    vm_name: str


def _repo_root(start: Path) -> Path | None:
    for d in [start, *start.parents]:
        if (d / ".git").exists():
            return d
    return None


def dev_vm_name(root: Path) -> str:
    """`dev-<basename>-<8 hex of the absolute path's sha256>`: stable, unique per path, valid as a VM name."""
    absolute = os.path.normpath(os.path.abspath(root))
    digest = hashlib.sha256(absolute.encode()).hexdigest()[:8]
    base = _NOT_NAME.sub("-", Path(absolute).name.lower()).strip("-.")[:24] or "root"
    return f"dev-{base}-{digest}"


def find_project(cwd: Path | None = None) -> Project:
    """The project for `cwd` (default: the working directory): its git repository root, else `cwd` itself."""
    start = Path(os.path.abspath(cwd if cwd is not None else Path.cwd()))
    root = _repo_root(start) or start
    return Project(root=root, vm_name=dev_vm_name(root))

"""Which project `dev.*` works on, and the name of its dev VM.

The project is the git repository around the working directory (or the directory itself outside a repository).
Its dev VM's name is derived from the project's absolute path, so every sub-directory finds the same VM and two
projects with the same basename still get two VMs.

The project is shared read-write with a VM whose guest is untrusted (a coding agent runs there as root), so a
directory that holds more than a project is refused before it is shared: the home directory or one above it (a
dotfiles repository in $HOME makes the home the "project"), or one holding lkctl's own state, data or
configuration (the VMs' private keys and pinned host keys, the installed images).
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from lkctl.errors import ConfigError

__all__ = ["GUEST_APP", "Project", "check_shareable", "dev_vm_name", "find_project"]

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
    # fsencode: a path's bytes as the file system has them (a name that is not UTF-8 arrives as surrogates)
    digest = hashlib.sha256(os.fsencode(absolute)).hexdigest()[:8]
    base = _NOT_NAME.sub("-", Path(absolute).name.lower()).strip("-.")[:24] or "root"
    return f"dev-{base}-{digest}"


def find_project(cwd: Path | None = None) -> Project:
    """The project for `cwd` (default: the working directory): its git repository root, else `cwd` itself.

    Symbolic links are resolved, so a project reached through a link finds the same dev VM as from its real path
    (the working directory the kernel reports is already the real one)."""
    if cwd is None:
        try:
            cwd = Path.cwd()
        except FileNotFoundError:
            raise ConfigError(
                "the working directory no longer exists (removed, or its file system unmounted): "
                "cd into the project again"
            ) from None
    start = Path(os.path.realpath(cwd))
    root = _repo_root(start) or start
    return Project(root=root, vm_name=dev_vm_name(root))


def _lkctl_dirs() -> list[tuple[str, Path]]:
    from lkctl import paths

    return [("state (VM keys, pinned host keys)", paths.state_dir()), ("data (installed images)", paths.data_dir()),
            ("configuration", paths.config_dir())]  # fmt: skip


def check_shareable(project: Project, home: Path | None = None) -> None:
    """Refuse to share a project directory that holds more than a project with its dev VM (see the module's
    docstring): one line saying what it holds and what to do instead."""
    root = Path(os.path.realpath(project.root))
    fix = "run dev.* in a project's own directory (the root of a git repository is the project)"
    home = Path(os.path.realpath(home if home is not None else Path.home()))
    if home == root or root in home.parents:
        what = "your home directory" if home == root else f"a directory above your home directory {home}"
        raise ConfigError(f"{root} is {what}: dev.boot would share all of it read-write with the VM; {fix}")
    for what, d in _lkctl_dirs():
        real = Path(os.path.realpath(d))
        if real == root or root in real.parents:
            raise ConfigError(
                f"{root} holds lkctl's {what} at {real}: dev.boot would share it read-write with the VM; {fix}"
            )

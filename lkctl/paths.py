"""Where lkctl keeps things. One function per directory, all overridable by environment.

`LKCTL_HOME` moves everything at once (tests use it); otherwise the XDG base directories apply.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_dir", "config_dir", "data_dir", "oci_store_dir", "resource_dir", "state_dir"]


def _base(xdg_var: str, fallback: str, sub: str) -> Path:
    home = os.environ.get("LKCTL_HOME")
    if home:
        return Path(home) / sub
    root = os.environ.get(xdg_var) or str(Path.home() / fallback)
    return Path(root) / "lkctl"


def cache_dir() -> Path:
    """Rebuildable data: the OCI image store, build outputs, probe results."""
    return Path(os.environ.get("LKCTL_CACHE_DIR") or _base("XDG_CACHE_HOME", ".cache", "cache"))


def state_dir() -> Path:
    """Per-VM state: pidfiles, sockets, keys, console logs."""
    return Path(os.environ.get("LKCTL_STATE_DIR") or _base("XDG_STATE_HOME", ".local/state", "state"))


def data_dir() -> Path:
    """Installed images (fetched or imported)."""
    return Path(os.environ.get("LKCTL_DATA_DIR") or _base("XDG_DATA_HOME", ".local/share", "data"))


def config_dir() -> Path:
    """User configuration and user templates."""
    return Path(os.environ.get("LKCTL_CONFIG_DIR") or _base("XDG_CONFIG_HOME", ".config", "config"))


def oci_store_dir() -> Path:
    """The local OCI image-layout store (same format as `~/.linuxkit/cache`)."""
    return Path(os.environ.get("LKCTL_OCI_STORE") or cache_dir() / "oci")


def resource_dir(name: str) -> Path:
    """A directory shipped with lkctl (`templates`, `images`): package data in a wheel, the repo in a checkout."""
    here = Path(__file__).resolve().parent
    packaged = here / "_data" / name
    if packaged.is_dir():
        return packaged
    return here.parent / name

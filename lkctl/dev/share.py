"""How the project reaches /app in its dev VM: virtiofs where this host can serve it, else 9p.

virtiofs needs virtiofsd, which runs as root here (QEMU's C virtiofsd; lkctl's runtime refuses it otherwise), and
guest RAM in a shared memfd (`qemu_argv` adds the backend). 9p (`mapped-xattr`) works for everyone. Either way
files the guest makes belong to the host user running lkctl: virtiofsd and QEMU create them as that user (root
for virtiofs, where the guest's root is mapped to it; the user itself for 9p, whose guest owners live in xattrs).
"""

from __future__ import annotations

import os

from lkctl.errors import ConfigError
from lkctl.runtime.state import VmRecord

__all__ = ["SHARES", "choose_share", "share_of"]

SHARES = ("auto", "virtiofs", "9p")


def choose_share(wanted: str) -> str:
    """`lkctl.dev.share` (auto | virtiofs | 9p) → the filesystem /app uses on this host; `virtiofs` asked for where
    it cannot work is one line saying why."""
    from lkctl.runtime.disks import find_virtiofsd

    if wanted not in SHARES:
        raise ConfigError(f"lkctl.dev.share is {wanted!r}; use one of {', '.join(SHARES)}")
    if wanted == "9p":
        return "9p"
    missing = ""
    if find_virtiofsd() is None:
        missing = "virtiofsd is not installed (Debian: apt-get install qemu-system-common)"
    elif os.geteuid() != 0:
        missing = "virtiofsd runs as root only"
    if not missing:
        return "virtiofs"
    if wanted == "virtiofs":
        raise ConfigError(f"lkctl.dev.share is virtiofs but {missing}; set it to auto or 9p")
    return "9p"


def share_of(record: VmRecord) -> str:
    """The filesystem the VM's /app is shared with, read from its QEMU command line."""
    argv = " ".join(record.argv)
    if "vhost-user-fs-pci" in argv:
        return "virtiofs"
    return "9p" if "virtio-9p" in argv else ""

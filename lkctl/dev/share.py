"""How the project reaches /app in its dev VM: virtiofs where this host can serve it safely, else 9p.

virtiofs needs virtiofsd, which runs as root here (QEMU's C virtiofsd; lkctl's runtime refuses it otherwise), and
guest RAM in a shared memfd (`qemu_argv` adds the backend). 9p (`mapped-xattr`) works for everyone. Either way
files the guest makes belong to the host user running lkctl: virtiofsd and QEMU create them as that user (root
for virtiofs, where the guest's root is mapped to it; the user itself for 9p, whose guest owners live in xattrs).

virtiofsd maps the guest's root to the host's root, modes included: a guest root can leave a setuid-root binary
or a block device node (the host's disk) in the project, and any host user who can reach the directory runs or
reads it. 9p's mapped-xattr keeps the guest's modes and device numbers in xattrs instead. So `auto` takes
virtiofs only for a project no other user can reach: one of its directories, or one above it, is root's and
closed to group and others (as /root or pytest's tmp dirs); else 9p. `virtiofs` asked for explicitly is used as
asked (README: what it lets the guest do).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from lkctl.errors import ConfigError
from lkctl.runtime.state import VmRecord

__all__ = ["SHARES", "choose_share", "only_root_reaches", "share_of"]

SHARES = ("auto", "virtiofs", "9p")


def only_root_reaches(directory: Path) -> bool:
    """Whether no host user but root can reach `directory`: it or a directory above it is owned by root and closed
    to group and others (no search bit; an ACL granting anyone more shows its mask in the group bits)."""
    d = Path(os.path.realpath(directory))
    for p in (d, *d.parents):
        try:
            st = os.stat(p)
        except OSError:
            return False
        if st.st_uid == 0 and stat.S_IMODE(st.st_mode) & 0o011 == 0:
            return True
    return False


def choose_share(wanted: str, project: Path | None = None) -> str:
    """`lkctl.dev.share` (auto | virtiofs | 9p) → the filesystem /app uses on this host; `virtiofs` asked for where
    it cannot work is one line saying why. `auto` with the `project` directory takes virtiofs only where no other
    user reaches the project (see the module's docstring); without it, wherever virtiofs works."""
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
    if not missing and (wanted == "virtiofs" or project is None or only_root_reaches(project)):
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

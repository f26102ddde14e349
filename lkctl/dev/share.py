"""How the project reaches /app in its dev VM: virtiofs where this host can serve it, else 9p.

virtiofs needs virtiofsd, which runs as root here (QEMU's C virtiofsd; lkctl's runtime refuses it otherwise), and
guest RAM in a shared memfd (`qemu_argv` adds the backend). 9p (`mapped-xattr`) works for everyone. Either way
files the guest makes belong to the host user running lkctl: virtiofsd and QEMU create them as that user (root
for virtiofs, where the guest's root is mapped to it; the user itself for 9p, whose guest owners live in xattrs).
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lkctl.dev.project import GUEST_APP
from lkctl.errors import ConfigError, VmError
from lkctl.runtime import state
from lkctl.runtime.state import VmRecord

__all__ = ["SHARES", "choose_share", "record_helpers", "share_of", "virtiofsd_for_restart"]

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


@contextmanager
def virtiofsd_for_restart(record: VmRecord, host_dir: Path) -> Iterator[list[list[str]]]:
    """Start the virtiofsd a stopped dev VM's QEMU connects to, for `restart_vm` (which starts QEMU only).

    Yields the helper entries to record once the VM runs; the daemons are stopped if the body fails.
    Local to dev.*: remove once lkctl.runtime's restart starts a VM's virtiofsd itself."""
    from lkctl import proc
    from lkctl.runtime.disks import find_virtiofsd, listen_unix, virtiofsd_argv
    from lkctl.runtime.qemu import Volume, VolumeMount

    found = re.findall(r"socket,id=vfs\d+,path=(virtiofs-(lkvol\d+)\.sock)", " ".join(record.argv))
    if not found:
        yield []
        return
    binary = find_virtiofsd()
    if binary is None or os.geteuid() != 0:
        raise VmError(f"dev VM {record.name} shares /app over virtiofs, which needs root and virtiofsd here")
    daemons: list[subprocess.Popen[bytes]] = []
    entries: list[list[str]] = []
    try:
        for sock, tag in found:
            mount = VolumeMount(Volume(host_dir, GUEST_APP), tag, "virtiofs", sock)
            with listen_unix(record.dir / sock) as listening, open(record.dir / f"virtiofsd-{tag}.log", "wb") as log:
                argv = virtiofsd_argv(binary, mount, listening.fileno())
                daemon = subprocess.Popen(
                    argv, cwd=record.dir, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                    env=proc.minimal_env(), start_new_session=True, pass_fds=(listening.fileno(),),
                )  # fmt: skip
            daemons.append(daemon)
            if (entry := state.helper_entry(daemon.pid, argv)) is not None:
                entries.append(entry)
        yield entries
    except BaseException:
        for daemon in daemons:
            if daemon.poll() is None:
                daemon.terminate()
                daemon.wait(5)
        raise


def record_helpers(record: VmRecord, entries: list[list[str]]) -> VmRecord:
    """`record` with `entries` added to its helpers and the dead ones dropped, saved."""
    if not entries:
        return record
    alive = [h for h in record.helpers if state.is_our_helper(h)]
    record = dataclasses.replace(record, helpers=[*alive, *entries])
    state.save_record(record)
    return record

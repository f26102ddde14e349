"""What a VM is told about itself at boot: its hostname and the environment `vm.run --env` gives it.

Both reach the guest as QEMU fw_cfg files (opt/lkctl/hostname, opt/lkctl/env → /run/config/*), like its keys:
lkctl's init sets the hostname, starts services with the environment after the image's own, and root's login
shell (the sshd image's lkctl-vmshell) exports it for `vm.exec` and `vm.shell`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from lkctl.errors import ConfigError
from lkctl.fsutil import atomic_write

__all__ = [
    "ENV_FILE",
    "HOSTNAME_FILE",
    "VM_HOSTNAME_FILE",
    "env_file_text",
    "guest_files",
    "guest_hostname",
    "write_guest_files",
]

HOSTNAME_FILE = "hostname"  # --hostname, in the VM's state dir; fw_cfg opt/lkctl/hostname (wins over the image's)
VM_HOSTNAME_FILE = "vm-hostname"  # the VM's name as a host name; fw_cfg opt/lkctl/vm-hostname (the image's wins)
ENV_FILE = "env"  # in the VM's state dir; fw_cfg opt/lkctl/env

_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\Z")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def guest_hostname(explicit: str, vm_name: str, vm_id: str) -> str:
    """`--hostname` if given (it must be a valid host name), else the VM's name, else `lkctl-<id>`.

    A VM name that is not a valid host name (underscores, too long) is not an error: the guest gets `lkctl-<id>`.
    """
    if explicit:
        if len(explicit) > 253 or not _HOSTNAME.match(explicit):
            raise ConfigError(
                f"--hostname {explicit!r} is not a valid host name: use letters, digits and '-' "
                "(dot-separated labels of at most 63 characters, not starting or ending with '-')"
            )
        return explicit
    if len(vm_name) <= 63 and _HOSTNAME.match(vm_name) and "." not in vm_name:
        return vm_name
    return f"lkctl-{vm_id}"


def env_file_text(env: Mapping[str, str]) -> str:
    """The guest's environment file: one `NAME=VALUE` per line. Names are shell identifiers; values one line."""
    lines = []
    for name, value in env.items():
        if not _ENV_NAME.match(name):
            raise ConfigError(f"--env {name}=...: {name!r} is not a valid variable name (letters, digits, '_')")
        if any(c in value for c in "\n\r\0"):
            raise ConfigError(f"--env {name}=...: the value may not contain newlines or NUL bytes")
        lines.append(f"{name}={value}\n")
    return "".join(lines)


def guest_files(explicit_hostname: bool, env: Mapping[str, str]) -> tuple[tuple[str, Path], ...]:
    """fw_cfg entries (name under opt/lkctl/, file in the VM's state dir) for what `write_guest_files` wrote."""
    name = HOSTNAME_FILE if explicit_hostname else VM_HOSTNAME_FILE
    return ((name, Path(name)),) + (((ENV_FILE, Path(ENV_FILE)),) if env else ())


def write_guest_files(vm_dir: Path, hostname: str, env: Mapping[str, str], *, explicit_hostname: bool) -> None:
    """The guest's host name and environment files (0600). An explicit --hostname overrides the image's own
    /etc/hostname in the guest; the default (the VM's name) applies only when the image sets none."""
    name = HOSTNAME_FILE if explicit_hostname else VM_HOSTNAME_FILE
    atomic_write(vm_dir / name, hostname + "\n", mode=0o600)
    if env:
        atomic_write(vm_dir / ENV_FILE, env_file_text(env), mode=0o600)

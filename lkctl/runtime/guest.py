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

__all__ = ["ENV_FILE", "HOSTNAME_FILE", "env_file_text", "guest_hostname", "write_guest_files"]

HOSTNAME_FILE = "hostname"  # in the VM's state dir; fw_cfg opt/lkctl/hostname
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


def write_guest_files(vm_dir: Path, hostname: str, env: Mapping[str, str]) -> None:
    """The files `qemu_argv` hands over as fw_cfg opt/lkctl/hostname and (when there is one) opt/lkctl/env (0600)."""
    atomic_write(vm_dir / HOSTNAME_FILE, hostname + "\n", mode=0o600)
    if env:
        atomic_write(vm_dir / ENV_FILE, env_file_text(env), mode=0o600)

"""`vm.start` for a stopped VM, `vm.stop` with `--rm`, several VMs per command, and `vm.ssh-config` (an OpenSSH
`Host` block)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence

from lkctl.errors import ConfigError, LkError, VmError
from lkctl.fsutil import atomic_write
from lkctl.runtime import state
from lkctl.runtime.state import VmRecord

__all__ = [
    "SSH_KNOWN_HOSTS",
    "find_vms",
    "for_each_vm",
    "split_vm_names",
    "ssh_config",
    "start_vm",
    "stop_and_forget",
]

SSH_KNOWN_HOSTS = "ssh_known_hosts"  # the host key pinned under the VM's HostKeyAlias, for OpenSSH
_HOST_PATTERN = re.compile(r"[A-Za-z0-9._-]+\Z")


def split_vm_names(words: Iterable[str]) -> list[str]:
    """VM names from positional words, each of which may be comma-separated (`a,b c` → a, b, c); order kept,
    duplicates dropped."""
    out: list[str] = []
    for word in words:
        for name in word.split(","):
            name = name.strip()
            if name and name not in out:
                out.append(name)
    return out


def find_vms(names: Iterable[str], *, unknown: bool = False) -> list[VmRecord]:
    """Every named VM, or one VmNotFound naming the first that matches none (so nothing is half-done).
    `unknown`: records that cannot be read match too (by ID), for vm.rm --force and vm.inspect."""
    wanted = split_vm_names(names)
    if not wanted:
        raise ConfigError("no VM given: name one or more VMs by ID, name or unique ID prefix (see vm.ps --all)")
    records: list[VmRecord] = []
    for name in wanted:
        r = state.find_vm(name, unknown=unknown)
        if all(r.id != seen.id for seen in records):
            records.append(r)
    return records


def for_each_vm(records: Sequence[VmRecord], action: Callable[[VmRecord], None], *, say: Callable[[str], None]) -> None:
    """Act on every VM; one failure does not stop the others. With several VMs each failure is said as it happens
    and the first is raised at the end, counted (`2 of 3 VMs failed: ...`); a single VM's error is raised as is."""
    failures: list[LkError] = []
    for record in records:
        try:
            action(record)
        except LkError as e:
            if len(records) > 1:
                say(e.message)
            failures.append(e)
    if failures:
        first = failures[0]
        raise type(first)(
            first.message if len(records) == 1 else f"{len(failures)} of {len(records)} VMs failed: {first.message}",
            exit_code=first.exit_code,
        )


def stop_and_forget(record: VmRecord, *, timeout: float) -> tuple[str, bool]:
    """`vm.stop`: stop the VM (how it ended), and remove it when it was started with `--rm` (True then)."""
    from lkctl.runtime.lifecycle import remove_vm
    from lkctl.runtime.vm import stop_vm

    how = stop_vm(record, timeout=timeout)
    if record.libvirt and record.auto_remove:  # its domain and volumes go too
        remove_vm(record)
        return how, True
    return how, state.forget_ended(record)


def start_vm(record: VmRecord, *, ready_timeout: float | None = None) -> VmRecord:
    """Boot a stopped VM again, as `vm.restart` does: same name, keys, ports, volumes, disks and environment.
    `ready_timeout` None: settings' `vm.ready_timeout`."""
    from lkctl.runtime.lifecycle import restart_vm

    status = state.vm_status(record)
    if status == "running":
        raise ConfigError(f"VM {record.name} is already running")
    if status == "created" and state.being_created(record):
        raise ConfigError(f"VM {record.name} is being started by lkctl process {record.creator[0]}; wait for it")
    if status == "created" and not record.argv:  # with an argv, a start that was killed before QEMU ran
        raise VmError(f"VM {record.name} never started (it has no QEMU command line); remove it and run a new VM")
    return restart_vm(record, ready_timeout=ready_timeout)


def _quoted(value: str, what: str) -> str:
    if '"' in value or "\n" in value:
        raise ConfigError(f"{what} {value!r} contains a quote or newline; OpenSSH's config cannot hold it")
    return f'"{value}"'


def ssh_config(record: VmRecord, *, host: str = "") -> str:
    """An OpenSSH `Host` block reaching the VM with its own key and pinned host key (like `limactl show-ssh`).

    The host key is pinned under the alias `lkctl-<id>` in the VM's `ssh_known_hosts` (written here), so the pin
    holds whatever port the VM gets after a restart. `ssh -F FILE NAME` then needs nothing from ~/.ssh.
    """
    from lkctl.ssh import known_hosts_line

    if not record.ssh_port:
        raise VmError(f"VM {record.name} has no SSH port (it never started)")
    name = host or (record.name if _HOST_PATTERN.match(record.name) else record.id)
    if not _HOST_PATTERN.match(name):
        raise ConfigError(f"host name {name!r} for ssh-config: use letters, digits, '.', '_' and '-'")
    alias = f"lkctl-{record.id}"
    known = record.dir / SSH_KNOWN_HOSTS
    atomic_write(known, known_hosts_line(alias, 22, record.dir / "ssh_host_ed25519_key.pub") + "\n", mode=0o600)
    lines = [
        f"Host {name}",
        "  HostName 127.0.0.1",
        f"  Port {record.ssh_port}",
        "  User root",
        f"  IdentityFile {_quoted(str(record.dir / 'id_ed25519'), 'the key path')}",
        "  IdentitiesOnly yes",
        f"  UserKnownHostsFile {_quoted(str(known), 'the known_hosts path')}",
        "  GlobalKnownHostsFile /dev/null",
        "  StrictHostKeyChecking yes",
        f"  HostKeyAlias {alias}",
        "  UpdateHostKeys no",
        "  ForwardAgent no",
        "  ForwardX11 no",
        "  PasswordAuthentication no",
        "  KbdInteractiveAuthentication no",
        "  LogLevel ERROR",
    ]
    return "\n".join(lines) + "\n"

"""Reaching a running VM: its SSH target (loopback port, own client key, pinned host key) and `vm.exec`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import IO, TYPE_CHECKING

from lkctl.errors import ConfigError, VmError
from lkctl.runtime import state
from lkctl.runtime.state import VmRecord

if TYPE_CHECKING:
    from lkctl.ssh import SshTarget

__all__ = ["exec_in_vm", "ssh_target"]


def ssh_target(record: VmRecord) -> SshTarget:
    """How to reach the VM's sshd: its forwarded port on loopback, its own client key and pinned host key."""
    from lkctl.ssh import vm_target

    if record.libvirt:
        from lkctl.runtime.libvirt.vms import ssh_target_libvirt

        return ssh_target_libvirt(record)
    if not record.ssh_port:
        raise VmError(f"VM {record.name} has no network (--network none), so lkctl cannot reach it over SSH")
    return vm_target(record.dir, record.ssh_port, record.name)


def exec_in_vm(
    record: VmRecord,
    argv: Sequence[str],
    *,
    stdin: IO[bytes] | None = None,
    stdout: IO[bytes] | None = None,
    stderr: IO[bytes] | None = None,
    timeout: float | None = None,
    tty: bool = False,
    env: dict[str, str] | None = None,
    workdir: str | None = None,
) -> int:
    """Run `argv` in the guest over SSH (host key pinned); returns the remote exit status unchanged."""
    from lkctl import ssh

    if not argv:
        raise ConfigError("no command given: vm.exec NAME -- COMMAND [ARGS...]")
    state.require_running(record)
    return int(ssh.exec_command(ssh_target(record), list(argv), stdin=stdin, stdout=stdout, stderr=stderr,
                                timeout=timeout, pty=tty, env=env, workdir=workdir))  # fmt: skip

"""VM lifecycle beyond run/stop: inspect, kill, restart, remove, prune, copy files, interactive shell."""

from __future__ import annotations

import contextlib
import dataclasses
import signal
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from lkctl.errors import ConfigError, HypervisorFailed, StateError, VmError
from lkctl.runtime import state
from lkctl.runtime.exec import ssh_target
from lkctl.runtime.hyperkit import console_file
from lkctl.runtime.ports import check_ports
from lkctl.runtime.qemu import CONSOLE_LOG, PIDFILE, QMP_SOCKET
from lkctl.runtime.start import StartPlan, load_daemons, start_processes, wait_ready
from lkctl.runtime.state import VmRecord
from lkctl.runtime.stop import kill_helpers, signal_vm, stop_vm, terminate_vm, wait_gone

__all__ = [
    "VmInspection",
    "copy_path",
    "inspect_vm",
    "kill_vm",
    "prune_vms",
    "remove_vm",
    "restart_vm",
    "shell_in_vm",
]


@dataclass(frozen=True)
class VmInspection:
    """Everything lkctl knows about a VM (`vm.inspect`): its record, live status and the paths of its files."""

    record: VmRecord
    status: str
    paths: Mapping[str, str]
    problem: str | None = None  # why the record could not be read (local VMs)
    placement: Mapping[str, str] = field(default_factory=dict)  # libvirt VMs: uri, host, domain, uuid

    def to_json(self) -> dict[str, Any]:
        """`vm.inspect`'s JSON object."""
        where: dict[str, Any] = dict(self.placement) if self.placement else {"problem": self.problem}
        return {**self.record.to_json(), "status": self.status, **where, "paths": dict(self.paths)}


def inspect_vm(record: VmRecord) -> VmInspection:
    """Everything lkctl knows about a VM, for `vm.inspect`."""
    if record.libvirt:
        from lkctl.runtime.libvirt.vms import inspect_libvirt_vm

        doc = inspect_libvirt_vm(record)
        placement = {k: str(doc[k]) for k in ("uri", "host", "domain", "uuid")}
        return VmInspection(record, str(doc["status"]), dict(doc["paths"]), placement=placement)
    d = record.dir
    paths = {
        "state_dir": str(d),
        "console_log": str(console_file(d)),
        "qmp_socket": str(d / QMP_SOCKET),
        "pidfile": str(d / PIDFILE),
        "client_key": str(d / "id_ed25519"),
        "host_key": str(d / "ssh_host_ed25519_key.pub"),
        "known_hosts": str(d / "known_hosts"),
    }
    return VmInspection(record, state.vm_status(record), paths, problem=record.problem or None)


def kill_vm(record: VmRecord, sig: signal.Signals = signal.SIGKILL) -> bool:
    """Send `sig` to the VM's QEMU (only if it is really ours). Returns False if it was not running."""
    if record.libvirt:  # libvirt owns that QEMU: any signal means destroy
        from lkctl.runtime.libvirt.vms import kill_libvirt_vm

        return kill_libvirt_vm(record)
    if not state.is_our_process(record):
        kill_helpers(record)
        return False
    signal_vm(record, sig)
    if sig in (signal.SIGKILL, signal.SIGTERM):
        wait_gone(record, 10)
        kill_helpers(record)
    return True


def remove_vm(record: VmRecord, *, force: bool = False, stop_timeout: float | None = None) -> None:
    """Forget a VM. A running one is stopped first with `force`; so is one whose record cannot be read.
    `stop_timeout` None: settings' `vm.stop_timeout`."""
    if record.problem and not force:
        raise ConfigError(f"VM {record.id} is unknown ({record.problem}); vm.rm --force {record.id} removes it")
    if record.libvirt:
        from lkctl.runtime.libvirt.vms import remove_libvirt_vm

        if stop_timeout is None:
            from lkctl.settings import load_settings

            stop_timeout = load_settings().vm.stop_timeout
        return remove_libvirt_vm(record, force=force, stop_timeout=stop_timeout)
    if state.vm_status(record) == "running" or (record.problem and state.is_our_process(record)):
        if not force:
            raise ConfigError(f"VM {record.name} is running; stop it first or use --force")
        stop_vm(record, timeout=stop_timeout)
    elif not force:
        _refuse_if_starting(record)
    kill_helpers(record)
    with state.vms_lock():
        current = None
        if not record.problem:
            with contextlib.suppress(StateError):
                current = state.load_record(record.dir)
        if current is not None and not force:  # a vm.start of it may have begun since it was looked at
            if state.vm_status(current) == "running":
                raise ConfigError(f"VM {record.name} was started meanwhile; stop it first or use --force")
            _refuse_if_starting(current)
        state.remove_record(record)


def _refuse_if_starting(record: VmRecord) -> None:
    """A VM whose record a live lkctl (vm.run, vm.start, vm.restart) is starting is not removed under it: that
    lkctl would go on writing into a removed dir, or leave a QEMU no command lists."""
    if state.being_created(record):
        raise ConfigError(
            f"VM {record.name} is being started by lkctl process {record.creator[0]}; wait for it, or vm.rm --force"
        )


def prune_vms() -> list[VmRecord]:
    """Forget every VM that is not running (and the key staging dirs of `vm.run`s that were killed). Returns the
    VMs removed."""
    from lkctl.leftovers import reclaim
    from lkctl.paths import state_dir

    reclaim(state_dir() / "staging", "keys-")
    reclaim(state.vms_dir(), state.REMOVING)  # removals that were killed half-way
    removed = []
    with state.vms_lock():
        for r in state.all_records():
            # leave alone what is being started by a live lkctl and what this lkctl cannot read
            if not r.libvirt and state.vm_status(r) not in ("running", "unknown") and not state.being_created(r):
                state.remove_record(r)
                removed.append(r)
    for r in state.all_records():  # libvirt VMs: undefined with their volumes (a host that does not answer: kept)
        if r.libvirt and state.vm_status(r) in ("stopped", "error", "missing"):
            from lkctl.runtime.libvirt.vms import remove_libvirt_vm

            remove_libvirt_vm(r)
            removed.append(r)
    return removed


def restart_vm(record: VmRecord, *, stop_timeout: float | None = None, ready_timeout: float | None = None) -> VmRecord:
    """Power the VM off (if running) and boot it again with the same command line, keys, ports, name and helper
    daemons (a virtiofs volume's virtiofsd), through the same start path as `vm.run`.

    Timeouts None: settings' `vm.stop_timeout` / `vm.ready_timeout`."""
    if stop_timeout is None or ready_timeout is None:
        from lkctl.settings import load_settings

        vm = load_settings().vm
        stop_timeout = vm.stop_timeout if stop_timeout is None else stop_timeout
        ready_timeout = vm.ready_timeout if ready_timeout is None else ready_timeout
    if record.libvirt:
        from lkctl.runtime.libvirt.vms import restart_libvirt_vm

        return restart_libvirt_vm(record, stop_timeout=stop_timeout, ready_timeout=ready_timeout)
    if not record.argv:
        raise VmError(f"VM {record.name} has no recorded command line to restart with")
    if "hyperkit" in Path(record.argv[0]).name:
        raise VmError(f"restarting hyperkit VMs is not supported; remove {record.name} and run a new VM")
    daemons = load_daemons(record.dir)
    if not daemons and any(a.startswith("vhost-user-fs") for a in record.argv):
        # made by an lkctl before daemons.json: its virtiofsd's command line was never kept (QEMU would only say
        # it cannot connect to a socket); refused before the running VM is stopped
        raise VmError(
            f"cannot restart {record.name}: its virtiofs volume's helper was not recorded (the VM was made by an "
            "older lkctl); remove it and run a new VM"
        )
    stop_vm(record, timeout=stop_timeout)
    from lkctl.runtime.model import parse_port

    try:
        check_ports(record.ssh_port, [parse_port(p.replace("->", ":")) for p in record.ports])
    except ConfigError as e:
        raise VmError(f"cannot restart {record.name}: {e.message}; remove it and run a new VM") from None
    argv = list(record.argv)
    if "-daemonize" not in argv:
        argv.append("-daemonize")
    with state.state_writes():
        (record.dir / CONSOLE_LOG).unlink(missing_ok=True)
    plan = StartPlan(tuple(argv), daemons)
    try:
        record, _ = start_processes(dataclasses.replace(record, exit_reason=""), plan)
        if record.ssh_port:  # a VM with --network none has no SSH to wait for
            record = wait_ready(record, ready_timeout)
    except BaseException as e:
        _start_failed(record, e)
        if isinstance(e, HypervisorFailed):
            raise VmError(str(e).replace("failed to start", "failed to restart")) from None
        raise
    return record


def _start_failed(record: VmRecord, error: BaseException) -> None:
    """After a failed (re)start, as after a failed `vm.run`: no QEMU keeps running, and the record says why, so
    the VM shows `error` and `vm.start` can try again (a record left with no pid read as never started)."""
    with contextlib.suppress(StateError):
        latest = state.load_record(record.dir)
        if latest is None:  # removed meanwhile (vm.rm --force)
            return
        if state.is_our_process(latest):
            terminate_vm(latest)
        kill_helpers(latest)
        reason = "interrupted while starting" if isinstance(error, KeyboardInterrupt) else str(error)
        state.save_record(dataclasses.replace(latest, exit_reason=reason.splitlines()[0] if reason else "failed"))


def _split_vm_path(text: str) -> tuple[str, str] | None:
    """`NAME:/path` → (NAME, /path); a local path (no colon before the first slash) → None."""
    head, sep, tail = text.partition(":")
    if not sep or "/" in head or not head:
        return None
    return head, tail or "."


def copy_path(src: str, dst: str) -> str:
    """`vm.cp`: copy a file or directory tree between host and guest (one side is `VM:PATH`), over SSH, with
    `docker cp`'s rules (see lkctl.ssh copy_to/copy_from)."""
    from lkctl import ssh

    src_vm, dst_vm = _split_vm_path(src), _split_vm_path(dst)
    if bool(src_vm) == bool(dst_vm):
        raise ConfigError("vm.cp copies between the host and one VM: write the VM side as NAME:/path")
    if dst_vm:
        record = _running(dst_vm[0])
        return ssh.copy_to(ssh_target(record), src, dst_vm[1])
    assert src_vm is not None
    record = _running(src_vm[0])
    return ssh.copy_from(ssh_target(record), src_vm[1], dst)


def _running(target: str) -> VmRecord:
    record = state.find_vm(target)
    state.require_running(record)
    return record


def shell_in_vm(record: VmRecord, stdin: IO[bytes], stdout: IO[bytes], stderr: IO[bytes]) -> int:
    """An interactive login shell in the guest on a pseudo-terminal."""
    from lkctl import ssh

    state.require_running(record)
    return int(
        ssh.exec_command(
            ssh_target(record),
            command='exec "${SHELL:-/bin/sh}" -l',
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            pty=True,
        )
    )

"""VM lifecycle beyond run/stop: inspect, kill, restart, remove, prune, copy files, interactive shell."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import signal
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from lkctl.errors import ConfigError, VmError
from lkctl.fsutil import atomic_write
from lkctl.paths import cache_dir
from lkctl.runtime import state
from lkctl.runtime.hyperkit import console_file
from lkctl.runtime.qemu import CONSOLE_LOG, PIDFILE, QMP_SOCKET
from lkctl.runtime.state import VmRecord
from lkctl.runtime.vm import (
    _check_ports,
    _kill_helpers,
    _signal,
    _start_qemu,
    _wait_gone,
    _wait_ready,
    ssh_target,
    stop_vm,
)

__all__ = [
    "copy_path",
    "file_digest",
    "inspect_vm",
    "kill_vm",
    "prune_vms",
    "remove_vm",
    "restart_vm",
    "shell_in_vm",
]


def file_digest(paths: Sequence[Path]) -> str:
    """sha256 over the files that make up a boot image (kernel then initrd, or the one image file).

    Disk images run to gigabytes and are booted again and again: the digest is remembered in lkctl's cache,
    keyed by each file's path, size, mtime and inode, so only a changed file is read again.
    """
    stats = [os.stat(p) for p in paths]
    key = hashlib.sha256(
        "|".join(
            f"{os.path.abspath(p)}:{st.st_size}:{st.st_mtime_ns}:{st.st_ino}"
            for p, st in zip(paths, stats, strict=True)
        ).encode()
    ).hexdigest()[:32]
    memo = cache_dir() / "digests" / key
    with contextlib.suppress(OSError):
        return memo.read_text().strip()
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    digest = "sha256:" + h.hexdigest()
    with contextlib.suppress(OSError):
        atomic_write(memo, digest)
    return digest


def inspect_vm(record: VmRecord) -> dict[str, Any]:
    """Everything lkctl knows about a VM, for `vm.inspect` (JSON-serialisable)."""
    if record.libvirt:
        from lkctl.runtime.libvirt.vms import inspect_libvirt_vm

        return inspect_libvirt_vm(record)
    d = record.dir
    return {
        **record.to_json(),
        "status": state.vm_status(record),
        "problem": record.problem or None,
        "paths": {
            "state_dir": str(d),
            "console_log": str(console_file(d)),
            "qmp_socket": str(d / QMP_SOCKET),
            "pidfile": str(d / PIDFILE),
            "client_key": str(d / "id_ed25519"),
            "host_key": str(d / "ssh_host_ed25519_key.pub"),
            "known_hosts": str(d / "known_hosts"),
        },
    }


def kill_vm(record: VmRecord, sig: signal.Signals = signal.SIGKILL) -> bool:
    """Send `sig` to the VM's QEMU (only if it is really ours). Returns False if it was not running."""
    if record.libvirt:  # libvirt owns that QEMU: any signal means destroy
        from lkctl.runtime.libvirt.vms import kill_libvirt_vm

        return kill_libvirt_vm(record)
    if not state.is_our_process(record):
        _kill_helpers(record)
        return False
    _signal(record, sig)
    if sig in (signal.SIGKILL, signal.SIGTERM):
        _wait_gone(record, 10)
        _kill_helpers(record)
    return True


def remove_vm(record: VmRecord, *, force: bool = False, stop_timeout: float = 30.0) -> None:
    """Forget a VM. A running one is stopped first with `force`; so is one whose record cannot be read."""
    if record.problem and not force:
        raise ConfigError(f"VM {record.id} is unknown ({record.problem}); vm.rm --force {record.id} removes it")
    if record.libvirt:
        from lkctl.runtime.libvirt.vms import remove_libvirt_vm

        return remove_libvirt_vm(record, force=force, stop_timeout=stop_timeout)
    if state.vm_status(record) == "running" or (record.problem and state.is_our_process(record)):
        if not force:
            raise ConfigError(f"VM {record.name} is running; stop it first or use --force")
        stop_vm(record, timeout=stop_timeout)
    _kill_helpers(record)
    with state.vms_lock():
        state.remove_record(record)


def prune_vms() -> list[VmRecord]:
    """Forget every VM that is not running (and the key staging dirs of `vm.run`s that were killed). Returns the
    VMs removed."""
    from lkctl.leftovers import reclaim
    from lkctl.paths import state_dir

    reclaim(state_dir() / "staging", "keys-")
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


def restart_vm(record: VmRecord, *, stop_timeout: float = 30.0, ready_timeout: float = 180.0) -> VmRecord:
    """Power the VM off (if running) and boot it again with the same command line, keys, ports and name."""
    if record.libvirt:
        from lkctl.runtime.libvirt.vms import restart_libvirt_vm

        return restart_libvirt_vm(record, stop_timeout=stop_timeout, ready_timeout=ready_timeout)
    if not record.argv:
        raise VmError(f"VM {record.name} has no recorded command line to restart with")
    if "hyperkit" in Path(record.argv[0]).name:
        raise VmError(f"restarting hyperkit VMs is not supported; remove {record.name} and run a new VM")
    stop_vm(record, timeout=stop_timeout)
    from lkctl.runtime.qemu import parse_port

    try:
        _check_ports(record.ssh_port, [parse_port(p.replace("->", ":")) for p in record.ports])
    except ConfigError as e:
        raise VmError(f"cannot restart {record.name}: {e.message}; remove it and run a new VM") from None
    argv = list(record.argv)
    if "-daemonize" not in argv:
        argv.append("-daemonize")
    (record.dir / CONSOLE_LOG).unlink(missing_ok=True)
    result = _start_qemu(argv, record.dir)
    if result.returncode != 0:
        last = (result.stderr.decode(errors="replace").strip().splitlines() or [f"exit {result.returncode}"])[-1]
        raise VmError(f"QEMU failed to restart VM {record.name}: {last}")
    ident = state.process_identity(state.read_pidfile(record.dir))
    if ident is None:
        raise VmError(f"QEMU for VM {record.name} exited right after restarting")
    record = dataclasses.replace(
        record, pid=ident.pid, pid_start=ident.start, boot_id=ident.boot_id, exit_reason="", argv=argv
    )
    state.save_record(record)
    if record.ssh_port:  # a VM with --network none has no SSH to wait for
        record = _wait_ready(record, ready_timeout)
    return record


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
    status = state.vm_status(record)
    if status != "running":
        raise VmError(f"VM {record.name} is not running (status: {status})")
    return record


def shell_in_vm(record: VmRecord, stdin: IO[bytes], stdout: IO[bytes], stderr: IO[bytes]) -> int:
    """An interactive login shell in the guest on a pseudo-terminal."""
    from lkctl import ssh

    status = state.vm_status(record)
    if status != "running":
        raise VmError(f"VM {record.name} is not running (status: {status})")
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

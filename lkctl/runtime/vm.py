"""VM lifecycle: run (detached or foreground), stop, logs, exec. Library functions; tasks are thin adapters."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING

from lkctl import proc
from lkctl.errors import ConfigError, StateError, VmError
from lkctl.flags import check_vm_name
from lkctl.runtime import state
from lkctl.runtime.host import HostCaps, probe_host
from lkctl.runtime.hyperkit import CONSOLE_RING, console_file, read_console, read_console_ring, require_hypervisor
from lkctl.runtime.network import check_run_network, network_mode
from lkctl.runtime.qemu import (
    QMP_SOCKET,
    BootImage,
    DataDisk,
    Network,
    PortForward,
    VmSpec,
    Volume,
    needs_uefi,
)
from lkctl.runtime.qmp import qmp_command
from lkctl.runtime.state import VmRecord
from lkctl.settings import Settings

if TYPE_CHECKING:
    from lkctl.ssh import SshTarget

__all__ = [
    "RunOptions",
    "console_tail",
    "exec_in_vm",
    "follow_console",
    "plan_vm",
    "preflight",
    "run_vm",
    "ssh_target",
    "stop_vm",
]

READY_MARKER = b"lkctl-init: ready"
_PANIC_MARKERS = (b"Kernel panic", b"lkctl-init: fatal:")


@dataclass(frozen=True)
class RunOptions:
    """What `vm.run` was asked for. Zero values mean "the setting's default" (or "pick a free port")."""

    name: str = ""
    memory: int = 0
    cpus: int = 0
    ssh_port: int = 0
    ports: tuple[PortForward, ...] = ()
    detach: bool = True
    ready_timeout: float = 0.0
    wait_ssh: bool = True  # detached only: False returns as soon as QEMU runs (for images without sshd)
    auto_remove: bool = False  # forget the VM once it stops (`vm.run --rm`)
    volumes: tuple[Volume, ...] = ()  # --volume HOST:GUEST[:ro], shared over 9p and mounted by lkctl's init
    data_disk: DataDisk | None = None  # --disk SIZE: a persistent data disk in the VM's state dir
    uefi: bool | None = None  # None: decided from the image (LinuxKit -efi names, EFI-only ISOs, GPT disks)
    hypervisor: str = "auto"  # auto | qemu | hyperkit
    virtiofs: bool = False  # share read-write volumes over virtiofs (a virtiofsd each; needs root) instead of 9p
    keys_from: Path | None = None  # SSH keys made before the VM (a template was rendered with them): adopt them
    hostname: str = ""  # the guest's host name (default: the VM's name; see lkctl.runtime.guest)
    env: tuple[tuple[str, str], ...] = ()  # --env NAME=VALUE: the guest's services and vm.exec see it
    network: Network | None = None  # user | restricted | none; None: settings.vm.network
    connect: str = ""  # run through libvirt at this URI (qemu:///system, qemu+ssh://root@host/system)
    host: str = ""  # run through libvirt on this lkctl.hosts entry, or `auto` (most free memory that fits)
    snapshot: bool = False  # -d only: restore from a memory snapshot of the image (lkctl.runtime.snapshot)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _port_free(ip: str, port: int, proto: str = "tcp") -> bool:
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET, kind) as s:
        if kind == socket.SOCK_STREAM:
            # as QEMU binds its forwards: a port whose last connection lingers in TIME_WAIT is free (the VM's
            # connection holder keeps one open, and it ends in TIME_WAIT when QEMU goes); a listener is not
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((ip, port))
        except OSError as e:
            if e.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise ConfigError(f"cannot bind {ip}:{port}: {e.strerror}") from None
    return True


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _check_ports(ssh_port: int, ports: Sequence[PortForward]) -> None:
    seen: set[tuple[str, int, str]] = set()
    wanted = [PortForward(ssh_port, 22)] if ssh_port else []
    for p in [*wanted, *ports]:
        key = (p.host_ip, p.host_port, p.proto)
        if key in seen:
            raise ConfigError(f"host port {p.host_ip}:{p.host_port}/{p.proto} is forwarded twice")
        seen.add(key)
        if not _port_free(p.host_ip, p.host_port, p.proto):
            raise ConfigError(f"port {p.host_ip}:{p.host_port}/{p.proto} is already in use; choose another host port")


def preflight(opts: RunOptions) -> None:
    """What can be refused before any build or boot: a taken --name, a busy or doubled host port.

    run_vm checks again (under the state lock for the name), since another VM may take either meanwhile.
    """
    if opts.name:
        state.check_name_free(opts.name)
    if opts.ssh_port or opts.ports:
        _check_ports(opts.ssh_port, opts.ports)


def console_tail(record: VmRecord, lines: int = 20) -> str:
    path = console_file(record.dir)
    if path.name == CONSOLE_RING:
        text = read_console_ring(path).decode(errors="replace").replace("\r", "")
        return "\n".join(text.splitlines()[-lines:])
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16384))
            data = f.read()
    except FileNotFoundError:
        return ""
    text = data.decode(errors="replace").replace("\r", "")
    return "\n".join(text.splitlines()[-lines:])


def _console_bytes(record: VmRecord) -> bytes:
    return read_console(record.dir)


def ssh_target(record: VmRecord) -> SshTarget:
    """How to reach the VM's sshd: its forwarded port on loopback, its own client key and pinned host key."""
    from lkctl.ssh import SshTarget

    if record.libvirt:
        from lkctl.runtime.libvirt.vms import ssh_target_libvirt

        return ssh_target_libvirt(record)
    if not record.ssh_port:
        raise VmError(f"VM {record.name} has no network (--network none), so lkctl cannot reach it over SSH")
    return SshTarget(
        host="127.0.0.1",
        port=record.ssh_port,
        user="root",
        client_key=record.dir / "id_ed25519",
        known_hosts=record.dir / "known_hosts",
        label=record.name,
    )


def _diagnose(record: VmRecord, why: str) -> str:
    console = _console_bytes(record)
    if not console.strip():
        reason = "the guest printed nothing on its console (no kernel output)"
    elif b"Kernel panic" in console:
        reason = "the guest kernel panicked"
    elif b"lkctl-init:" not in console:
        reason = "the kernel started but lkctl's init never ran (is the init image in the YAML?)"
    elif READY_MARKER not in console:
        reason = "init started but did not finish starting services"
    else:
        reason = "init reported ready but sshd did not answer (is an sshd service in the YAML?)"
    tail = console_tail(record)
    msg = f"VM {record.name} did not become ready: {why}; {reason}."
    if tail:
        msg += f"\nlast console lines ({console_file(record.dir)}):\n{tail}"
    return msg


def _start_qemu(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        argv, cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True, env=proc.minimal_env(), timeout=60, check=False
    )


def _create(boot: BootImage, image_label: str, opts: RunOptions, settings: Settings, host: HostCaps) -> VmRecord:
    from lkctl import ssh
    from lkctl.runtime.guest import guest_hostname, write_guest_files

    if opts.name:
        check_vm_name(opts.name)
    with state.vms_lock():
        records = state.all_records()
        if opts.name:
            state.check_name_free(opts.name, records)
        vm_id = state.new_vm_id({r.id for r in records} | {r.name for r in records})
        record = VmRecord(
            id=vm_id,
            name=opts.name or vm_id,
            image=image_label,
            image_format=boot.format.value,
            created=_now(),
            memory=opts.memory or settings.vm.memory,
            cpus=opts.cpus or settings.vm.cpus,
            ssh_port=0,
            ports=[str(p) for p in opts.ports],
            accel=host.accel.value,
            auto_remove=opts.auto_remove,
            image_digest=_digest(boot),
            creator=state.creator_identity(),  # `vm.ps`/`vm.prune` leave the record alone while we are alive
        )
        state.save_record(record)  # reserves the name and id under the lock
    try:
        for f in sorted(opts.keys_from.iterdir()) if opts.keys_from else ():
            if f.is_file() and not f.name.startswith("."):
                shutil.copy2(f, record.dir / f.name)  # generate_keys keeps (and checks) keys that exist
        ssh.generate_keys(record.dir)
        hostname = guest_hostname(opts.hostname, record.name, record.id)
        write_guest_files(record.dir, hostname, dict(opts.env), explicit_hostname=bool(opts.hostname))
    except BaseException:
        state.remove_record(record)
        raise
    return record


def _digest(boot: BootImage) -> str:
    from lkctl.runtime.lifecycle import file_digest

    files = [boot.kernel, boot.initrd] if boot.kernel and boot.initrd else [boot.path]
    try:
        return file_digest([f for f in files if f is not None])
    except OSError:
        return ""


def _spec(
    record: VmRecord, boot: BootImage, opts: RunOptions, settings: Settings, ssh_port: int, host: HostCaps
) -> VmSpec:
    from lkctl.runtime.disks import detect_uefi, find_uefi_firmware
    from lkctl.runtime.guest import guest_files

    mac_tail = ":".join(record.id[i : i + 2] for i in range(0, 8, 2))
    uefi = (
        opts.uefi
        if opts.uefi is not None
        else (boot.format.is_disk or boot.format.value == "iso") and (detect_uefi(boot.path, boot.format))
    )
    boot = dataclasses.replace(boot, uefi=bool(uefi))
    spec = VmSpec(
        vm_id=record.id,
        boot=boot,
        memory=record.memory,
        cpus=record.cpus,
        ssh_port=ssh_port,
        ports=opts.ports,
        mac=f"52:54:{mac_tail}",
        guest_files=(
            ("ssh/authorized_keys", Path("id_ed25519.pub")),
            ("ssh/ssh_host_ed25519_key", Path("ssh_host_ed25519_key")),
            *guest_files(bool(opts.hostname), dict(opts.env)),
        ),
        cmdline_extra=settings.vm.cmdline_extra,
        daemonize=opts.detach,
        volumes=opts.volumes,
        data_disk=opts.data_disk,
        virtiofs=opts.virtiofs,
        network=network_mode(opts, settings),
    )
    if needs_uefi(spec, host.arch):
        firmware = find_uefi_firmware(host.arch)
        if firmware is None:
            raise ConfigError(
                f"{boot.path} boots with UEFI but no UEFI firmware was found; install it with: sudo apt-get install "
                + ("ovmf" if host.arch == "x86_64" else "qemu-efi-aarch64")
            )
        spec = dataclasses.replace(spec, firmware=firmware)
    return spec


def _fast_kernel(boot: BootImage, host: HostCaps, settings: Settings, hypervisor: str) -> BootImage:
    """Under QEMU on x86, boot the kernel's uncompressed ELF through PVH when it supports it (2x faster boots)."""
    if not settings.vm.pvh or hypervisor != "qemu" or host.arch != "x86_64" or boot.kernel is None:
        return boot
    from lkctl.runtime.pvh import pvh_kernel

    try:
        vmlinux = pvh_kernel(boot.kernel)
    except OSError:
        return boot
    return boot if vmlinux is None else dataclasses.replace(boot, kernel=vmlinux)


def _launch(
    record: VmRecord,
    boot: BootImage,
    opts: RunOptions,
    settings: Settings,
    host: HostCaps,
    hypervisor: str,
    say: Callable[[str], None] = lambda _: None,
) -> tuple[VmRecord, subprocess.Popen[bytes] | None]:
    """Start QEMU (retrying with another port if an auto-picked SSH port was taken meanwhile)."""
    from lkctl import ssh
    from lkctl.runtime.disks import prepare_vm_files
    from lkctl.runtime.hyperkit import hypervisor_argv

    boot = _fast_kernel(boot, host, settings, hypervisor)
    for attempt in range(3):
        ssh_port = 0 if network_mode(opts, settings) is Network.NONE else opts.ssh_port or _free_port()
        _check_ports(ssh_port, opts.ports)
        spec = _spec(record, boot, opts, settings, ssh_port, host)
        prepare_vm_files(spec, record.dir, host, hypervisor=hypervisor)
        argv = hypervisor_argv(spec, host, hypervisor)
        record = _start_virtiofsd(record, spec)
        if hypervisor == "hyperkit":
            record = _start_vpnkit(record, spec)
        if ssh_port:
            ssh.write_known_hosts(
                record.dir / "known_hosts", "127.0.0.1", ssh_port, record.dir / "ssh_host_ed25519_key.pub"
            )
        record = dataclasses.replace(record, ssh_port=ssh_port, argv=argv)
        state.save_record(record)
        child: subprocess.Popen[bytes] | None = None
        if opts.detach and hypervisor == "qemu":
            result = None
            if opts.snapshot:  # snapshot hook: a warm start; None = it fell back (and said so), boot cold
                from lkctl.runtime import snapshot

                timeout = opts.ready_timeout or settings.vm.ready_timeout
                result = snapshot.restore(argv, record.dir, timeout=timeout, say=say)
            result = result or _start_qemu(argv, record.dir)
            rc, err = result.returncode, result.stderr.decode(errors="replace").strip()
        else:
            with open(record.dir / "qemu.log", "wb") as log:
                child = subprocess.Popen(
                    argv, cwd=record.dir, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                    env=proc.minimal_env(), start_new_session=True,
                )  # fmt: skip
            rc, err = 0, ""
            deadline = time.monotonic() + 30
            while not state.read_pidfile(record.dir) and child.poll() is None and time.monotonic() < deadline:
                time.sleep(0.02)
            if child.poll() is not None:
                rc, err = child.returncode, (record.dir / "qemu.log").read_text(errors="replace").strip()
        if rc == 0:
            pid = state.read_pidfile(record.dir)
            ident = state.process_identity(pid)
            if ident is None:
                raise VmError(f"QEMU for VM {record.name} exited right after starting; see {record.dir / 'qemu.log'}")
            record = dataclasses.replace(record, pid=pid, pid_start=ident.start, boot_id=ident.boot_id)
            state.save_record(record)
            if hypervisor == "hyperkit":
                _publish_ports(record, spec)
            return record, child
        last = err.splitlines()[-1] if err else f"exit status {rc}"
        if "host forwarding rule" in err and not opts.ssh_port and attempt < 2:
            continue  # someone took the free port between our check and QEMU's bind
        raise VmError(f"QEMU failed to start VM {record.name}: {last}")
    raise AssertionError("unreachable")


def _start_virtiofsd(record: VmRecord, spec: VmSpec) -> VmRecord:
    """Start one virtiofsd per virtiofs volume, in the VM's state dir and its own session, before QEMU connects.

    They are recorded like QEMU (pid, start time, boot id, command line) so stop/kill/rm and a failed start clean
    them up; normally each exits by itself when QEMU disconnects.
    """
    from lkctl.runtime.disks import find_virtiofsd, virtiofsd_argv
    from lkctl.runtime.qemu import volume_mounts

    mounts = [m for m in volume_mounts(spec) if m.fstype == "virtiofs"]
    if not mounts:
        return record
    binary = find_virtiofsd()
    if binary is None:
        raise ConfigError("--virtiofs needs virtiofsd (Debian: sudo apt-get install qemu-system-common or virtiofsd)")
    if os.geteuid() != 0:
        raise ConfigError("--virtiofs needs root (virtiofsd must run as root); without it, volumes use 9p")
    helpers = list(record.helpers)
    for m in mounts:
        sock = record.dir / m.socket
        sock.unlink(missing_ok=True)
        argv = virtiofsd_argv(binary, m)
        with open(record.dir / f"virtiofsd-{m.tag}.log", "wb") as log:
            daemon = subprocess.Popen(
                argv, cwd=record.dir, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                env=proc.minimal_env(), start_new_session=True,
            )  # fmt: skip
        entry = state.helper_entry(daemon.pid, argv)
        if entry is not None:
            helpers.append(entry)
        record = dataclasses.replace(record, helpers=helpers)
        state.save_record(record)
        deadline = time.monotonic() + 10
        while not sock.exists():
            if daemon.poll() is not None or time.monotonic() > deadline:
                raise VmError(f"virtiofsd for volume {m.volume} did not start; see {record.dir}/virtiofsd-{m.tag}.log")
            time.sleep(0.02)
    return record


def _start_vpnkit(record: VmRecord, spec: VmSpec) -> VmRecord:
    """Start the hyperkit VM's own vpnkit (LinuxKit's `--networking vpnkit`), recorded as a helper like virtiofsd.
    NEVER EXECUTED: no vpnkit or hyperkit runs on Linux."""
    from lkctl.runtime.hyperkit import vpnkit_link
    from lkctl.runtime.vpnkit import find_vpnkit, start_vpnkit

    link = vpnkit_link(spec)
    if link is None or not link.own:
        return record
    daemon = start_vpnkit(record.dir, find_vpnkit(), log=record.dir / "vpnkit.log")
    ident = state.process_identity(daemon.pid)
    if ident is not None:
        record = dataclasses.replace(record, helpers=[*record.helpers, [str(ident.pid), ident.start]])
        state.save_record(record)
    return record


def _publish_ports(record: VmRecord, spec: VmSpec) -> None:
    """Forward the SSH port and --port forwards through the VM's vpnkit, as LinuxKit's vpnkitPublishPorts does.
    NEVER EXECUTED against a real vpnkit (tested against an HTTP server on a unix socket)."""
    from lkctl.runtime.hyperkit import vpnkit_link
    from lkctl.runtime.vpnkit import expose_port

    link = vpnkit_link(spec)
    if link is None or not link.port_control:
        return
    forwards = [PortForward(spec.ssh_port, 22)] if spec.ssh_port else []
    for p in [*forwards, *spec.ports]:
        expose_port(record.dir / link.port_control, proto=p.proto, host_ip=p.host_ip, host_port=p.host_port,
                    guest_ip=link.guest_ip, guest_port=p.guest_port)  # fmt: skip


def _kill_helpers(record: VmRecord) -> None:
    """Stop the VM's helper daemons that are still alive: identified like QEMU (start time, boot id, command line)
    right before the signal, so a process that merely reuses a PID is never signalled."""
    for entry in record.helpers:
        if state.is_our_helper(entry):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(entry[0]), signal.SIGTERM)


def _wait_ready(record: VmRecord, timeout: float, on_wait: Callable[[bytes], None] | None = None) -> VmRecord:
    """Start the VM's connection holder and wait until it holds an SSH connection (see lkctl.runtime.readiness);
    `on_wait` gets the console so far while waiting (progress for people).

    Returns the record with the holder in its helpers, so stopping the VM stops the holder too."""
    from lkctl.runtime.readiness import wait_for_holder

    def tick() -> None:
        if on_wait is not None:
            on_wait(_console_bytes(record))

    return wait_for_holder(record, timeout, panic_markers=_PANIC_MARKERS, diagnose=_diagnose, on_tick=tick)


@contextlib.contextmanager
def _signals_unwind() -> Iterator[None]:
    """While a VM is being started, SIGTERM and SIGHUP unwind like Ctrl-C, so the half-started QEMU is killed.

    Whoever drives the library (invoke, a CI runner cancelling a job, a closed terminal) then never leaves an
    orphaned QEMU behind. Only possible from the main thread; elsewhere the caller owns signal handling.
    """
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_vm(
    boot: BootImage,
    image_label: str,
    opts: RunOptions,
    settings: Settings,
    *,
    console: IO[bytes] | None = None,
    on_started: Callable[[VmRecord], None] | None = None,
    on_wait: Callable[[bytes], None] | None = None,
    say: Callable[[str], None] = lambda _: None,
) -> tuple[VmRecord, int]:
    """Boot `boot` as a new VM. Detached: returns once the guest answers SSH (exit status 0). Foreground: streams
    the console to `console` until the VM ends and returns its record and an exit status (0 = clean power-off).

    Any failure leaves no QEMU running: the VM is killed and marked `error` with the reason. `on_started` is called
    once QEMU runs; `on_wait` with the console so far while a detached run waits for SSH (progress for people);
    `say` with one-line notes (a warm start that fell back to a cold boot).
    """
    check_run_network(opts, settings)
    hypervisor = require_hypervisor(opts.hypervisor, settings.vm.qemu).value  # before anything is created
    if opts.snapshot:  # snapshot hook: refuse what a restored VM could not be, before anything is made
        from lkctl.runtime.snapshot import check_supported

        check_supported(boot, opts, hypervisor)
    host = probe_host(accel=settings.vm.accel, qemu=settings.vm.qemu, kernel=boot.kernel, hypervisor=hypervisor)
    if opts.ssh_port or opts.ports:
        _check_ports(opts.ssh_port, opts.ports)
    record = _create(boot, image_label, opts, settings, host)
    try:
        from lkctl.images import adopt_private_build

        boot = adopt_private_build(boot, opts.keys_from, record.dir)
    except BaseException:
        state.remove_record(record)
        raise
    child: subprocess.Popen[bytes] | None = None
    try:
        with _signals_unwind():
            record, child = _launch(record, boot, opts, settings, host, hypervisor, say)
            if on_started is not None:
                on_started(record)
            if opts.detach:
                if opts.wait_ssh:
                    record = _wait_ready(record, opts.ready_timeout or settings.vm.ready_timeout, on_wait)
                return record, 0
            assert child is not None
            code = _foreground(record, child, console, settings)
            if opts.auto_remove:
                with state.vms_lock():
                    state.remove_record(record)
            return record, code
    except BaseException as e:
        with _signals_unwind():  # a second SIGTERM must not interrupt the cleanup
            _abandon(record, child, e)
        raise


def _abandon(record: VmRecord, child: subprocess.Popen[bytes] | None, error: BaseException) -> None:
    """Clean up after a failed start: no QEMU keeps running, and the record says why (or is gone)."""
    with contextlib.suppress(StateError):
        record = state.load_record(record.dir) or record  # _launch may have recorded a pid we have not seen
    if not record.pid:
        # interrupted between QEMU writing its pidfile and us recording it
        ident = state.process_identity(state.read_pidfile(record.dir))
        if ident is not None:
            record = dataclasses.replace(record, pid=ident.pid, pid_start=ident.start, boot_id=ident.boot_id)
    if record.pid:
        _kill(record)
    if child is not None and child.poll() is None:
        proc.shutdown_process(child)
    _kill_helpers(record)
    if not record.pid:
        state.remove_record(record)  # never started: leave nothing behind
    else:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        if isinstance(error, KeyboardInterrupt):
            reason = "interrupted while starting"
        state.save_record(dataclasses.replace(record, exit_reason=reason))


def _foreground(record: VmRecord, child: subprocess.Popen[bytes], out: IO[bytes] | None, settings: Settings) -> int:
    """Copy the console to `out` until QEMU exits; Ctrl-C powers the guest off gracefully."""
    try:
        for chunk in follow_console(record, from_start=True, alive=lambda: child.poll() is None):
            if out is not None:
                out.write(chunk)
                out.flush()
    except KeyboardInterrupt:
        stop_vm(record, timeout=settings.vm.stop_timeout)
        child.wait()
        return 130
    return child.wait()


def _wait_gone(record: VmRecord, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not state.is_our_process(record):
            return True
        time.sleep(0.05)
    return not state.is_our_process(record)


def _signal(record: VmRecord, sig: signal.Signals) -> None:
    # re-check identity right before signalling: a reused PID is never signalled
    if state.is_our_process(record):
        with contextlib.suppress(ProcessLookupError):
            os.kill(record.pid, sig)


def _kill(record: VmRecord) -> None:
    _signal(record, signal.SIGTERM)
    if not _wait_gone(record, 5):
        _signal(record, signal.SIGKILL)
        _wait_gone(record, 5)


def stop_vm(record: VmRecord, *, timeout: float = 30.0) -> str:
    """Power the VM off: ACPI shutdown over QMP, then SIGTERM, then SIGKILL. Returns how it ended.

    Helper daemons (virtiofsd) that outlive QEMU are stopped too."""
    if record.libvirt:
        from lkctl.runtime.libvirt.vms import stop_libvirt_vm

        return stop_libvirt_vm(record, timeout=timeout)
    if not state.is_our_process(record):
        _kill_helpers(record)
        return "not running"
    try:
        return _stop_qemu(record, timeout)
    finally:
        _kill_helpers(record)


def _stop_qemu(record: VmRecord, timeout: float) -> str:
    # A guest that has not reached init's ready point has no ACPI handler yet and would ignore the power button
    # for the whole timeout: it gets SIGTERM at once. (Images whose init is not lkctl's never print the marker,
    # so they are stopped this way too.)
    if READY_MARKER in _console_bytes(record):
        with contextlib.suppress(VmError):
            qmp_command(record.dir / QMP_SOCKET, "system_powerdown")
            if _wait_gone(record, timeout):
                return "powered off"
    _signal(record, signal.SIGTERM)
    if _wait_gone(record, 5):
        return "terminated"
    _signal(record, signal.SIGKILL)
    if _wait_gone(record, 5):
        return "killed"
    raise VmError(f"VM {record.name} (pid {record.pid}) survived SIGKILL; check it with ps")


def follow_console(
    record: VmRecord, *, from_start: bool = True, alive: Callable[[], bool] | None = None, poll: float = 0.1
) -> Iterator[bytes]:
    """Yield console output as it arrives, until the VM is gone and everything has been read."""
    if record.libvirt:
        from lkctl.runtime.libvirt.vms import console_chunks

        yield from console_chunks(record, follow=alive is None)
        return
    is_alive = alive or (lambda: state.is_our_process(record))
    while not (path := console_file(record.dir)).exists():
        if not is_alive():
            return
        time.sleep(poll)
    if path.name == CONSOLE_RING:
        yield from _follow_ring(path, from_start=from_start, is_alive=is_alive, poll=poll)
        return
    with open(path, "rb") as f:
        if not from_start:
            f.seek(0, os.SEEK_END)
        while True:
            chunk = f.read(65536)
            if chunk:
                yield chunk
                continue
            if not is_alive():
                rest = f.read()
                if rest:
                    yield rest
                return
            time.sleep(poll)


def _follow_ring(path: Path, *, from_start: bool, is_alive: Callable[[], bool], poll: float) -> Iterator[bytes]:
    """follow_console over hyperkit's console ring: yields what was appended since the last look. Once the ring has
    wrapped (64 KiB of output), the end of the output cannot be found any more, and following stops there."""
    seen = b"" if from_start else read_console_ring(path)
    while True:
        alive = is_alive()
        now = read_console_ring(path)
        if now.startswith(seen) and len(now) > len(seen):
            yield now[len(seen) :]
            seen = now
        elif not now.startswith(seen):
            return  # wrapped (or truncated by a restart): the order of what follows is unknown
        if not alive:
            return
        time.sleep(poll)


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
    status = state.vm_status(record)
    if status != "running":
        raise VmError(f"VM {record.name} is not running (status: {status})")
    return int(ssh.exec_command(ssh_target(record), list(argv), stdin=stdin, stdout=stdout, stderr=stderr,
                                timeout=timeout, pty=tty, env=env, workdir=workdir))  # fmt: skip


def plan_vm(boot: BootImage, image_label: str, opts: RunOptions, settings: Settings) -> tuple[list[str], VmRecord]:
    """What run_vm would start, starting nothing and writing no state (`vm.run --dry-run`).

    The hypervisor argv for a VM with a fresh ID, run from its state directory (relative paths in the argv are
    there), and the record it would have. With no --ssh-port, the port shown is one that is free now.
    """
    from lkctl.runtime.hyperkit import hypervisor_argv

    hypervisor = require_hypervisor(opts.hypervisor, settings.vm.qemu).value
    host = probe_host(accel=settings.vm.accel, qemu=settings.vm.qemu, kernel=boot.kernel, hypervisor=hypervisor)
    preflight(opts)
    boot = _fast_kernel(boot, host, settings, hypervisor)
    records = state.all_records()
    vm_id = state.new_vm_id({r.id for r in records} | {r.name for r in records})
    ssh_port = opts.ssh_port or _free_port()
    record = VmRecord(
        id=vm_id, name=opts.name or vm_id, image=image_label, image_format=boot.format.value, created=_now(),
        memory=opts.memory or settings.vm.memory, cpus=opts.cpus or settings.vm.cpus, ssh_port=ssh_port,
        ports=[str(p) for p in opts.ports], accel=host.accel.value, auto_remove=opts.auto_remove, image_digest="",
    )  # fmt: skip
    spec = _spec(record, boot, opts, settings, ssh_port, host)
    return hypervisor_argv(spec, host, hypervisor), record

"""`vm.run`: create a VM's record, plan its hypervisor argv, start it (lkctl.runtime.start) and wait or follow.

stop_vm, follow_console, console_tail, ssh_target and exec_in_vm live in their own modules (stop, console, exec)
and are re-exported here, where callers have always found them."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from lkctl import proc
from lkctl.arch import guest_arch
from lkctl.errors import ConfigError, HypervisorFailed, StateError
from lkctl.flags import check_vm_name
from lkctl.runtime import state
from lkctl.runtime.backend import Backend, choose_backend
from lkctl.runtime.console import console_tail, follow_console
from lkctl.runtime.digest import boot_digest
from lkctl.runtime.exec import exec_in_vm, ssh_target
from lkctl.runtime.host import HostCaps
from lkctl.runtime.hyperkit import Hypervisor
from lkctl.runtime.model import BootImage, DataDisk, Network, PortForward, VmSpec, Volume, needs_uefi
from lkctl.runtime.network import check_run_network, network_mode
from lkctl.runtime.ports import check_ports, free_port
from lkctl.runtime.start import save_daemons, start_processes, wait_ready
from lkctl.runtime.state import VmRecord
from lkctl.runtime.stop import kill_helpers, stop_vm, terminate_vm
from lkctl.settings import Settings

__all__ = [
    "LaunchPlan",
    "RunOptions",
    "console_tail",
    "exec_in_vm",
    "follow_console",
    "plan_vm",
    "preflight",
    "resolve_options",
    "run_vm",
    "ssh_target",
    "stop_vm",
]


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
    hostname: str = ""  # the guest's host name (default: the VM's name; see lkctl.runtime.guest)
    env: tuple[tuple[str, str], ...] = ()  # --env NAME=VALUE: the guest's services and vm.exec see it
    network: Network | None = None  # user | restricted | none; None: settings.vm.network
    connect: str = ""  # run through libvirt at this URI (qemu:///system, qemu+ssh://root@host/system)
    host: str = ""  # run through libvirt on this lkctl.hosts entry, or `auto` (most free memory that fits)
    snapshot: bool = False  # -d only: restore from a memory snapshot of the image (lkctl.runtime.snapshot)


@dataclass(frozen=True)
class LaunchPlan:
    """RunOptions with every "0 / None means the default" resolved, once, against settings: what run_vm and
    plan_vm use from here on."""

    memory: int  # MB
    cpus: int
    ready_timeout: float  # seconds a detached run waits for SSH
    network: Network
    backend: Backend  # the hypervisor, chosen (and its binary checked) before anything is created


def resolve_options(opts: RunOptions, settings: Settings) -> LaunchPlan:
    """Resolve `opts` against `settings`; an unusable hypervisor or network choice fails here, in one line."""
    check_run_network(opts, settings)
    return LaunchPlan(
        memory=opts.memory or settings.vm.memory,
        cpus=opts.cpus or settings.vm.cpus,
        ready_timeout=opts.ready_timeout or settings.vm.ready_timeout,
        network=network_mode(opts, settings),
        backend=choose_backend(opts.hypervisor, settings),
    )


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def preflight(opts: RunOptions) -> None:
    """What can be refused before any build or boot: a taken --name, a busy or doubled host port.

    run_vm checks again (under the state lock for the name), since another VM may take either meanwhile.
    """
    if opts.name:
        state.check_name_free(opts.name)
    if opts.ssh_port or opts.ports:
        check_ports(opts.ssh_port, opts.ports)


def _create(
    boot: BootImage, image_label: str, opts: RunOptions, plan: LaunchPlan, host: HostCaps, keys_from: Path | None
) -> VmRecord:
    from lkctl import ssh
    from lkctl.runtime.guest import guest_hostname, write_guest_files

    if opts.name:
        check_vm_name(opts.name)
    with state.vms_lock():
        records = state.listed_records()
        if opts.name:
            state.check_name_free(opts.name, records)
        vm_id = state.new_vm_id({r.id for r in records} | {r.name for r in records})
        record = VmRecord(
            id=vm_id,
            name=opts.name or vm_id,
            image=image_label,
            image_format=boot.format.value,
            created=_now(),
            memory=plan.memory,
            cpus=plan.cpus,
            ssh_port=0,
            ports=[str(p) for p in opts.ports],
            accel=host.accel.value,
            auto_remove=opts.auto_remove,
            image_digest=boot_digest(boot),
            creator=state.creator_identity(),  # `vm.ps`/`vm.prune` leave the record alone while we are alive
        )
        try:
            state.save_record(record)  # reserves the name and id under the lock
        except BaseException:  # a full disk: no VM dir without its record is left
            state.remove_record(record)
            raise
    try:
        with state.state_writes():
            for f in sorted(keys_from.iterdir()) if keys_from else ():
                if f.is_file() and not f.name.startswith("."):
                    shutil.copy2(f, record.dir / f.name)  # generate_keys keeps (and checks) keys that exist
            ssh.generate_keys(record.dir)
            hostname = guest_hostname(opts.hostname, record.name, record.id)
            write_guest_files(record.dir, hostname, dict(opts.env), explicit_hostname=bool(opts.hostname))
    except BaseException:
        state.remove_record(record)
        raise
    return record


def _spec(
    record: VmRecord,
    boot: BootImage,
    opts: RunOptions,
    settings: Settings,
    plan: LaunchPlan,
    ssh_port: int,
    host: HostCaps,
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
            ("ssh/dropbear_ed25519_host_key", Path("dropbear_ed25519_host_key")),  # no dropbearconvert at boot
            *guest_files(bool(opts.hostname), dict(opts.env)),
        ),
        cmdline_extra=settings.vm.cmdline_extra,
        daemonize=opts.detach,
        volumes=opts.volumes,
        data_disk=opts.data_disk,
        virtiofs=opts.virtiofs,
        network=plan.network,
    )
    if needs_uefi(spec, host.arch):
        firmware = find_uefi_firmware(host.arch)
        if firmware is None:
            raise ConfigError(
                f"{boot.path} boots with UEFI but no UEFI firmware was found; install it with: sudo apt-get install "
                + guest_arch(host.arch).firmware_package
            )
        spec = dataclasses.replace(spec, firmware=firmware)
    return spec


def _fast_kernel(boot: BootImage, host: HostCaps, settings: Settings, hypervisor: Hypervisor) -> BootImage:
    """Under QEMU on x86, boot the kernel's uncompressed ELF through PVH when it supports it (2x faster boots)."""
    if not settings.vm.pvh or hypervisor is not Hypervisor.QEMU or not guest_arch(host.arch).pvh or not boot.kernel:
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
    plan: LaunchPlan,
    host: HostCaps,
    say: Callable[[str], None] | None = None,
) -> tuple[VmRecord, subprocess.Popen[bytes] | None]:
    """Plan and start the VM (retrying with another port if an auto-picked SSH port was taken meanwhile)."""
    from lkctl import ssh

    backend = plan.backend
    boot = _fast_kernel(boot, host, settings, backend.hypervisor)
    for attempt in range(3):
        ssh_port = 0 if plan.network is Network.NONE else opts.ssh_port or free_port()
        check_ports(ssh_port, opts.ports)
        spec = _spec(record, boot, opts, settings, plan, ssh_port, host)
        backend.prepare_files(spec, record.dir, host)
        start = backend.start_plan(spec, backend.argv(spec, host))
        with state.state_writes():
            save_daemons(record.dir, start.daemons)  # restarts start the same daemons
            if ssh_port:
                ssh.write_known_hosts(
                    record.dir / "known_hosts", "127.0.0.1", ssh_port, record.dir / "ssh_host_ed25519_key.pub"
                )
        record = dataclasses.replace(record, ssh_port=ssh_port)
        if opts.snapshot and opts.detach and backend.hypervisor == "qemu":  # a warm start, else a cold boot
            from lkctl.runtime import snapshot

            start = dataclasses.replace(start, warm_start=functools.partial(
                snapshot.restore, start.argv, record.dir, timeout=plan.ready_timeout, say=say))  # fmt: skip
        try:
            return start_processes(record, start, after_start=functools.partial(backend.after_start, spec=spec))
        except HypervisorFailed as e:
            ssh_rule = f"tcp:127.0.0.1:{ssh_port}-:22"
            if f"host forwarding rule '{ssh_rule}'" in e.output and not opts.ssh_port and attempt < 2:
                continue  # someone took the free SSH port between our check and QEMU's bind (not another rule)
            raise
    raise AssertionError("unreachable")


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
    keys_from: Path | None = None,
    console: IO[bytes] | None = None,
    on_started: Callable[[VmRecord], None] | None = None,
    on_wait: Callable[[bytes], None] | None = None,
    say: Callable[[str], None] | None = None,
) -> tuple[VmRecord, int]:
    """Boot `boot` as a new VM. Detached: returns once the guest answers SSH (exit status 0). Foreground: streams
    the console to `console` until the VM ends and returns its record and an exit status (0 = clean power-off).

    Any failure leaves no QEMU running: the VM is killed and marked `error` with the reason. `on_started` is called
    once QEMU runs; `on_wait` with the console so far while a detached run waits for SSH (progress for people);
    `say` with one-line notes (a warm start that fell back to a cold boot; without `say`, a logged warning).
    `keys_from`: a directory of SSH keys made before the VM (a template was rendered with them), adopted by it.
    """
    plan = resolve_options(opts, settings)  # before anything is created
    if opts.snapshot:  # refuse what a restored VM could not be, before anything is made
        from lkctl.runtime.snapshot import check_supported

        check_supported(boot, opts, plan.backend.hypervisor, keys_from=keys_from)
    host = plan.backend.probe(settings, boot.kernel)
    if opts.ssh_port or opts.ports:
        check_ports(opts.ssh_port, opts.ports)
    record = _create(boot, image_label, opts, plan, host, keys_from)
    try:
        from lkctl.images import adopt_private_build

        boot = adopt_private_build(boot, keys_from, record.dir)
    except BaseException:
        state.remove_record(record)
        raise
    child: subprocess.Popen[bytes] | None = None
    early: subprocess.Popen[bytes] | None = None
    try:
        with _signals_unwind():
            if opts.snapshot and opts.detach and opts.wait_ssh and plan.backend.hypervisor == "qemu":
                # a restored guest answers a second or two after QEMU starts: the holder's start-up (Python,
                # paramiko: ~0.5 s of CPU) runs while QEMU restores instead of after
                from lkctl.runtime.readiness import spawn_holder

                early = spawn_holder(record.dir, plan.ready_timeout, after_go=True)
            record, child = _launch(record, boot, opts, settings, plan, host, say)
            if on_started is not None:
                on_started(record)
            if opts.detach:
                if opts.wait_ssh:
                    holder, early = early, None  # wait_ready owns it now
                    record = wait_ready(record, plan.ready_timeout, on_wait, holder=holder)
                return record, 0
            assert child is not None
            code = _foreground(record, child, console, settings)
            state.forget_ended(record)  # `--rm`: QEMU has exited
            return record, code
    except BaseException as e:
        with _signals_unwind():  # a second SIGTERM must not interrupt the cleanup
            if early is not None:
                from lkctl.runtime.readiness import abandon_holder

                abandon_holder(early)
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
        terminate_vm(record)
    if child is not None and child.poll() is None:
        proc.shutdown_process(child)
    kill_helpers(record)
    if not record.pid:
        state.remove_record(record)  # never started: leave nothing behind
    else:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        if isinstance(error, KeyboardInterrupt):
            reason = "interrupted while starting"
        state.save_record(dataclasses.replace(record, exit_reason=reason))


def _foreground(record: VmRecord, child: subprocess.Popen[bytes], out: IO[bytes] | None, settings: Settings) -> int:
    """Copy the console to `out` until QEMU exits; Ctrl-C powers the guest off gracefully (status 130), and so does
    the reader of `out` going away (`vm.run ... | head`: 141, as a pipeline member that SIGPIPE ended): an orderly
    end, not a failure of the VM."""
    try:
        for chunk in follow_console(record, from_start=True, alive=lambda: child.poll() is None):
            if out is not None:
                out.write(chunk)
                out.flush()
    except (KeyboardInterrupt, BrokenPipeError) as e:
        stop_vm(record, timeout=settings.vm.stop_timeout)
        child.wait()
        return 130 if isinstance(e, KeyboardInterrupt) else 128 + signal.SIGPIPE
    return child.wait()


def plan_vm(boot: BootImage, image_label: str, opts: RunOptions, settings: Settings) -> tuple[list[str], VmRecord]:
    """What run_vm would start, starting nothing and writing no state (`vm.run --dry-run`).

    The hypervisor argv for a VM with a fresh ID, run from its state directory (relative paths in the argv are
    there), and the record it would have. With no --ssh-port, the port shown is one that is free now.
    """
    plan = resolve_options(opts, settings)
    host = plan.backend.probe(settings, boot.kernel)
    preflight(opts)
    boot = _fast_kernel(boot, host, settings, plan.backend.hypervisor)
    records = state.listed_records()
    vm_id = state.new_vm_id({r.id for r in records} | {r.name for r in records})
    ssh_port = opts.ssh_port or free_port()
    record = VmRecord(
        id=vm_id, name=opts.name or vm_id, image=image_label, image_format=boot.format.value, created=_now(),
        memory=plan.memory, cpus=plan.cpus, ssh_port=ssh_port,
        ports=[str(p) for p in opts.ports], accel=host.accel.value, auto_remove=opts.auto_remove, image_digest="",
    )  # fmt: skip
    spec = _spec(record, boot, opts, settings, plan, ssh_port, host)
    return plan.backend.argv(spec, host), record

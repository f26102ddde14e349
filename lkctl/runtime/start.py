"""The one start path of a VM's processes, for `vm.run` and `vm.restart`/`vm.start` alike.

Helper daemons (a virtiofsd per virtiofs volume, hyperkit's vpnkit) and then the hypervisor are entered on one
`contextlib.ExitStack` (mkosi's `run_qemu` pattern): if any step fails, or the caller is interrupted, everything
started so far is stopped in reverse order; once the VM runs, the stack lets them go (`pop_all`: their
generators are closed, which stops nothing) and the record owns them.
What to start is a `StartPlan`; the virtiofsd part of it is kept in the VM's state dir, so a restart starts the
same daemons again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lkctl import proc
from lkctl.errors import ConfigError, HypervisorFailed, StateError, VmError
from lkctl.fsutil import atomic_write
from lkctl.runtime import state
from lkctl.runtime.console import PANIC_MARKERS, ConsoleView, console_bytes, diagnose_not_ready
from lkctl.runtime.hyperkit import CONSOLE_RING, console_file
from lkctl.runtime.model import VmSpec
from lkctl.runtime.qemu import CONSOLE_LOG, PIDFILE
from lkctl.runtime.state import VmRecord
from lkctl.runtime.stop import terminate_vm

__all__ = [
    "DAEMONS_FILE",
    "Daemon",
    "StartPlan",
    "load_daemons",
    "save_daemons",
    "start_processes",
    "virtiofs_daemons",
    "wait_ready",
]

DAEMONS_FILE = "daemons.json"  # the helper daemons a (re)start of this VM starts before its hypervisor
_PIDFILE_WAIT = 30.0  # seconds a foreground QEMU gets to write its pidfile
_SOCKET_WAIT = 10.0  # seconds a daemon gets to create its socket
# Daemons this process started that outlive their start: kept referenced (a dropped Popen of a live child is a
# ResourceWarning) and polled on each start, which reaps those that have exited in a long-running Python.
_RELEASED: list[subprocess.Popen[bytes]] = []


@dataclass(frozen=True)
class Daemon:
    """A helper process that must run before the hypervisor starts (QEMU connects to its socket at startup)."""

    what: str  # for messages: "virtiofsd for volume /src:/app"
    argv: tuple[str, ...]
    log: str  # its output, a file name in the VM's state dir
    socket: str = ""  # it is up once this file exists in the state dir (removed before it starts)
    # lkctl listens on `socket` itself and hands the daemon the descriptor: "{fd}" in argv becomes its number
    listen: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"what": self.what, "argv": list(self.argv), "log": self.log, "socket": self.socket,
                "listen": self.listen}  # fmt: skip

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Daemon:
        argv = tuple(str(a) for a in data["argv"])
        return cls(str(data["what"]), argv, str(data["log"]), str(data["socket"]), bool(data.get("listen", False)))


@dataclass(frozen=True)
class StartPlan:
    """What starting a VM runs: its daemons, then the hypervisor's argv (QEMU daemonizes itself when the argv has
    `-daemonize`; otherwise the hypervisor runs as our child, in its own session)."""

    argv: tuple[str, ...]
    daemons: tuple[Daemon, ...] = ()
    vpnkit: bool = False  # hyperkit with its own vpnkit (LinuxKit's `--networking vpnkit`); never on Linux
    # a daemonizing QEMU started warm instead (vm.run --snapshot: lkctl.runtime.snapshot.restore): returns what
    # starting QEMU returned, or None when it fell back, and then `argv` boots cold
    warm_start: Callable[[], subprocess.CompletedProcess[bytes] | None] | None = None


def virtiofs_daemons(spec: VmSpec) -> tuple[Daemon, ...]:
    """One virtiofsd per virtiofs volume of `spec`; ConfigError when virtiofsd or root is missing."""
    from lkctl.runtime.disks import find_virtiofsd, virtiofsd_argv
    from lkctl.runtime.model import volume_mounts

    mounts = [m for m in volume_mounts(spec) if m.fstype == "virtiofs"]
    if not mounts:
        return ()
    binary = find_virtiofsd()
    if binary is None:
        raise ConfigError("--virtiofs needs virtiofsd (Debian: sudo apt-get install qemu-system-common or virtiofsd)")
    if os.geteuid() != 0:
        raise ConfigError("--virtiofs needs root (virtiofsd must run as root); without it, volumes use 9p")
    # --fd: lkctl listens on the socket and virtiofsd serves it; QEMU's C virtiofsd would otherwise lock a host-wide
    # pid file named after --socket-path, and every VM's socket is called virtiofs-lkvol0.sock (a second VM failed)
    return tuple(
        Daemon(
            f"virtiofsd for volume {m.volume}",
            tuple(virtiofsd_argv(binary, m, listen_fd="{fd}")),
            f"virtiofsd-{m.tag}.log",
            m.socket,
            listen=True,
        )
        for m in mounts
    )


def save_daemons(vm_dir: Path, daemons: Sequence[Daemon]) -> None:
    """Keep the daemons a VM starts with, for its restarts (0600: the argv names host paths)."""
    atomic_write(vm_dir / DAEMONS_FILE, json.dumps([d.to_json() for d in daemons], indent=1) + "\n", 0o600)


def load_daemons(vm_dir: Path) -> tuple[Daemon, ...]:
    """The daemons the VM was first started with (none if it had none)."""
    try:
        data = json.loads((vm_dir / DAEMONS_FILE).read_text())
        return tuple(Daemon.from_json(d) for d in data)
    except FileNotFoundError:
        return ()
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise StateError(f"{vm_dir / DAEMONS_FILE} is unreadable ({e}); remove the VM and run a new one") from None


@contextlib.contextmanager
def _daemon(vm_dir: Path, daemon: Daemon) -> Iterator[subprocess.Popen[bytes]]:
    """Run `daemon` until its socket exists; stopped again if anything fails before the VM runs."""
    if daemon.socket:
        (vm_dir / daemon.socket).unlink(missing_ok=True)
    if daemon.listen:
        from lkctl.runtime.disks import listen_unix

        with listen_unix(vm_dir / daemon.socket) as listening:
            fd = listening.fileno()
            argv = [a.replace("{fd}", str(fd)) for a in daemon.argv]
            process = proc.spawn(argv, cwd=vm_dir, output=vm_dir / daemon.log, pass_fds=(fd,))
    else:
        process = proc.spawn(daemon.argv, cwd=vm_dir, output=vm_dir / daemon.log)
    try:
        deadline = time.monotonic() + _SOCKET_WAIT
        while daemon.socket and not (vm_dir / daemon.socket).exists():
            if process.poll() is not None or time.monotonic() > deadline:
                raise VmError(f"{daemon.what} did not start; see {vm_dir / daemon.log}")
            time.sleep(0.02)
    except BaseException:
        proc.shutdown_process(process)
        raise
    yield from _held(process)


@contextlib.contextmanager
def _vpnkit(vm_dir: Path) -> Iterator[subprocess.Popen[bytes]]:
    """The hyperkit VM's own vpnkit. NEVER EXECUTED: no vpnkit or hyperkit runs on Linux."""
    from lkctl.runtime.vpnkit import find_vpnkit, start_vpnkit

    yield from _held(start_vpnkit(vm_dir, find_vpnkit(), log=vm_dir / "vpnkit.log"))


def _held(process: subprocess.Popen[bytes]) -> Iterator[subprocess.Popen[bytes]]:
    """A started helper's time on the stack (delegated to with `yield from`): stopped if what follows fails
    before the VM runs; kept running once the stack lets it go (pop_all: the VM runs)."""
    try:
        yield process
    except GeneratorExit:
        _RELEASED.append(process)
        raise
    except BaseException:
        proc.shutdown_process(process)
        raise


@contextlib.contextmanager
def _hypervisor(record: VmRecord, plan: StartPlan) -> Iterator[subprocess.Popen[bytes] | None]:
    """Start the hypervisor; yields its child process (None when QEMU daemonized itself). Killed again if what
    follows fails before the VM runs."""
    child: subprocess.Popen[bytes] | None = None
    if "-daemonize" in plan.argv:
        warm = plan.warm_start() if plan.warm_start is not None else None
        result = warm or proc.run(plan.argv, cwd=record.dir, check=False, timeout=60)
        rc, err = result.returncode, result.stderr.decode(errors="replace").strip()
    else:
        child = proc.spawn(plan.argv, cwd=record.dir, output=record.dir / "qemu.log")
        rc, err = 0, ""
        deadline = time.monotonic() + _PIDFILE_WAIT
        while not state.read_pidfile(record.dir) and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        if child.poll() is not None:
            rc, err = child.returncode, (record.dir / "qemu.log").read_text(errors="replace").strip()
    if rc != 0:
        last = err.splitlines()[-1] if err else f"exit status {rc}"
        raise HypervisorFailed(f"QEMU failed to start VM {record.name}: {last}", err)
    try:
        yield child
    except GeneratorExit:  # the stack let it go (pop_all): the VM runs
        if child is not None:
            _RELEASED.append(child)
        raise
    except BaseException:
        if child is not None:
            proc.shutdown_process(child)
        ident = state.process_identity(state.read_pidfile(record.dir))
        if ident is not None:  # terminate_vm re-checks that it is this VM's QEMU before any signal
            terminate_vm(dataclasses.replace(record, pid=ident.pid, pid_start=ident.start, boot_id=ident.boot_id))
        raise


def _with_helper(record: VmRecord, process: subprocess.Popen[bytes]) -> VmRecord:
    """Record a daemon like QEMU (pid, start time, boot id, command line) so stop/kill/rm and a failed start find
    it; normally it exits by itself when the VM's QEMU goes."""
    argv = [os.fspath(a) for a in process.args] if isinstance(process.args, list | tuple) else [str(process.args)]
    entry = state.helper_entry(process.pid, argv)
    if entry is None:
        return record
    record = dataclasses.replace(record, helpers=[*record.helpers, entry])
    state.save_record(record)
    return record


def start_processes(
    record: VmRecord, plan: StartPlan, *, after_start: Callable[[VmRecord], None] | None = None
) -> tuple[VmRecord, subprocess.Popen[bytes] | None]:
    """Start the plan's daemons, then the hypervisor, and record them; `after_start` (e.g. publishing hyperkit's
    ports) runs while a failure still rolls everything back. Returns the record with the hypervisor's pid and
    the child process when QEMU did not daemonize.

    A failure stops what was started, in reverse order, and raises; `HypervisorFailed.output` has QEMU's output.
    """
    _RELEASED[:] = [p for p in _RELEASED if p.poll() is None]
    # creator: while this process starts it, vm.ps/vm.prune/vm.rm leave the record (pid 0: `created`) alone
    record = dataclasses.replace(record, helpers=[], pid=0, pid_start="", boot_id="", argv=list(plan.argv),
                                 creator=state.creator_identity())  # fmt: skip
    (record.dir / PIDFILE).unlink(missing_ok=True)  # a stale pidfile must not stand for the new QEMU
    state.save_record(record)
    with contextlib.ExitStack() as stack:
        for daemon in plan.daemons:
            record = _with_helper(record, stack.enter_context(_daemon(record.dir, daemon)))
        if plan.vpnkit:
            record = _with_helper(record, stack.enter_context(_vpnkit(record.dir)))
        child = stack.enter_context(_hypervisor(record, plan))
        ident = state.process_identity(state.read_pidfile(record.dir))
        if ident is None:
            raise VmError(f"QEMU for VM {record.name} exited right after starting; see {record.dir / 'qemu.log'}")
        record = dataclasses.replace(record, pid=ident.pid, pid_start=ident.start, boot_id=ident.boot_id)
        state.save_record(record)
        if after_start is not None:
            after_start(record)
        stack.pop_all()  # the VM runs: its processes are the record's now
    return record, child


def wait_ready(
    record: VmRecord,
    timeout: float,
    on_wait: Callable[[bytes], None] | None = None,
    *,
    holder: subprocess.Popen[bytes] | None = None,
) -> VmRecord:
    """Start the VM's connection holder and wait until it holds an SSH connection (see lkctl.runtime.readiness);
    `on_wait` gets the console so far while waiting (progress for people): its first and last 64 KiB once it is
    longer (a ConsoleView: a guest that floods its console is not read whole on every tick).

    `holder`: one started before the VM (readiness.spawn_holder(after_go=True)), told to go on here.
    Returns the record with the holder in its helpers, so stopping the VM stops the holder too."""
    from lkctl.runtime.readiness import wait_for_holder

    view = ConsoleView(record.dir / CONSOLE_LOG)

    def tick() -> None:
        if on_wait is not None:  # hyperkit's console is a 64 KiB ring, read whole
            on_wait(console_bytes(record) if console_file(record.dir).name == CONSOLE_RING else view())

    return wait_for_holder(
        record, timeout, panic_markers=PANIC_MARKERS, diagnose=diagnose_not_ready, on_tick=tick, starter=holder
    )

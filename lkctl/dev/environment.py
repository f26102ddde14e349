"""The project's dev VM: boot (or start again, or anew), stop, status, shell and tests in /app.

One dev VM per project (see project.py), booted detached from the installed dev image with the project shared
read-write at /app, over virtiofs where this host can serve it, else 9p (see share.py; files the guest makes
belong to the host user). A stopped dev VM is started again with its disks, keys, ports and mounts
(`restart_vm`, with its virtiofsd); `fresh` discards it first.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import posixpath
import re
import shlex
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

from lkctl.dev.detect import (
    TEST_YAML,
    DetectedCommand,
    detect_test_command,
    load_test_config,
    missing_test_command_help,
)
from lkctl.dev.image import installed_dev_image
from lkctl.dev.project import GUEST_APP, Project
from lkctl.errors import ConfigError, VmError
from lkctl.runtime import state
from lkctl.runtime.state import VmRecord
from lkctl.settings import Settings

__all__ = [
    "BootOptions",
    "BootResult",
    "DevStatus",
    "boot_dev",
    "dev_status",
    "find_dev_vm",
    "guest_shell_argv",
    "require_running",
    "resolve_test_command",
    "run_tests",
    "shell_dev",
    "stop_dev",
]

# A root shell on the serial console, respawned when it exits, started once per boot: what `dev.shell --console`
# attaches to (it keeps working when SSH does not). It only reaches the host through the VM's console socket,
# which lives in the VM's 0700 state directory. SSH commands run in the dev image's root disk, where there may be
# no setsid: the loop runs in init's root (/proc/1/root) with its busybox, and the shell it starts is chrooted
# into the root disk (init's /sysroot) when the VM has one, so it sees what SSH shells see.
_CONSOLE_LOOP = (
    "echo $$ > /run/lkctl-console.pid; bb=/bin/busybox; "
    "while :; do "
    "if [ -x /sysroot/bin/sh ]; then s=/bin/sh; [ -x /sysroot/bin/bash ] && s=/bin/bash; "
    "$bb setsid -c $bb chroot /sysroot $s -l <>/dev/ttyS0 >&0 2>&1; "
    "else $bb setsid -c $bb sh -l <>/dev/ttyS0 >&0 2>&1; fi; "
    "sleep 1; done"
)
_CONSOLE_SHELL = (
    '[ -s /run/lkctl-console.pid ] && kill -0 "$(cat /run/lkctl-console.pid)" 2>/dev/null && exit 0; '
    "for c in /usr/sbin/chroot /sbin/chroot /usr/bin/chroot /bin/chroot; do [ -x $c ] && break; done; "
    f"$c /proc/1/root /bin/busybox setsid /bin/busybox sh -c {shlex.quote(_CONSOLE_LOOP)} </dev/null >/dev/null 2>&1 &"
)
# What every dev VM's services, `vm.exec` and shells see (fw_cfg /run/config/env): the dev user is root, which
# Composer refuses without this; the image has Go but no C compiler, so cgo is off (`go test` needs none).
DEV_ENV = (("COMPOSER_ALLOW_SUPERUSER", "1"), ("CGO_ENABLED", "0"))


@dataclass(frozen=True)
class BootOptions:
    """`dev.boot`'s options; zero means the `lkctl.dev` setting."""

    memory: int = 0
    cpus: int = 0
    fresh: bool = False
    ready_timeout: float = 0.0


@dataclass(frozen=True)
class BootResult:
    record: VmRecord
    how: str  # "booted" | "started again" | "already running"


@dataclass(frozen=True)
class DevStatus:
    """What `dev.status` reports."""

    project: str
    vm_name: str
    image: str | None  # installed dev image name, None when none is installed
    image_version: str | None
    exists: bool
    running: bool
    status: str  # running | stopped | error | absent
    vm_id: str | None = None
    memory: int | None = None
    cpus: int | None = None
    uptime: float | None = None  # seconds since QEMU started
    ssh_port: int | None = None
    mounted: str | None = None  # `HOST_DIR -> /app (virtiofs|9p)`
    share: str | None = None  # virtiofs | 9p
    forwards: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def find_dev_vm(project: Project) -> VmRecord | None:
    """The project's dev VM record (running or not), or None."""
    return next((r for r in state.all_records() if r.name == project.vm_name), None)


def require_running(project: Project) -> VmRecord:
    record = find_dev_vm(project)
    if record is None or state.vm_status(record) != "running":
        raise VmError(f"the dev VM of {project.root} is not running; start it with dev.boot")
    return record


def _start_console_shell(record: VmRecord) -> None:
    from lkctl import ssh
    from lkctl.runtime.vm import ssh_target

    sink = io.BytesIO()
    ssh.exec_command(ssh_target(record), ["/bin/sh", "-c", _CONSOLE_SHELL], stdout=sink, stderr=sink, timeout=30)


def boot_dev(
    project: Project, settings: Settings, opts: BootOptions, *, say: Callable[[str], None] = lambda _: None
) -> BootResult:
    """Boot the project's dev VM detached and wait until it answers SSH (idempotent: running is fine)."""
    from lkctl.runtime.launch import run_image
    from lkctl.runtime.lifecycle import remove_vm, restart_vm
    from lkctl.runtime.model import Volume
    from lkctl.runtime.vm import RunOptions

    image = installed_dev_image()
    if image is None:  # first use: get it as dev.install would (pulled if a source has it, else built here)
        from lkctl.dev.image import install_dev_image

        say("no dev image installed yet: installing it first (dev.install; a local build takes a minute or two)")
        image = install_dev_image(settings=settings)
    ready_timeout = opts.ready_timeout or settings.vm.ready_timeout
    record = find_dev_vm(project)
    if record is not None and opts.fresh:
        say(f"discarding dev VM {record.name} and its disk (--fresh)")
        remove_vm(record, force=True, stop_timeout=settings.vm.stop_timeout)
        record = None
    if record is not None:
        if state.vm_status(record) == "running":
            return BootResult(record, "already running")
        say(f"starting dev VM {record.name} again (its disk is kept; --fresh starts over)")
        try:  # restart_vm starts the VM's virtiofsd again (/app over virtiofs) before its QEMU
            record = restart_vm(record, stop_timeout=settings.vm.stop_timeout, ready_timeout=ready_timeout)
        except BaseException:
            # a restart that never answered must not leave a QEMU behind (the record may hold its new pid)
            from lkctl.runtime.vm import stop_vm

            again = find_dev_vm(project)
            if again is not None:
                stop_vm(again, timeout=5)
            raise
        how = "started again"
    else:
        from lkctl.dev.share import choose_share

        share = choose_share(settings.dev.share)
        run = RunOptions(
            name=project.vm_name,
            memory=opts.memory or settings.dev.memory,
            cpus=opts.cpus or settings.dev.cpus,
            detach=True,
            ready_timeout=ready_timeout,
            volumes=(Volume(project.root, GUEST_APP),),
            hypervisor=settings.vm.hypervisor,
            env=DEV_ENV,
            virtiofs=share == "virtiofs",
        )
        record, _ = run_image(image.image, run, settings, say=say)
        how = "booted"
    if settings.dev.console_shell:
        try:
            _start_console_shell(record)
        except VmError as e:  # the VM is up and reachable otherwise; only --console lacks its shell
            say(f"no shell on the serial console ({e.message})")
    return BootResult(record, how)


def stop_dev(project: Project, settings: Settings) -> str:
    """Power the project's dev VM off (its disk stays for the next dev.boot). Returns how it ended."""
    from lkctl.runtime.vm import stop_vm

    record = find_dev_vm(project)
    if record is None:
        raise VmError(f"{project.root} has no dev VM (dev.boot makes one)")
    return stop_vm(record, timeout=settings.vm.stop_timeout)


def _uptime(record: VmRecord) -> float | None:
    """Seconds since the VM's QEMU started (Linux: from /proc; elsewhere unknown)."""
    try:
        with open("/proc/uptime") as f:
            since_boot = float(f.read().split()[0])
        started = int(record.pid_start) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError):
        return None
    return max(0.0, round(since_boot - started, 1))


def dev_status(project: Project, settings: Settings) -> DevStatus:
    """The project's dev VM and image, from live facts (process identity, QEMU's own forwarding table)."""
    from lkctl.dev.forward import live_forwards
    from lkctl.dev.share import share_of

    image = installed_dev_image()
    record = find_dev_vm(project)
    base = DevStatus(
        project=str(project.root),
        vm_name=project.vm_name,
        image=image.name if image else None,
        image_version=image.version if image else None,
        exists=False,
        running=False,
        status="absent",
    )
    if record is None:
        return base
    status = state.vm_status(record)
    running = status == "running"
    share = share_of(record)
    forwards = list(record.ports)
    if running:
        with contextlib.suppress(VmError):
            forwards += [str(f) for f in live_forwards(record) if str(f) not in forwards]
    return dataclasses.replace(
        base,
        exists=True,
        running=running,
        status=status,
        vm_id=record.id,
        memory=record.memory,
        cpus=record.cpus,
        uptime=_uptime(record) if running else None,
        ssh_port=record.ssh_port or None,
        mounted=f"{project.root} -> {GUEST_APP}" + (f" ({share})" if share else ""),
        share=share or None,
        forwards=forwards,
    )


def guest_shell_argv(command: str, *, env: Mapping[str, str] | None = None, subdir: str = "") -> list[str]:
    """argv that runs shell `command` in /app[/subdir] in a login shell (the image's profile sets PATH for its
    toolchains), with `env` exported after the profile so nothing there overrides it."""
    parts = []
    for k, v in (env or {}).items():
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k):
            raise ConfigError(f"not a valid environment variable name: {k!r}")
        parts.append(f"export {k}={shlex.quote(v)}")
    parts.append(f"cd -- {shlex.quote(app_path(subdir))}")
    parts.append(command)
    return ["/bin/sh", "-lc", " && ".join(parts)]


def app_path(subdir: str = "") -> str:
    """/app or /app/SUBDIR; SUBDIR must stay inside the project."""
    if not subdir:
        return GUEST_APP
    norm = posixpath.normpath(subdir)
    if posixpath.isabs(norm) or norm == ".." or norm.startswith("../"):
        raise ConfigError(f"--path {subdir}: give a directory inside the project, relative to its root")
    return GUEST_APP if norm == "." else f"{GUEST_APP}/{norm}"


def _is_tty(stream: object) -> bool:
    fileno = getattr(stream, "fileno", None)
    try:
        return fileno is not None and os.isatty(fileno())
    except (OSError, ValueError):
        return False


def shell_dev(
    project: Project,
    argv: Sequence[str] | None,
    *,
    stdin: IO[bytes] | None,
    stdout: IO[bytes],
    stderr: IO[bytes],
) -> int:
    """A login shell in /app on a pseudo-terminal, or `argv` run there; returns the exit status unchanged."""
    from lkctl import ssh
    from lkctl.runtime.vm import ssh_target

    record = require_running(project)
    if argv:
        command = shlex.join(argv)
        tty = _is_tty(stdin) and _is_tty(stdout)
    else:
        command = 'exec "${SHELL:-/bin/sh}" -l'
        tty = True
    return int(
        ssh.exec_command(
            ssh_target(record),
            guest_shell_argv(command),
            stdin=stdin if (tty or not _is_tty(stdin)) else None,
            stdout=stdout,
            stderr=stderr,
            pty=tty,
        )
    )


def resolve_test_command(project: Project, *, name: str = "", argv: Sequence[str] = ()) -> DetectedCommand:
    """What dev.test runs: `argv`, else test.yaml's command `name`, else its `command`, else detection.

    `.lkctl/test.yaml`'s `env` comes with whichever command is chosen."""
    config = load_test_config(project.root)
    env = dict(config.env) if config else {}
    if argv:
        return DetectedCommand(shlex.join(argv), "command line", env)
    if name:
        if config is None:
            raise ConfigError(f"--name {name}: {project.root / TEST_YAML} does not exist (its `commands` name tests)")
        return DetectedCommand(config.named(name), f"{TEST_YAML} commands[{name}]", env)
    if config is not None and config.command:
        return DetectedCommand(config.command, f"{TEST_YAML} command", env)
    detected = detect_test_command(project.root)
    if detected is None:
        raise ConfigError(missing_test_command_help(project.root))
    return DetectedCommand(detected.command, detected.reason, env)


def _via_holder(record: VmRecord, argv: Sequence[str], stdout: IO[bytes], stderr: IO[bytes]) -> int | None:
    """Run argv (no stdin, no pty) through the VM's connection holder, as the lean `vm.exec` does: no new SSH
    handshake. None when the holder cannot take it (or the streams have no descriptors): use SSH then."""
    from lkctl.runtime.holder import HolderUnavailable, exec_via_holder

    try:
        out_fd, err_fd = stdout.fileno(), stderr.fileno()
    except (AttributeError, OSError, ValueError):  # in-memory streams
        return None
    stdout.flush()
    stderr.flush()
    try:
        return exec_via_holder(record, argv, stdin_fd=None, stdout_fd=out_fd, stderr_fd=err_fd)
    except HolderUnavailable:
        return None


def run_tests(
    project: Project,
    *,
    name: str = "",
    argv: Sequence[str] = (),
    stdout: IO[bytes],
    stderr: IO[bytes],
    say: Callable[[str], None] = lambda _: None,
) -> int:
    """Run the project's tests in /app in its dev VM, output streamed; returns their exit status."""
    from lkctl import ssh
    from lkctl.runtime.vm import ssh_target

    test = resolve_test_command(project, name=name, argv=argv)
    record = require_running(project)
    say(f"running {test.command!r} ({test.reason}) in {GUEST_APP}")
    started = time.monotonic()
    argv = guest_shell_argv(test.command, env=test.env)
    code = _via_holder(record, argv, stdout, stderr)
    if code is None:
        code = int(ssh.exec_command(ssh_target(record), argv, stdout=stdout, stderr=stderr))
    say(f"exit status {code} after {time.monotonic() - started:.1f}s")
    return code

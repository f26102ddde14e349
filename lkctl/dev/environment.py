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
import re
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from lkctl.dev.command import (
    app_path,
    find_dev_vm,
    require_running,
    resolve_test_command,
    run_tests,
    shell_dev,
)
from lkctl.dev.gocache import GO_ENV
from lkctl.dev.image import installed_dev_image
from lkctl.dev.project import GUEST_APP, Project, check_shareable
from lkctl.errors import ConfigError, VmError
from lkctl.runtime import state
from lkctl.runtime.state import VmRecord
from lkctl.settings import Settings

# find_dev_vm, require_running, resolve_test_command, run_tests and shell_dev live in lkctl.dev.command (import-light,
# for the lkctl executable's lean path) and are re-exported here
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
DEV_ENV = (("COMPOSER_ALLOW_SUPERUSER", "1"), *GO_ENV)


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


def _start_console_shell(record: VmRecord) -> None:
    from lkctl import ssh
    from lkctl.runtime.vm import ssh_target

    sink = io.BytesIO()
    ssh.exec_command(ssh_target(record), ["/bin/sh", "-c", _CONSOLE_SHELL], stdout=sink, stderr=sink, timeout=30)


def boot_dev(
    project: Project, settings: Settings, opts: BootOptions, *, say: Callable[[str], None] = lambda _: None
) -> BootResult:
    """Boot the project's dev VM detached and wait until it answers SSH (idempotent: running is fine).

    One at a time per project: a second dev.boot (another terminal, dev.claude) waits for the first and then finds
    its VM running, instead of taking the VM being created for a stopped one and failing (or stopping it)."""
    from lkctl import paths
    from lkctl.fsutil import file_lock, private_dir, try_lock

    check_shareable(project)  # before anything is installed, booted or started again with the project shared
    lock = private_dir(private_dir(paths.state_dir()) / "dev") / f"{project.vm_name}.lock"  # both 0700
    lock.touch(mode=0o600, exist_ok=True)  # try_lock counts a missing file as held
    with try_lock(lock) as free:
        if free:
            return _boot_dev_locked(project, settings, opts, say)
    say(f"another dev.boot of {project.root} is under way; waiting for it")
    with file_lock(lock):
        return _boot_dev_locked(project, settings, opts, say)


def _boot_dev_locked(project: Project, settings: Settings, opts: BootOptions, say: Callable[[str], None]) -> BootResult:
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

        share = choose_share(settings.dev.share, project.root)
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
        with open("/proc/uptime", encoding="utf-8") as f:
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
    toolchains), with `env` exported after the profile so nothing there overrides it. `dev.claude` runs the
    agent this way (an interactive session); tests, `dev.shell -- CMD` and the server use lkctl.dev.command."""
    parts = []
    for k, v in (env or {}).items():
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k):
            raise ConfigError(f"not a valid environment variable name: {k!r}")
        parts.append(f"export {k}={shlex.quote(v)}")
    parts.append(f"cd -- {shlex.quote(app_path(subdir))}")
    parts.append(command)
    return ["/bin/sh", "-lc", " && ".join(parts)]

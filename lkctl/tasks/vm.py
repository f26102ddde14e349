"""vm.*: run, ps, stop, rm, logs, exec."""

from __future__ import annotations

import json as _json
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from invoke.collection import Collection
from invoke.context import Context
from invoke.exceptions import Exit

from lkctl.errors import ConfigError
from lkctl.tasks._adapter import adapt, parse_vars, remainder_argv, settings_from, size_sources, task
from lkctl.tasks._format import plan_line, ps_table, running_line, stats_table

if TYPE_CHECKING:
    from lkctl.api import Vm
    from lkctl.runtime.state import VmRecord
    from lkctl.runtime.vm import RunOptions
    from lkctl.settings import Settings

__all__ = [
    "cp",
    "exec_",
    "export",
    "inspect",
    "kill",
    "logs",
    "prune",
    "ps",
    "restart",
    "rm",
    "run",
    "shell",
    "ssh_config",
    "start",
    "stats",
    "stop",
    "wait",
]


def _err(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@task(
    iterable=["port", "var", "volume", "env"],
    short={"tty": "t", "env": "e", "volume": "v", "port": "p"},
    help={
        "image": "template name (e.g. minimal), installed image name, LinuxKit YAML file or image path",
        "name": "name for the VM (default: its 8-hex ID)",
        "detach": "run in the background and return once the guest answers SSH",
        "tty": "accepted for Docker habit (-it): the foreground console streams to your terminal either way",
        "env": "NAME=VALUE in the guest's environment: its services and vm.exec/vm.shell see it (repeatable)",
        "hostname": "the guest's host name (default: the image's /etc/hostname, else the VM's name)",
        "memory": "guest memory in MB (default: LKCTL_VM_MEMORY or config, else the template's `# lkctl:`, else 1024)",
        "cpus": "guest CPUs (default: LKCTL_VM_CPUS or config, else the template's `# lkctl:` line, else 1)",
        "ssh-port": "host port for the guest's SSH on 127.0.0.1 (default: a free one)",
        "port": "forward [HOST_IP:]HOST:GUEST[/udp] (repeatable; binds 127.0.0.1 unless an IP is given)",
        "template": "same as --image for a template name",
        "var": "template variable NAME=VALUE (repeatable)",
        "timeout": "seconds to wait for the guest to answer SSH (default 180)",
        "rm": "forget the VM (state, keys, logs) once it stops",
        "wait": "with -d, wait until the guest answers SSH (--no-wait returns once QEMU runs)",
        "volume": "share HOST_DIR:GUEST_PATH[:ro] with the guest over 9p (repeatable)",
        "disk": "attach a persistent data disk of this size (e.g. 10G), kept until vm.rm",
        "uefi": "boot with UEFI firmware (default: decided from the image)",
        "hypervisor": "auto, qemu or hyperkit (macOS on Intel)",
        "env-vars": "also take template variables from the environment (NAME, or lkctl.templates.env_prefix+NAME)",
        "virtiofs": "share read-write volumes over virtiofs (faster; needs root and virtiofsd) instead of 9p",
        "dry-run": "print the hypervisor command line and the VM it would create, start nothing (builds still run)",
        "network": "user (default: outside and host loopback via 10.0.2.2), restricted (only lkctl's forwards) or none",
        "connect": "run through libvirt at this URI (qemu:///system, qemu+ssh://root@HOST/system)",
        "host": "run through libvirt on this lkctl.hosts entry, or auto (the most free memory that fits)",
        "snapshot": "with -d: restore from a memory snapshot of the image (taken on first use) with this VM's identity",
    },
)
@adapt
def run(
    c: Context,
    image: str = "",
    name: str = "",
    detach: bool = False,
    tty: bool = False,  # first of its letter: -t, as docker run -t (then -e, -v, -p below)
    env: list[str] | None = None,
    volume: list[str] | None = None,
    port: list[str] | None = None,
    memory: str = "",
    cpus: str = "",
    ssh_port: str = "",
    template: str = "",
    var: list[str] | None = None,
    timeout: str = "",
    rm: bool = False,
    wait: bool = True,
    disk: str = "",
    uefi: bool = False,
    hypervisor: str = "",
    env_vars: bool = False,
    virtiofs: bool = False,
    dry_run: bool = False,
    hostname: str = "",
    network: str = "",
    connect: str = "",
    host: str = "",
    snapshot: bool = False,
) -> Vm | None:
    """Boot an image as a new VM (foreground, or detached with -d; returns the Vm to Python callers)."""
    from lkctl.api import Vm
    from lkctl.runtime.launch import run_image, run_options

    if template and image and template != image:
        raise ConfigError("give either --image or --template, not both")
    settings = settings_from(c)
    # flag > environment > config files > the template's `# lkctl:` sizing > defaults
    sources = size_sources(c, memory=memory, cpus=cpus)
    opts = run_options(
        settings,
        sources,
        name=name,
        memory=memory,
        cpus=cpus,
        ssh_port=ssh_port,
        ports=port or [],
        detach=detach,
        timeout=timeout,
        rm=rm,
        wait=wait,
        volumes=volume or [],
        disk=disk,
        uefi=uefi,
        hypervisor=hypervisor,
        virtiofs=virtiofs,
        hostname=hostname,
        env=parse_vars(env, flag="--env"),
        network=network,
        connect=connect,
        host=host,
        snapshot=snapshot,
    )
    if dry_run:
        _print_plan(template or image, opts, settings, parse_vars(var), env_vars)
        return None
    record, code = run_image(
        template or image, opts, settings, variables=parse_vars(var), use_env=env_vars,
        console=sys.stdout.buffer, say=lambda msg: _err(f"lkctl: {msg}"), size_sources=sources,
        progress=sys.stderr,
    )  # fmt: skip
    if detach:
        print(record.id)
        _err(running_line(record))
        return Vm(record, settings)
    if code:
        raise Exit(f"lkctl: VM {record.name} ended with status {code}", code=code)
    return None


def _print_plan(what: str, opts: RunOptions, settings: Settings, variables: dict[str, str], use_env: bool) -> None:
    import shlex

    from lkctl.runtime.launch import plan_image

    plan = plan_image(what, opts, settings, variables=variables, use_env=use_env)
    print(shlex.join(plan.argv))
    _err(plan_line(plan))


@task(
    iterable=["filter"],
    help={
        "all": "include stopped VMs",
        "json": "print JSON (same as --format json)",
        "quiet": "print only the IDs",
        "filter": "KEY=VALUE with KEY id, name, image or status (e.g. status=running,name=web; repeatable)",
        "format": "table (default) or json",
        "host": "only this host's VMs (local or a name)",
    },
)
@adapt
def ps(
    c: Context,
    all: bool = False,
    json: bool = False,
    quiet: bool = False,
    filter: list[str] | None = None,
    format: str = "table",
    host: str = "",
) -> None:
    """List VMs (running ones unless --all or a status filter), here and on every libvirt host."""
    from lkctl.runtime.launch import list_all_vms
    from lkctl.runtime.watch import filter_rows, parse_filters

    if format not in ("table", "json"):
        raise ConfigError(f"--format {format!r}: use table or json")
    filters = parse_filters(filter or [])
    found, problems = list_all_vms(settings_from(c), include_stopped=all or "status" in filters, host=host)
    for line in problems:
        _err(f"lkctl: {line}")
    rows = [row.to_json() for row in found]
    if filters:
        rows = [dict(r) for r in filter_rows(rows, filters)]
    if quiet:
        if rows:
            print("\n".join(r["id"] for r in rows))
        return
    if json or format == "json":
        print(_json.dumps(rows, indent=2))
        return
    if not rows:
        _err("no VMs" if all or filters else "no running VMs (vm.ps --all shows stopped ones)")
        return
    print(ps_table(rows))


def _targets(c: Context, vm: str | Sequence[str] | Vm, *, unknown: bool = False) -> list[VmRecord]:
    """The VMs a task names: VM, comma-separated VMs, or more after `--` (`vm.stop a -- b c`); from Python a
    list of names or a Vm works too. All are looked up before any is acted on."""
    from lkctl.api import Vm
    from lkctl.runtime.control import find_vms

    words = [vm.id] if isinstance(vm, Vm) else [vm] if isinstance(vm, str) else list(vm)
    return find_vms([*words, *remainder_argv(c)], unknown=unknown)


def _each(records: Sequence[VmRecord], action: Callable[[VmRecord], None]) -> None:
    from lkctl.runtime.control import for_each_vm

    for_each_vm(records, action, say=lambda msg: _err(f"lkctl: {msg}"))


_VMS_HELP = "VM ID, name or unique ID prefix; several: a,b or VM -- MORE..."


@task(help={"vm": _VMS_HELP, "timeout": "seconds to wait for ACPI power-off (default 30)"})
@adapt
def stop(c: Context, vm: str, timeout: str = "") -> None:
    """Stop VMs: ACPI power-off, then SIGTERM, then SIGKILL (vm.stop a,b or vm.stop a -- b c)."""
    from lkctl.flags import parse_timeout
    from lkctl.runtime.control import stop_and_forget

    stop_timeout = (parse_timeout(timeout) if timeout else 0.0) or settings_from(c).vm.stop_timeout

    def one(record: VmRecord) -> None:
        how, removed = stop_and_forget(record, timeout=stop_timeout)
        _err(f"lkctl: {record.name} {how}")
        if removed:
            _err(f"lkctl: removed {record.name} (it was started with --rm)")

    _each(_targets(c, vm), one)


@task(help={"vm": _VMS_HELP, "force": "stop them first if they are running"})
@adapt
def rm(c: Context, vm: str, force: bool = False) -> None:
    """Remove stopped VMs and their state (keys, console log, disks)."""
    from lkctl.runtime.lifecycle import remove_vm

    stop_timeout = settings_from(c).vm.stop_timeout

    def one(record: VmRecord) -> None:
        remove_vm(record, force=force, stop_timeout=stop_timeout)
        _err(f"lkctl: removed {record.name}")

    _each(_targets(c, vm, unknown=True), one)


@task
@adapt
def prune(c: Context) -> None:
    """Remove every VM that is not running, with its state."""
    from lkctl.runtime.lifecycle import prune_vms

    removed = prune_vms()
    _err(f"lkctl: removed {len(removed)} VM(s)" + (": " + ", ".join(r.name for r in removed) if removed else ""))


@task(help={"vm": _VMS_HELP, "signal": "signal name (default KILL)"})
@adapt
def kill(c: Context, vm: str, signal: str = "KILL") -> None:
    """Send a signal to VMs' QEMU (SIGKILL by default): no guest shutdown."""
    from lkctl.flags import parse_signal
    from lkctl.runtime.lifecycle import kill_vm

    sig = parse_signal(signal)

    def one(record: VmRecord) -> None:
        if not kill_vm(record, sig):
            raise ConfigError(f"VM {record.name} is not running")
        _err(f"lkctl: sent {sig.name} to {record.name}")

    _each(_targets(c, vm), one)


@task(help={"vm": "VM ID, name or unique ID prefix", "timeout": "seconds to wait for SSH after the reboot"})
@adapt
def restart(c: Context, vm: str, timeout: str = "") -> None:
    """Power a VM off and boot it again (same name, keys, ports)."""
    from lkctl.flags import parse_timeout
    from lkctl.runtime.lifecycle import restart_vm
    from lkctl.runtime.state import find_vm

    settings = settings_from(c)
    seconds = parse_timeout(timeout) if timeout else 0.0
    record = restart_vm(
        find_vm(vm), stop_timeout=settings.vm.stop_timeout, ready_timeout=seconds or settings.vm.ready_timeout
    )
    _err(f"lkctl: {record.name} restarted")


@task(help={"vm": _VMS_HELP})
@adapt
def inspect(c: Context, vm: str) -> None:
    """Everything lkctl knows about VMs, as JSON (argv, ports, keys' paths, image digest...); several: a list."""
    from lkctl.runtime.lifecycle import inspect_vm

    records = _targets(c, vm, unknown=True)
    docs = [inspect_vm(r).to_json() for r in records]
    print(_json.dumps(docs[0] if len(docs) == 1 and isinstance(vm, str) and "," not in vm else docs, indent=2))


@task(help={"src": "source: a host path or VM:PATH", "dst": "destination: a host path or VM:PATH"})
@adapt
def cp(c: Context, src: str, dst: str) -> None:
    """Copy files or directory trees between the host and a VM (over SSH; modes kept)."""
    from lkctl.runtime.lifecycle import copy_path

    _err(f"lkctl: copied {copy_path(src, dst)}")


@task(help={"vm": "VM ID, name or unique ID prefix"})
@adapt(failure_code=125)
def shell(c: Context, vm: str) -> None:
    """Open an interactive shell in a VM (over SSH, on a pseudo-terminal)."""
    from lkctl.runtime.lifecycle import shell_in_vm
    from lkctl.runtime.state import find_vm

    code = shell_in_vm(find_vm(vm), sys.stdin.buffer, sys.stdout.buffer, sys.stderr.buffer)
    if code:
        raise Exit(code=code)


@task(
    help={
        "vm": "VM ID, name or unique ID prefix",
        "follow": "keep printing until the VM stops",
        "tail": "only the last N lines (default: all)",
        "since": "only lines since a duration ago (10m, 1h30m) or a time (2026-01-31T12:00, Unix seconds)",
        "timestamps": "prefix each line with its time (kernel-stamped or arrival time; `~` = carried over)",
    }
)
@adapt
def logs(
    c: Context, vm: str, follow: bool = False, tail: str = "all", since: str = "", timestamps: bool = False
) -> None:
    """Print a VM's console output (--tail N, --since 10m, --timestamps, --follow)."""
    from lkctl.flags import parse_tail
    from lkctl.runtime.state import find_vm
    from lkctl.runtime.watch import parse_since, read_console

    lines = parse_tail(tail)
    record = find_vm(vm)
    out = sys.stdout.buffer
    for line in read_console(record, tail=lines, since=parse_since(since) if since else None, follow=follow):
        out.write(line.render(timestamps))
        out.flush()


@task(
    name="exec",
    iterable=["env", "cmd"],
    help={
        "vm": "VM ID, name or unique ID prefix; the command follows --",
        "cmd": "the command as words (from Python: vm.exec(c, vm, cmd=[...]), instead of `-- CMD...`)",
        "tty": "allocate a pseudo-terminal (for interactive programs)",
        "env": "set NAME=VALUE in the command's environment (repeatable)",
        "workdir": "run the command in this guest directory",
    },
)
@adapt(failure_code=125)
def exec_(
    c: Context,
    vm: str | Vm,
    tty: bool = False,
    env: list[str] | None = None,
    workdir: str = "",
    cmd: list[str] | None = None,
) -> None:
    """Run a command in a VM over SSH: vm.exec NAME -- CMD ARGS... (exit code passes through)."""
    from lkctl.api import Vm
    from lkctl.runtime.state import find_vm
    from lkctl.runtime.vm import exec_in_vm

    argv = list(cmd) if cmd else remainder_argv(c)
    if not argv:
        raise ConfigError("no command given: vm.exec NAME -- COMMAND [ARGS...]")
    environment = parse_vars(env, flag="--env")
    record = find_vm(vm.id if isinstance(vm, Vm) else vm)
    # called from Python with cmd=[...]: no stdin (the caller's stdin is not the command's)
    stdin = None if cmd else sys.stdin.buffer if (tty or not sys.stdin.isatty()) else None
    code = exec_in_vm(
        record, argv, stdin=stdin, stdout=sys.stdout.buffer, stderr=sys.stderr.buffer,
        tty=tty, env=environment or None, workdir=workdir or None,
    )  # fmt: skip
    if code:
        raise Exit(code=code)


@task(help={"vm": _VMS_HELP, "timeout": "seconds to wait for SSH after the boot (default 180)"})
@adapt
def start(c: Context, vm: str, timeout: str | float = "") -> None:
    """Boot stopped VMs again (same name, keys, ports, volumes, disks, environment)."""
    from lkctl.flags import parse_timeout
    from lkctl.runtime.control import start_vm

    ready = (parse_timeout(timeout) if timeout else 0.0) or settings_from(c).vm.ready_timeout

    def one(record: VmRecord) -> None:
        start_vm(record, ready_timeout=ready)
        _err(f"lkctl: {record.name} started")

    _each(_targets(c, vm), one)


@task(help={"vm": "VM ID, name or unique ID prefix", "timeout": "give up after this many seconds (default: never)"})
@adapt
def wait(c: Context, vm: str, timeout: str | float = "") -> int:
    """Block until a VM stops; print and exit with its status (0 = clean power-off, 137 = killed/crashed)."""
    from lkctl.flags import parse_timeout
    from lkctl.runtime.state import find_vm
    from lkctl.runtime.watch import wait_vm

    seconds = parse_timeout(timeout) if timeout else 0.0
    status = wait_vm(find_vm(vm), timeout=seconds or None)
    print(status)
    if status:
        raise Exit(code=status)
    return status


@task(help={"vm": "VM ID, name or unique ID prefix", "json": "print JSON"})
@adapt
def stats(c: Context, vm: str, json: bool = False) -> None:
    """CPU, memory and uptime of a running VM (QMP and its QEMU's /proc)."""
    from lkctl.runtime.state import find_vm
    from lkctl.runtime.watch import vm_stats

    s = vm_stats(find_vm(vm))
    if json:
        print(_json.dumps(s, indent=2))
        return
    print(stats_table(s))


@task(help={"vm": "VM ID, name or unique ID prefix", "host": "the Host alias to write (default: the VM's name)"})
@adapt
def ssh_config(c: Context, vm: str, host: str = "") -> None:
    """Print an OpenSSH Host block for the VM (pinned key): lkctl vm.ssh-config NAME >> ~/.ssh/config."""
    from lkctl.runtime.control import ssh_config as host_block
    from lkctl.runtime.state import find_vm

    print(host_block(find_vm(vm), host=host), end="")


@task(help={"vm": "VM ID, name or unique ID prefix", "format": "libvirt: the domain XML (virsh define accepts it)"})
@adapt
def export(c: Context, vm: str, format: str = "libvirt") -> None:
    """Print a VM's definition for another tool (--format libvirt: its libvirt domain XML)."""
    from lkctl.runtime.state import find_vm

    if format != "libvirt":
        raise ConfigError(f"--format {format}: lkctl exports libvirt domain XML (--format libvirt)")
    record = find_vm(vm)
    if not record.libvirt:
        raise ConfigError(f"VM {record.name} runs under QEMU directly, not libvirt: run it with --connect or --host")
    from lkctl.runtime.libvirt.vms import export_domain_xml

    print(export_domain_xml(record), end="")


ns = Collection(
    "vm",
    run,
    ps,
    stop,
    rm,
    logs,
    exec_,
    shell,
    cp,
    inspect,
    kill,
    restart,
    prune,
    start,
    wait,
    stats,
    ssh_config,
    export,
)

"""vm.*: run, ps, stop, rm, logs, exec."""

from __future__ import annotations

import json as _json
import sys

from invoke.collection import Collection
from invoke.context import Context
from invoke.exceptions import Exit
from invoke.tasks import task

from lkctl.errors import ConfigError
from lkctl.tasks._adapter import adapt, parse_vars, remainder_argv, settings_from
from lkctl.tasks._format import age, table

__all__ = ["cp", "exec_", "inspect", "kill", "logs", "prune", "ps", "restart", "rm", "run", "shell", "stop"]


def _err(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@task(
    iterable=["port", "var", "volume"],
    help={
        "image": "template name (e.g. minimal), installed image name, LinuxKit YAML file or image path",
        "name": "name for the VM (default: its 8-hex ID)",
        "detach": "run in the background and return once the guest answers SSH",
        "memory": "guest memory in MB (default: what the template says, else lkctl.vm.memory, 1024)",
        "cpus": "guest CPUs (default: what the template says, else lkctl.vm.cpus, 1)",
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
    },
)
@adapt
def run(
    c: Context,
    image: str = "",
    name: str = "",
    detach: bool = False,
    memory: str = "",
    cpus: str = "",
    ssh_port: str = "",
    port: list[str] | None = None,
    template: str = "",
    var: list[str] | None = None,
    timeout: str = "",
    rm: bool = False,
    wait: bool = True,
    volume: list[str] | None = None,
    disk: str = "",
    uefi: bool = False,
    hypervisor: str = "",
    env_vars: bool = False,
    virtiofs: bool = False,
) -> None:
    """Boot an image as a new VM (foreground, or detached with -d)."""
    from lkctl.flags import check_vm_name, parse_count, parse_memory, parse_port_number, parse_timeout
    from lkctl.runtime.disks import parse_data_disk
    from lkctl.runtime.launch import run_image
    from lkctl.runtime.qemu import parse_port, parse_volume
    from lkctl.runtime.vm import RunOptions

    if template and image and template != image:
        raise ConfigError("give either --image or --template, not both")
    settings = settings_from(c)
    opts = RunOptions(
        name=check_vm_name(name) if name else "",
        memory=parse_memory(memory) if memory else 0,
        cpus=parse_count(cpus, what="--cpus") if cpus else 0,
        ssh_port=parse_port_number(ssh_port, what="--ssh-port") if ssh_port else 0,
        ports=tuple(parse_port(p) for p in port or []),
        detach=detach,
        ready_timeout=parse_timeout(timeout) if timeout else 0.0,
        auto_remove=rm,
        wait_ssh=wait,
        volumes=tuple(parse_volume(v) for v in volume or []),
        data_disk=parse_data_disk(disk) if disk else None,
        uefi=True if uefi else None,
        hypervisor=hypervisor or settings.vm.hypervisor,
        virtiofs=virtiofs or settings.vm.virtiofs,
    )
    record, code = run_image(
        template or image, opts, settings, variables=parse_vars(var), use_env=env_vars,
        console=sys.stdout.buffer, say=lambda msg: _err(f"lkctl: {msg}"),
    )  # fmt: skip
    if detach:
        print(record.id)
        _err(
            f"lkctl: VM {record.name} ({record.id}) is running; ssh on 127.0.0.1:{record.ssh_port}. "
            f"Try: vm.exec {record.name} -- uname -a   Stop: vm.stop {record.name}"
        )
        return
    if code:
        raise Exit(f"lkctl: VM {record.name} ended with status {code}", code=code)


@task(help={"all": "include stopped VMs", "json": "print JSON"})
@adapt
def ps(c: Context, all: bool = False, json: bool = False) -> None:
    """List VMs (running ones unless --all)."""
    from lkctl.runtime.launch import list_vms

    rows = list_vms(include_stopped=all)
    if json:
        print(_json.dumps(rows, indent=2))
        return
    if not rows:
        _err("no VMs" if all else "no running VMs (vm.ps --all shows stopped ones)")
        return
    body = [
        [
            r["id"],
            r["name"],
            r["image"] if len(r["image"]) <= 30 else "…" + r["image"][-29:],
            r["status"],
            age(r["created"]),
            f"127.0.0.1:{r['ssh_port']}" if r["ssh_port"] else "-",
            ",".join(r["ports"]) or "-",
        ]
        for r in rows
    ]
    print(table(["ID", "NAME", "IMAGE", "STATUS", "CREATED", "SSH", "PORTS"], body))


@task(help={"vm": "VM ID, name or unique ID prefix", "timeout": "seconds to wait for ACPI power-off (default 30)"})
@adapt
def stop(c: Context, vm: str, timeout: str = "") -> None:
    """Stop a VM: ACPI power-off, then SIGTERM, then SIGKILL."""
    from lkctl.flags import parse_timeout
    from lkctl.runtime.state import find_vm
    from lkctl.runtime.vm import stop_vm

    seconds = parse_timeout(timeout) if timeout else 0.0
    record = find_vm(vm)
    how = stop_vm(record, timeout=seconds or settings_from(c).vm.stop_timeout)
    _err(f"lkctl: {record.name} {how}")
    if record.auto_remove:
        from lkctl.runtime.lifecycle import remove_vm

        remove_vm(record)
        _err(f"lkctl: removed {record.name} (it was started with --rm)")


@task(help={"vm": "VM ID, name or unique ID prefix", "force": "stop it first if it is running"})
@adapt
def rm(c: Context, vm: str, force: bool = False) -> None:
    """Remove a stopped VM and its state (keys, console log)."""
    from lkctl.runtime.lifecycle import remove_vm
    from lkctl.runtime.state import find_vm

    record = find_vm(vm, unknown=True)
    remove_vm(record, force=force, stop_timeout=settings_from(c).vm.stop_timeout)
    _err(f"lkctl: removed {record.name}")


@task
@adapt
def prune(c: Context) -> None:
    """Remove every VM that is not running, with its state."""
    from lkctl.runtime.lifecycle import prune_vms

    removed = prune_vms()
    _err(f"lkctl: removed {len(removed)} VM(s)" + (": " + ", ".join(r.name for r in removed) if removed else ""))


@task(help={"vm": "VM ID, name or unique ID prefix", "signal": "signal name (default KILL)"})
@adapt
def kill(c: Context, vm: str, signal: str = "KILL") -> None:
    """Send a signal to a VM's QEMU (SIGKILL by default): no guest shutdown."""
    import signal as _signal

    from lkctl.runtime.lifecycle import kill_vm
    from lkctl.runtime.state import find_vm

    name = signal.upper().removeprefix("SIG")
    try:
        sig = _signal.Signals[f"SIG{name}"]
    except KeyError:
        raise ConfigError(f"unknown signal {signal!r} (e.g. KILL, TERM, INT)") from None
    record = find_vm(vm)
    if not kill_vm(record, sig):
        raise ConfigError(f"VM {record.name} is not running")
    _err(f"lkctl: sent SIG{name} to {record.name}")


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


@task(help={"vm": "VM ID, name or unique ID prefix"})
@adapt
def inspect(c: Context, vm: str) -> None:
    """Everything lkctl knows about a VM, as JSON (argv, ports, keys' paths, image digest...)."""
    from lkctl.runtime.lifecycle import inspect_vm
    from lkctl.runtime.state import find_vm

    print(_json.dumps(inspect_vm(find_vm(vm, unknown=True)), indent=2))


@task(help={"src": "source: a host path or VM:PATH", "dst": "destination: a host path or VM:PATH"})
@adapt
def cp(c: Context, src: str, dst: str) -> None:
    """Copy files or directory trees between the host and a VM (over SSH; modes kept)."""
    from lkctl.runtime.lifecycle import copy_path

    _err(f"lkctl: copied {copy_path(src, dst)}")


@task(help={"vm": "VM ID, name or unique ID prefix"})
@adapt
def shell(c: Context, vm: str) -> None:
    """Open an interactive shell in a VM (over SSH, on a pseudo-terminal)."""
    from lkctl.runtime.lifecycle import shell_in_vm
    from lkctl.runtime.state import find_vm

    code = shell_in_vm(find_vm(vm), sys.stdin.buffer, sys.stdout.buffer, sys.stderr.buffer)
    if code:
        raise Exit(code=code)


@task(help={"vm": "VM ID, name or unique ID prefix", "follow": "keep printing until the VM stops"})
@adapt
def logs(c: Context, vm: str, follow: bool = False) -> None:
    """Print a VM's console output."""
    from lkctl.runtime.state import find_vm
    from lkctl.runtime.vm import follow_console

    record = find_vm(vm)
    out = sys.stdout.buffer
    alive = None if follow else (lambda: False)
    for chunk in follow_console(record, alive=alive):
        out.write(chunk)
        out.flush()


@task(
    name="exec",
    iterable=["env"],
    help={
        "vm": "VM ID, name or unique ID prefix; the command follows --",
        "tty": "allocate a pseudo-terminal (for interactive programs)",
        "env": "set NAME=VALUE in the command's environment (repeatable)",
        "workdir": "run the command in this guest directory",
    },
)
@adapt
def exec_(c: Context, vm: str, tty: bool = False, env: list[str] | None = None, workdir: str = "") -> None:
    """Run a command in a VM over SSH: vm.exec NAME -- CMD ARGS... (exit code passes through)."""
    from lkctl.runtime.state import find_vm
    from lkctl.runtime.vm import exec_in_vm

    argv = remainder_argv(c)
    if not argv:
        raise ConfigError("no command given: vm.exec NAME -- COMMAND [ARGS...]")
    environment = {}
    for item in env or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--env {item!r}: expected NAME=VALUE")
        environment[key] = value
    record = find_vm(vm)
    stdin = sys.stdin.buffer if (tty or not sys.stdin.isatty()) else None
    code = exec_in_vm(
        record, argv, stdin=stdin, stdout=sys.stdout.buffer, stderr=sys.stderr.buffer,
        tty=tty, env=environment or None, workdir=workdir or None,
    )  # fmt: skip
    if code:
        raise Exit(code=code)


ns = Collection("vm", run, ps, stop, rm, logs, exec_, shell, cp, inspect, kill, restart, prune)

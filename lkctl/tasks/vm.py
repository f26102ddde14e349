"""vm.*: run, ps, stop, rm, logs, exec."""

from __future__ import annotations

import json as _json
import sys
from typing import Any

from invoke.collection import Collection
from invoke.context import Context
from invoke.exceptions import Exit
from invoke.tasks import task

from lkctl.errors import ConfigError
from lkctl.tasks._adapter import adapt, parse_vars, remainder_argv, settings_from
from lkctl.tasks._format import age, table

__all__ = ["exec_", "logs", "ps", "rm", "run", "stop"]


def _err(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@task(
    iterable=["port", "var"],
    help={
        "image": "template name (e.g. minimal), installed image name, LinuxKit YAML file or image path",
        "name": "name for the VM (default: its 8-hex ID)",
        "detach": "run in the background and return once the guest answers SSH",
        "memory": "guest memory in MB (default 1024)",
        "cpus": "guest CPUs (default 1)",
        "ssh-port": "host port for the guest's SSH on 127.0.0.1 (default: a free one)",
        "port": "forward [HOST_IP:]HOST:GUEST[/udp] (repeatable; binds 127.0.0.1 unless an IP is given)",
        "template": "same as --image for a template name",
        "var": "template variable NAME=VALUE (repeatable)",
        "timeout": "seconds to wait for the guest to answer SSH (default 180)",
    },
)
@adapt
def run(
    c: Context,
    image: str = "",
    name: str = "",
    detach: bool = False,
    memory: int = 0,
    cpus: int = 0,
    ssh_port: int = 0,
    port: list[str] | None = None,
    template: str = "",
    var: list[str] | None = None,
    timeout: int = 0,
) -> None:
    """Boot an image as a new VM (foreground, or detached with -d)."""
    from lkctl.images import resolve_image
    from lkctl.runtime.host import require_qemu
    from lkctl.runtime.qemu import parse_port
    from lkctl.runtime.vm import RunOptions, run_vm

    if template and image and template != image:
        raise ConfigError("give either --image or --template, not both")
    settings = settings_from(c)
    require_qemu(settings.vm.qemu)  # fail before a slow build, not after
    opts = RunOptions(
        name=name,
        memory=memory,
        cpus=cpus,
        ssh_port=ssh_port,
        ports=tuple(parse_port(p) for p in port or []),
        detach=detach,
        ready_timeout=float(timeout),
    )
    what = template or image
    _err(f"lkctl: resolving image {what!r}")
    resolved = resolve_image(what, parse_vars(var))
    if resolved.built:
        _err(f"lkctl: built {resolved.boot.path}")
    _err("lkctl: booting" + (" and waiting for SSH" if detach else ""))
    record, code = run_vm(resolved.boot, resolved.label, opts, settings, console=sys.stdout.buffer)
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
    from lkctl.runtime import state

    rows: list[dict[str, Any]] = []
    for r in state.all_records():
        status = state.vm_status(r)
        if not all and status != "running":
            continue
        rows.append(
            {
                "id": r.id,
                "name": r.name,
                "image": r.image,
                "status": status,
                "created": r.created,
                "pid": r.pid if status == "running" else None,
                "ssh_port": r.ssh_port,
                "ports": r.ports,
                "memory": r.memory,
                "cpus": r.cpus,
                "accel": r.accel,
                "error": r.exit_reason or None,
            }
        )
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
def stop(c: Context, vm: str, timeout: int = 0) -> None:
    """Stop a VM: ACPI power-off, then SIGTERM, then SIGKILL."""
    from lkctl.runtime.state import find_vm
    from lkctl.runtime.vm import stop_vm

    record = find_vm(vm)
    how = stop_vm(record, timeout=float(timeout) or settings_from(c).vm.stop_timeout)
    _err(f"lkctl: {record.name} {how}")


@task(help={"vm": "VM ID, name or unique ID prefix", "force": "stop it first if it is running"})
@adapt
def rm(c: Context, vm: str, force: bool = False) -> None:
    """Remove a stopped VM and its state (keys, console log)."""
    from lkctl.runtime import state
    from lkctl.runtime.vm import stop_vm

    record = state.find_vm(vm)
    if state.vm_status(record) == "running":
        if not force:
            raise ConfigError(f"VM {record.name} is running; stop it first or use vm.rm --force")
        stop_vm(record, timeout=settings_from(c).vm.stop_timeout)
    with state.vms_lock():
        state.remove_record(record)
    _err(f"lkctl: removed {record.name}")


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


@task(name="exec", help={"vm": "VM ID, name or unique ID prefix; the command follows --"})
@adapt
def exec_(c: Context, vm: str) -> None:
    """Run a command in a VM over SSH: vm.exec NAME -- CMD ARGS... (exit code passes through)."""
    from lkctl.runtime.state import find_vm
    from lkctl.runtime.vm import exec_in_vm

    argv = remainder_argv(c)
    if not argv:
        raise ConfigError("no command given: vm.exec NAME -- COMMAND [ARGS...]")
    record = find_vm(vm)
    stdin = None if sys.stdin is None or sys.stdin.isatty() else sys.stdin.buffer
    code = exec_in_vm(record, argv, stdin=stdin, stdout=sys.stdout.buffer, stderr=sys.stderr.buffer)
    if code:
        raise Exit(code=code)


ns = Collection("vm", run, ps, stop, rm, logs, exec_)

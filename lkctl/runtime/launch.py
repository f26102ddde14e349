"""`vm.run` and `vm.ps` as library calls: what the tasks do, for users who call lkctl from their own Python."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import IO, Any

from lkctl.runtime import state
from lkctl.runtime.state import VmRecord
from lkctl.runtime.vm import RunOptions, run_vm
from lkctl.settings import Settings

__all__ = ["list_all_vms", "list_vms", "run_image"]


def run_image(
    what: str,
    opts: RunOptions,
    settings: Settings,
    *,
    variables: Mapping[str, str] | None = None,
    use_env: bool = False,
    console: IO[bytes] | None = None,
    say: Callable[[str], None] = lambda _: None,
) -> tuple[VmRecord, int]:
    """Resolve `what` (path, installed image or template, built on demand) and boot it as a new VM.

    A template may ask for this VM's own SSH keys (SSH_KEY, SSH_HOST_KEY...): they are made before the VM exists
    and handed to it. Memory and CPUs come from the options, else the template's `# lkctl:` header, else settings.
    """
    from lkctl.images import resolve_image, staged_vm_keys
    from lkctl.runtime.host import require_qemu
    from lkctl.templates import inputs_from_settings

    through_libvirt = bool(opts.connect or opts.host)
    if through_libvirt:  # fail before a slow build, not after
        from lkctl.runtime.libvirt.backend import libvirt_module
        from lkctl.runtime.libvirt.fleet import target_host
        from lkctl.runtime.libvirt.vms import check_run_options, run_on_libvirt

        libvirt_module()
        check_run_options(opts)
        if opts.host != "auto":
            target_host(settings, opts.connect, opts.host)
    else:
        require_qemu(settings.vm.qemu)
    say(f"resolving image {what!r}")
    with staged_vm_keys() as keys:
        inputs = inputs_from_settings(settings.templates, variables, use_env=use_env, vm_keys=keys.variables)
        resolved = resolve_image(what, inputs)
        if resolved.built:
            say(f"built {resolved.boot.path}")
        opts = dataclasses.replace(
            opts,
            memory=opts.memory or resolved.memory,
            cpus=opts.cpus or resolved.cpus,
            keys_from=keys.directory if keys.made else None,
        )
        if through_libvirt:
            host = target_host(settings, opts.connect, opts.host, opts.memory or settings.vm.memory)
            say(f"booting on {host.name} through libvirt and waiting for SSH")
            return run_on_libvirt(resolved.boot, resolved.label, opts, settings, host, say=say), 0
        say("booting" + (" and waiting for SSH" if opts.detach and opts.wait_ssh else ""))
        return run_vm(resolved.boot, resolved.label, opts, settings, console=console)


def list_vms(*, include_stopped: bool = False) -> list[dict[str, Any]]:
    """VMs as JSON-able rows with their live status. VMs started with `--rm` that have ended are forgotten here."""
    rows: list[dict[str, Any]] = []
    for r in state.all_records():
        if r.libvirt:
            continue  # listed by list_all_vms, from libvirt
        status = state.vm_status(r)
        if r.auto_remove and status != "running":
            with state.vms_lock():
                state.remove_record(r)
            continue
        if not include_stopped and status != "running":
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
                "host": "local",
            }
        )
    return rows


def list_all_vms(
    settings: Settings, *, include_stopped: bool = False, host: str = ""
) -> tuple[list[dict[str, Any]], list[str]]:
    """`vm.ps`: this machine's VMs and those on every libvirt host (configured ones, and any a VM here runs on),
    asked in parallel. Returns (rows, one line per host that did not answer); `host` keeps one host's rows."""
    from lkctl.runtime.libvirt.hosts import HostConfig

    hosts: dict[str, HostConfig] = {h.name: h for h in settings.hosts}
    for r in state.all_records():
        name = r.libvirt.get("host", "")
        if r.libvirt and name not in hosts:
            hosts[name] = HostConfig(name, r.libvirt["uri"], known_hosts=r.libvirt.get("known_hosts", ""))
    if host and host != "local" and host not in hosts:
        from lkctl.errors import ConfigError

        raise ConfigError(f"--host {host}: no such host (known: local, {', '.join(hosts) or 'no libvirt host'})")
    rows = list_vms(include_stopped=include_stopped) if host in ("", "local") else []
    problems: list[str] = []
    wanted = [h for n, h in hosts.items() if host in ("", n)]
    if wanted:
        from lkctl.runtime.libvirt.fleet import list_host_vms

        more, problems = list_host_vms(wanted, include_stopped=include_stopped)
        # two host entries may name one libvirtd: a domain is listed once, under the host it was started on
        started_on = {r.libvirt.get("uuid"): r.libvirt.get("host") for r in state.all_records() if r.libvirt}
        seen: set[str] = set()
        for row in more:
            if row["uuid"] not in seen and started_on.get(row["uuid"], row["host"]) == row["host"]:
                seen.add(row["uuid"])
                rows.append(row)
    return rows, problems

"""`vm.run` and `vm.ps` as library calls: what the tasks do, for users who call lkctl from their own Python."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import IO, Any

from lkctl.runtime import state
from lkctl.runtime.state import VmRecord
from lkctl.runtime.vm import RunOptions, run_vm
from lkctl.settings import Settings

__all__ = ["list_vms", "run_image"]


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

    require_qemu(settings.vm.qemu)  # fail before a slow build, not after
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
        say("booting" + (" and waiting for SSH" if opts.detach and opts.wait_ssh else ""))
        return run_vm(resolved.boot, resolved.label, opts, settings, console=console)


def list_vms(*, include_stopped: bool = False) -> list[dict[str, Any]]:
    """VMs as JSON-able rows with their live status. VMs started with `--rm` that have ended are forgotten here."""
    rows: list[dict[str, Any]] = []
    live = state.live_pids()  # one snapshot of /proc instead of one open per recorded VM
    for r in state.all_records():
        status = state.vm_status(r, live)
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
            }
        )
    return rows

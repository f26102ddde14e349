"""`vm.run` and `vm.ps` as library calls: what the tasks do, for users who call lkctl from their own Python."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import IO, Any, TextIO

from lkctl.runtime import state
from lkctl.runtime.state import VmRecord
from lkctl.runtime.vm import RunOptions, preflight, run_vm
from lkctl.settings import Settings

__all__ = ["RunPlan", "list_vms", "plan_image", "run_image"]


def run_image(
    what: str,
    opts: RunOptions,
    settings: Settings,
    *,
    variables: Mapping[str, str] | None = None,
    use_env: bool = False,
    console: IO[bytes] | None = None,
    say: Callable[[str], None] = lambda _: None,
    size_sources: Mapping[str, str] | None = None,
    progress: TextIO | None = None,
) -> tuple[VmRecord, int]:
    """Resolve `what` (path, installed image or template, built on demand) and boot it as a new VM.

    A template may ask for this VM's own SSH keys (SSH_KEY, SSH_HOST_KEY...): they are made before the VM exists
    and handed to it. Memory and CPUs come from the options, else the template's `# lkctl:` header, else settings.
    `size_sources` names where non-zero option sizes came from (`--memory`, `config`...); a size that is not the
    default is then said with its source. With `progress` (a text stream, e.g. stderr), a detached run shows its
    boot phase and elapsed time there while it waits for SSH, and a foreground run says its SSH port at start.
    """
    from lkctl.images import resolve_image, staged_vm_keys
    from lkctl.runtime.hyperkit import require_hypervisor
    from lkctl.templates import inputs_from_settings

    hypervisor = require_hypervisor(opts.hypervisor, settings.vm.qemu)  # fail before a slow build, not after
    preflight(opts)  # a taken name or a busy port, too
    say(f"resolving image {what!r}")
    with staged_vm_keys() as keys:
        inputs = inputs_from_settings(settings.templates, variables, use_env=use_env, vm_keys=keys.variables)
        if progress is None:
            resolved = resolve_image(what, inputs)
        else:
            from lkctl.progress import Ticker

            with Ticker(f"resolving and building {what}", stream=progress):  # a first build takes minutes
                resolved = resolve_image(what, inputs)
        if resolved.built:
            say(f"built {resolved.boot.path}")
        opts = dataclasses.replace(
            opts,
            memory=opts.memory or resolved.memory,
            cpus=opts.cpus or resolved.cpus,
            keys_from=keys.directory if keys.made else None,
        )
        for key, unit in (("memory", " MB"), ("cpus", "")):
            value = getattr(opts, key)
            from_template = "the template's `# lkctl:` line" if getattr(resolved, key) else ""
            source = (size_sources or {}).get(key) or from_template
            if value and source:
                say(f"{key} {value}{unit} (from {source})")
        from lkctl.doctor import host_accel_reason
        from lkctl.runtime.host import probe_host

        # the same (cached) probe run_vm makes: say once what it chose and why
        host = probe_host(
            accel=settings.vm.accel, qemu=settings.vm.qemu, kernel=resolved.boot.kernel, hypervisor=hypervisor
        )
        say(f"accelerator {host_accel_reason(host.accel.value, settings.vm.accel)}")
        say("booting" + (" and waiting for SSH" if opts.detach and opts.wait_ssh else ""))
        if progress is None:
            return run_vm(resolved.boot, resolved.label, opts, settings, console=console)
        from lkctl.progress import BootProgress

        boot = BootProgress(opts.name or "the VM", stream=progress)

        def started(record: VmRecord) -> None:
            if not opts.detach:
                say(
                    f"VM {record.name} ({record.id}) started; ssh on 127.0.0.1:{record.ssh_port}. In another "
                    f"terminal: lkctl vm.exec {record.name} -- sh   Stop: Ctrl-C or lkctl vm.stop {record.name}"
                )

        try:
            return run_vm(resolved.boot, resolved.label, opts, settings, console=console, on_started=started,
                          on_wait=boot)  # fmt: skip
        finally:
            boot.finish()


@dataclasses.dataclass(frozen=True)
class RunPlan:
    """What `vm.run` would do (`--dry-run`): the argv it would start and the VM it would create."""

    argv: list[str]
    record: VmRecord
    boot_path: str
    built: bool  # the image was built (or rebuilt) to make this plan: builds are not skipped by --dry-run


def plan_image(
    what: str,
    opts: RunOptions,
    settings: Settings,
    *,
    variables: Mapping[str, str] | None = None,
    use_env: bool = False,
) -> RunPlan:
    """run_image without running: resolve (and build, cached) the image, then plan the VM; nothing is started."""
    from lkctl.images import resolve_image, staged_vm_keys
    from lkctl.runtime.hyperkit import require_hypervisor
    from lkctl.runtime.vm import plan_vm
    from lkctl.templates import inputs_from_settings

    require_hypervisor(opts.hypervisor, settings.vm.qemu)
    preflight(opts)
    with staged_vm_keys() as keys:
        inputs = inputs_from_settings(settings.templates, variables, use_env=use_env, vm_keys=keys.variables)
        resolved = resolve_image(what, inputs)
        opts = dataclasses.replace(opts, memory=opts.memory or resolved.memory, cpus=opts.cpus or resolved.cpus)
        argv, record = plan_vm(resolved.boot, resolved.label, opts, settings)
        return RunPlan(argv, record, str(resolved.boot.path), resolved.built)


def list_vms(*, include_stopped: bool = False) -> list[dict[str, Any]]:
    """VMs as JSON-able rows with their live status. VMs started with `--rm` that have ended are forgotten here."""
    rows: list[dict[str, Any]] = []
    for r in state.all_records():
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
            }
        )
    return rows

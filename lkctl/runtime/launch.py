"""`vm.run` and `vm.ps` as library calls: what the tasks do, for users who call lkctl from their own Python."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import IO, Any, TextIO

from lkctl import paths
from lkctl.errors import ConfigError
from lkctl.flags import check_vm_name
from lkctl.fsutil import private_dir
from lkctl.runtime import state
from lkctl.runtime.network import check_run_network
from lkctl.runtime.state import VmRecord
from lkctl.runtime.vm import RunOptions, preflight, run_vm
from lkctl.settings import Settings

__all__ = ["MIN_MEMORY", "RunPlan", "VmRow", "list_all_vms", "list_vms", "plan_image", "run_image", "run_options"]

MIN_MEMORY = 64  # MB: the least qemu_argv (and hyperkit's, libvirt's) accept


def run_image(
    what: str,
    opts: RunOptions,
    settings: Settings,
    *,
    variables: Mapping[str, str] | None = None,
    use_env: bool = False,
    console: IO[bytes] | None = None,
    say: Callable[[str], None] | None = None,
    size_sources: Mapping[str, str] | None = None,
    progress: TextIO | None = None,
) -> tuple[VmRecord, int]:
    """Resolve `what` (path, installed image or template, built on demand) and boot it as a new VM.

    A template may ask for this VM's own SSH keys (SSH_KEY, SSH_HOST_KEY...): they are made before the VM exists
    and handed to it, and such a build never enters the shared cache: it is made in the private staging dir and
    moves into the VM's state dir (0700, files 0600), so it is removed with the VM. Memory and CPUs come from the
    options, else the template's `# lkctl:` header, else settings.
    `size_sources` names where non-zero option sizes came from (`--memory`, `config`...); a size that is not the
    default is then said with its source. With `progress` (a text stream, e.g. stderr), a detached run shows its
    boot phase and elapsed time there while it waits for SSH, and a foreground run says its SSH port at start.
    Without `say`, a warm start's fallback to a cold boot is a warning of the `lkctl.runtime.snapshot` logger.
    """
    from lkctl.images import PRIVATE_BUILD, require_image_named, resolve_image, staged_vm_keys
    from lkctl.runtime.guest import env_file_text, guest_hostname
    from lkctl.runtime.hyperkit import require_hypervisor
    from lkctl.templates import inputs_from_settings

    warm_say, say = say, say or (lambda _: None)
    require_image_named(what)
    if opts.name:
        check_vm_name(opts.name)
        state.check_name_free(opts.name)  # checked again under the lock when the record is made
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
        # an unknown or missing hypervisor (or QEMU) fails here, before a slow build or a record
        hypervisor = require_hypervisor(opts.hypervisor, settings.vm.qemu)
        preflight(opts)  # a busy or doubled host port, too
        check_run_network(opts, settings)
    env_file_text(dict(opts.env)), guest_hostname(opts.hostname, opts.name, "0")  # bad --env/--hostname: now
    private_dir(paths.cache_dir())  # 0700 even when nothing is built (probes and digests land there)
    say(f"resolving image {what!r}")
    with staged_vm_keys() as keys:
        inputs = inputs_from_settings(settings.templates, variables, use_env=use_env, vm_keys=keys.variables)
        # a template given this VM's keys is built in the private staging dir; the VM takes the build with it
        inputs = dataclasses.replace(inputs, private_builds=lambda: keys.directory / PRIVATE_BUILD)
        if progress is None:
            resolved = resolve_image(what, inputs)
        else:
            from lkctl.progress import Ticker

            with Ticker(f"resolving and building {what}", stream=progress):  # a first build takes minutes
                resolved = resolve_image(what, inputs)
        if resolved.built:
            say(f"built {resolved.boot.path}")
        opts = dataclasses.replace(opts, memory=opts.memory or resolved.memory, cpus=opts.cpus or resolved.cpus)
        keys_from = keys.directory if keys.made else None
        for key, unit in (("memory", " MB"), ("cpus", "")):
            value = getattr(opts, key)
            from_template = "the template's `# lkctl:` line" if getattr(resolved, key) else ""
            source = (size_sources or {}).get(key) or from_template
            if value and source:
                say(f"{key} {value}{unit} (from {source})")
        if through_libvirt:
            host = target_host(settings, opts.connect, opts.host, opts.memory or settings.vm.memory)
            say(f"booting on {host.name} through libvirt and waiting for SSH")
            return run_on_libvirt(resolved.boot, resolved.label, opts, settings, host, say=say, keys_from=keys_from), 0
        from lkctl.doctor import host_accel_reason
        from lkctl.runtime.host import probe_host

        # the same (cached) probe run_vm makes: say once what it chose and why
        caps = probe_host(
            accel=settings.vm.accel, qemu=settings.vm.qemu, kernel=resolved.boot.kernel, hypervisor=hypervisor
        )
        say(f"accelerator {host_accel_reason(caps.accel.value, settings.vm.accel)}")
        say("booting" + (" and waiting for SSH" if opts.detach and opts.wait_ssh else ""))
        if progress is None:
            return run_vm(resolved.boot, resolved.label, opts, settings, keys_from=keys_from, console=console,
                          say=warm_say)  # fmt: skip
        from lkctl.progress import BootProgress

        boot = BootProgress(opts.name or "the VM", stream=progress)

        def started(record: VmRecord) -> None:
            if not opts.detach:
                say(
                    f"VM {record.name} ({record.id}) started; ssh on 127.0.0.1:{record.ssh_port}. In another "
                    f"terminal: lkctl vm.exec {record.name} -- sh   Stop: Ctrl-C or lkctl vm.stop {record.name}"
                )

        try:
            return run_vm(resolved.boot, resolved.label, opts, settings, keys_from=keys_from, console=console,
                          on_started=started, on_wait=boot, say=warm_say)  # fmt: skip
        finally:
            boot.finish()


@dataclasses.dataclass(frozen=True)
class RunPlan:
    """What `vm.run` would do (`--dry-run`): the argv it would start and the VM it would create."""

    argv: list[str]
    record: VmRecord
    boot_path: str
    built: bool  # the image was built (or rebuilt) to make this plan: builds are not skipped by --dry-run
    note: str = ""  # --snapshot: whether the snapshot exists or would be taken first (argv is then the restore's)


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

    hypervisor = require_hypervisor(opts.hypervisor, settings.vm.qemu)
    preflight(opts)
    with staged_vm_keys() as keys:
        inputs = inputs_from_settings(settings.templates, variables, use_env=use_env, vm_keys=keys.variables)
        resolved = resolve_image(what, inputs)
        opts = dataclasses.replace(opts, memory=opts.memory or resolved.memory, cpus=opts.cpus or resolved.cpus)
        argv, record = plan_vm(resolved.boot, resolved.label, opts, settings)
        note = ""
        if opts.snapshot:  # what would really run: the restore, perhaps after taking the snapshot
            from lkctl.runtime.guest import env_file_text
            from lkctl.runtime.snapshot import check_supported, planned_start

            check_supported(resolved.boot, opts, hypervisor, keys_from=keys.directory if keys.made else None)
            argv, note = planned_start(argv, env=env_file_text(dict(opts.env)).encode())
        return RunPlan(argv, record, str(resolved.boot.path), resolved.built, note)


def run_options(
    settings: Settings,
    sources: Mapping[str, str],
    *,
    name: str = "",
    memory: str = "",
    cpus: str = "",
    ssh_port: str = "",
    ports: Sequence[str] = (),
    detach: bool = False,
    timeout: str = "",
    rm: bool = False,
    wait: bool = True,
    volumes: Sequence[str] = (),
    disk: str = "",
    uefi: bool = False,
    hypervisor: str = "",
    virtiofs: bool = False,
    hostname: str = "",
    env: Mapping[str, str] | None = None,
    network: str = "",
    connect: str = "",
    host: str = "",
    snapshot: bool = False,
) -> RunOptions:
    """The RunOptions of `vm.run` from its flags as typed (empty: not given) and the settings; `sources` says where
    memory and CPUs came from (lkctl.configfiles.setting_source): a size only the defaults give is left to the
    template's `# lkctl:` line. One place for the full CLI's task and the lean `vm.run -d` (lkctl.runtime.fastrun)."""
    from lkctl.flags import parse_count, parse_memory, parse_port_number, parse_timeout
    from lkctl.runtime.disks import parse_data_disk
    from lkctl.runtime.model import parse_network, parse_port, parse_volume

    local = not (connect or host)  # through libvirt the VM's host, not this machine, limits --memory
    size = parse_memory(memory, local=local) if memory else (settings.vm.memory if sources["memory"] else 0)
    if 0 < size < MIN_MEMORY:  # refused here, not by qemu_argv after a build
        given = f"--memory {memory!r}" if memory else f"memory {size} MB (from {sources['memory']})"
        raise ConfigError(f"{given}: a VM needs at least {MIN_MEMORY}M (e.g. --memory 1024)")
    shares = tuple(parse_volume(v) for v in volumes)
    guests = [v.guest for v in shares]
    twice = next((g for g in guests if guests.count(g) > 1), None)
    if twice is not None:  # refused here, not by qemu_argv after a build
        raise ConfigError(f"--volume: two volumes are mounted at {twice} in the guest; give each its own path")
    return RunOptions(
        name=check_vm_name(name) if name else "",
        memory=size,
        cpus=parse_count(cpus, what="--cpus") if cpus else (settings.vm.cpus if sources["cpus"] else 0),
        ssh_port=parse_port_number(ssh_port, what="--ssh-port") if ssh_port else 0,
        ports=tuple(parse_port(p) for p in ports),
        detach=detach,
        ready_timeout=parse_timeout(timeout) if timeout else 0.0,
        auto_remove=rm,
        wait_ssh=wait,
        volumes=shares,
        data_disk=parse_data_disk(disk) if disk else None,
        uefi=True if uefi else None,
        hypervisor=hypervisor or settings.vm.hypervisor,
        virtiofs=virtiofs or settings.vm.virtiofs,
        hostname=hostname,
        env=tuple((env or {}).items()),
        network=parse_network(network) if network else None,
        connect=connect,
        host=host,
        snapshot=snapshot,
    )


@dataclasses.dataclass(frozen=True)
class VmRow:
    """One line of `vm.ps`: a VM and its live status, on this machine or on a libvirt host."""

    id: str
    name: str
    image: str
    status: str
    created: str
    pid: int | None  # running local VMs only
    ssh_port: int
    ports: tuple[str, ...]
    memory: int
    cpus: int
    accel: str
    error: str | None
    host: str  # "local" or the lkctl.hosts entry
    uri: str = ""  # libvirt rows: the host's URI and the domain's UUID
    uuid: str = ""

    def to_json(self) -> dict[str, Any]:
        """`vm.ps --json`'s object (libvirt rows add uri and uuid)."""
        out = dict(self.__dict__)  # the fields, in order (`vm.ps --all` makes a thousand of these)
        out["ports"] = list(self.ports)
        if not self.uri:
            del out["uri"], out["uuid"]
        return out

    @classmethod
    def local(cls, record: VmRecord, status: str) -> VmRow:
        """The row of a VM on this machine. Made without the frozen __init__ (one object.__setattr__ a field, which
        `vm.ps --all` pays a thousand times); VmRow has no __post_init__ to skip."""
        row = object.__new__(cls)
        row.__dict__.update(
            id=record.id, name=record.name, image=record.image, status=status, created=record.created,
            pid=record.pid if status == "running" else None, ssh_port=record.ssh_port, ports=tuple(record.ports),
            memory=record.memory, cpus=record.cpus, accel=record.accel,
            error=record.problem or record.exit_reason or None, host="local", uri="", uuid="",
        )  # fmt: skip
        return row

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> VmRow:
        names = {f.name for f in dataclasses.fields(cls)}
        fields: dict[str, Any] = {k: tuple(v) if k == "ports" else v for k, v in data.items() if k in names}
        return cls(**fields)


def list_vms(*, include_stopped: bool = False, records: list[state.VmRecord] | None = None) -> list[VmRow]:
    """This machine's VMs with their live status. VMs started with `--rm` that have ended are forgotten here."""
    rows: list[VmRow] = []
    live = state.live_pids()  # one snapshot of /proc instead of one open per recorded VM
    for r in state.listed_records() if records is None else records:
        if r.libvirt:
            continue  # listed by list_all_vms, from libvirt
        status = state.vm_status(r, live)
        if r.auto_remove and status not in ("running", "unknown") and state.forget_ended(r):  # an ended `--rm` VM
            continue
        if not include_stopped and status not in ("running", "unknown"):
            continue
        rows.append(VmRow.local(r, status))
    return rows


def list_all_vms(settings: Settings, *, include_stopped: bool = False, host: str = "") -> tuple[list[VmRow], list[str]]:
    """`vm.ps`: this machine's VMs and those on every libvirt host (configured ones, and any a VM here runs on),
    asked in parallel. Returns (rows, one line per host that did not answer); `host` keeps one host's rows."""
    from lkctl.runtime.libvirt.hosts import HostConfig

    hosts: dict[str, HostConfig] = {h.name: h for h in settings.hosts}
    records = state.listed_records()  # read once for the whole listing, without the QEMU command lines
    for r in records:
        name = r.libvirt.get("host", "")
        if r.libvirt and name not in hosts:
            hosts[name] = HostConfig(name, r.libvirt["uri"], known_hosts=r.libvirt.get("known_hosts", ""))
    if host and host != "local" and host not in hosts:
        raise ConfigError(f"--host {host}: no such host (known: local, {', '.join(hosts) or 'no libvirt host'})")
    rows = list_vms(include_stopped=include_stopped, records=records) if host in ("", "local") else []
    problems: list[str] = []
    wanted = [h for n, h in hosts.items() if host in ("", n)]
    if wanted:
        from lkctl.runtime.libvirt.fleet import list_host_vms

        more, problems = list_host_vms(wanted, include_stopped=include_stopped)
        # two host entries may name one libvirtd: a domain is listed once, under the host it was started on
        started_on = {r.libvirt.get("uuid"): r.libvirt.get("host") for r in records if r.libvirt}
        seen: set[str] = set()
        for row in more:
            if row["uuid"] not in seen and started_on.get(row["uuid"], row["host"]) == row["host"]:
                seen.add(row["uuid"])
                rows.append(VmRow.from_json(row))
    return rows, problems

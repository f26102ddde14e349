"""lkctl VMs on libvirt hosts: run, status, stop, kill, restart, remove, console, inspect, export.

A libvirt VM has a local record like any other (its keys live in its 0700 state dir, and `record.libvirt` says
where it runs), while libvirt holds the truth about it: the domain `lkctl-<id>` with lkctl's record in its
`<metadata>`, so `vm.ps` on any client of that libvirtd sees it. Status is asked from libvirt every time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
import socket
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lkctl.errors import ConfigError, SshError, VmError
from lkctl.runtime import state
from lkctl.runtime.libvirt import backend
from lkctl.runtime.libvirt.backend import domain_status
from lkctl.runtime.libvirt.domain import DomainFiles, FwCfgEntry, LibvirtHostCaps, domain_name, domain_xml
from lkctl.runtime.libvirt.hosts import HostConfig, is_local_uri, jump_host
from lkctl.runtime.model import BootImage, ImageFormat, VmSpec
from lkctl.runtime.state import VmRecord

if TYPE_CHECKING:
    import libvirt

    from lkctl.runtime.vm import RunOptions
    from lkctl.settings import Settings
    from lkctl.ssh import SshTarget

__all__ = [
    "check_run_options",
    "console_chunks",
    "domain_status",
    "export_domain_xml",
    "inspect_libvirt_vm",
    "kill_libvirt_vm",
    "remove_libvirt_vm",
    "restart_libvirt_vm",
    "run_on_libvirt",
    "ssh_target_libvirt",
    "stop_libvirt_vm",
]

_READY = b"lkctl-init: ready"
_PANICS = (b"Kernel panic", b"lkctl-init: fatal:")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _conn(record: VmRecord) -> contextlib.AbstractContextManager[libvirt.virConnect]:
    return backend.connection(record.libvirt["uri"], record.libvirt.get("known_hosts", ""))


def _pool(conn: libvirt.virConnect, record: VmRecord) -> libvirt.virStoragePool:
    lv = backend.libvirt_module()
    try:
        return conn.storagePoolLookupByName(record.libvirt.get("pool", "lkctl"))
    except lv.libvirtError as e:
        raise VmError(f"storage pool of VM {record.name} is gone: {backend.error_text(e)}") from None


def ssh_target_libvirt(record: VmRecord) -> SshTarget:
    """The guest's forward is on its host's loopback: reached directly here, or through that host's sshd."""
    from lkctl.ssh import vm_target

    jump = jump_host(record.libvirt["uri"], record.libvirt.get("known_hosts", ""))
    return vm_target(record.dir, record.ssh_port, record.name, jump=jump)


def _free_local_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pick_port(uri: str, taken: set[int]) -> int:
    """A port for the guest's SSH on the target host's loopback. Remote: a random high port lkctl does not use
    there yet (QEMU refuses a taken one at start, and the start is retried with another)."""
    if is_local_uri(uri):
        return _free_local_port()
    while True:
        port = random.randint(20000, 59999)  # noqa: S311 - a port number, not a secret
        if port not in taken:
            return port


def check_run_options(opts: RunOptions) -> None:
    """Refuse, before any slow work, what a libvirt VM cannot do (foreground runs, public forwards...)."""
    if not opts.detach:
        raise ConfigError("through libvirt a VM always runs detached: add -d (vm.logs -f follows its console)")
    if not opts.wait_ssh:
        raise ConfigError("--no-wait is not supported through libvirt yet: lkctl waits for the guest's SSH")
    for p in opts.ports:
        if p.host_ip != "127.0.0.1":
            raise ConfigError(f"--port {p}: through libvirt, forwards bind the target host's 127.0.0.1 only")
    if opts.data_disk is not None and opts.data_disk.path is not None:
        raise ConfigError("--disk path=...: through libvirt the data disk is a volume in the host's pool; drop path=")


def _boot_for(boot: BootImage, caps: LibvirtHostCaps, pvh: bool) -> BootImage:
    if not pvh or caps.arch != "x86_64" or boot.kernel is None:
        return boot
    from lkctl.runtime.pvh import pvh_kernel

    with contextlib.suppress(OSError):
        vmlinux = pvh_kernel(boot.kernel)
        if vmlinux is not None:
            return dataclasses.replace(boot, kernel=vmlinux)
    return boot


def _upload_boot(
    conn: libvirt.virConnect, pool: libvirt.virStoragePool, boot: BootImage, say: Callable[[str], None]
) -> dict[str, str]:
    """Send the image's files that the host lacks; {role: path on the host}."""
    from lkctl.runtime.digest import file_digest

    roles: list[tuple[str, Path, str]] = []
    if boot.kernel is not None:
        roles.append(("kernel", boot.kernel, "raw"))
    if boot.format is ImageFormat.KERNEL_INITRD:
        if boot.initrd is None:
            raise ConfigError(f"{boot.path}: a kernel+initrd image needs both a kernel and an initrd")
        roles.append(("initrd", boot.initrd, "raw"))
    elif boot.format is ImageFormat.KERNEL_SQUASHFS:
        if boot.squashfs is None:
            raise ConfigError(f"{boot.path}: a kernel+squashfs image needs its squashfs file")
        roles.append(("image", boot.squashfs, "raw"))
    else:
        roles.append(("image", boot.path, "raw" if boot.format is ImageFormat.ISO else boot.format.value))
    out = {}
    for role, path, fmt in roles:
        started = time.monotonic()
        out[role], sent = backend.upload_image(conn, pool, path, file_digest([path]), fmt)
        if sent:
            say(f"uploaded {path.name} ({path.stat().st_size >> 20} MiB) in {time.monotonic() - started:.1f} s")
    return out


def _create_record(
    label: str, boot: BootImage, opts: RunOptions, settings: Settings, host: HostConfig, keys_from: Path | None
) -> VmRecord:
    from lkctl import ssh

    with state.vms_lock():
        records = state.listed_records()
        if opts.name and any(r.name == opts.name for r in records):
            raise ConfigError(f"the name {opts.name!r} is already used; remove that VM first or choose another --name")
        vm_id = state.new_vm_id({r.id for r in records} | {r.name for r in records})
        record = VmRecord(
            id=vm_id, name=opts.name or vm_id, image=label, image_format=boot.format.value, created=_now(),
            memory=opts.memory or settings.vm.memory, cpus=opts.cpus or settings.vm.cpus, ssh_port=0,
            ports=[str(p) for p in opts.ports], auto_remove=opts.auto_remove,
            libvirt={"uri": host.uri, "host": host.name, "domain": domain_name(vm_id), "uuid": "",
                     "known_hosts": host.known_hosts, "pool": settings.libvirt.pool},
        )  # fmt: skip
        state.save_record(record)
    try:
        for f in sorted(keys_from.iterdir()) if keys_from else ():
            if f.is_file() and not f.name.startswith("."):
                (record.dir / f.name).write_bytes(f.read_bytes())
                (record.dir / f.name).chmod(f.stat().st_mode & 0o777)
        ssh.generate_keys(record.dir)
    except BaseException:
        state.remove_record(record)
        raise
    return record


def _metadata(record: VmRecord) -> dict[str, Any]:
    return {
        "id": record.id, "name": record.name, "image": record.image, "image_format": record.image_format,
        "created": record.created, "memory": record.memory, "cpus": record.cpus, "ssh_port": record.ssh_port,
        "ports": record.ports, "image_digest": record.image_digest, "client": socket.gethostname(),
        "host_key": (record.dir / "ssh_host_ed25519_key.pub").read_text().strip(),
    }  # fmt: skip


def _spec(record: VmRecord, boot: BootImage, opts: RunOptions, settings: Settings, ssh_port: int) -> VmSpec:
    from lkctl.runtime.disks import detect_uefi

    uefi = opts.uefi
    if uefi is None:
        uefi = (boot.format.is_disk or boot.format is ImageFormat.ISO) and detect_uefi(boot.path, boot.format)
    return VmSpec(
        vm_id=record.id, boot=dataclasses.replace(boot, uefi=bool(uefi)), memory=record.memory, cpus=record.cpus,
        ssh_port=ssh_port, ports=opts.ports, mac="52:54:" + ":".join(record.id[i : i + 2] for i in range(0, 8, 2)),
        cmdline_extra=settings.vm.cmdline_extra, volumes=opts.volumes, data_disk=opts.data_disk,
        virtiofs=opts.virtiofs,
    )  # fmt: skip


def _vm_files(
    conn: libvirt.virConnect, pool: libvirt.virStoragePool, record: VmRecord, spec: VmSpec, images: dict[str, str],
    caps: LibvirtHostCaps,
) -> DomainFiles:  # fmt: skip
    dom = domain_name(record.id)
    hostkey = backend.upload_private(conn, pool, record.dir / "ssh_host_ed25519_key", f"{dom}-hostkey")
    overlay = data = ""
    fmt = spec.boot.format
    if fmt.is_disk or fmt is ImageFormat.KERNEL_SQUASHFS:
        base_fmt = "raw" if fmt is ImageFormat.KERNEL_SQUASHFS else fmt.value
        overlay = backend.create_volume(pool, f"{dom}-boot.qcow2", 0, "qcow2", (images["image"], base_fmt))
    if spec.data_disk is not None:
        ext = "img" if spec.data_disk.format == "raw" else "qcow2"
        data = backend.create_volume(pool, f"{dom}-data.{ext}", spec.data_disk.size, spec.data_disk.format)
    return DomainFiles(
        kernel=images.get("kernel", ""), initrd=images.get("initrd", ""), image=images.get("image", ""),
        overlay=overlay, data_disk=data, console=f"{caps.pool_path}/{dom}.console.log",
        fw_cfg=(FwCfgEntry("ssh/authorized_keys", value=(record.dir / "id_ed25519.pub").read_text()),
                FwCfgEntry("ssh/ssh_host_ed25519_key", file=hostkey)),
    )  # fmt: skip


def run_on_libvirt(
    boot: BootImage, label: str, opts: RunOptions, settings: Settings, host: HostConfig,
    say: Callable[[str], None] = lambda _: None, keys_from: Path | None = None,
) -> VmRecord:  # fmt: skip
    """Boot `boot` as a new domain on `host` and wait for its SSH. A failure leaves nothing behind there or here."""
    from lkctl import ssh
    from lkctl.runtime.digest import file_digest

    check_run_options(opts)
    lv = backend.libvirt_module()
    dom: libvirt.virDomain | None = None
    with backend.connection(host.uri, host.known_hosts) as conn:  # an unreachable host: nothing was made yet
        record = _create_record(label, boot, opts, settings, host, keys_from)
        try:
            pool = backend.ensure_pool(conn, settings.libvirt.pool, settings.libvirt.pool_path)
            caps = backend.probe(conn, host.uri, pool, host.accel)
            say(f"host {host.name}: libvirt {caps.version // 1_000_000}.{caps.version // 1000 % 1000}, "
                f"domain type {caps.domain_type}, {caps.free_memory} MiB free")  # fmt: skip
            boot = _boot_for(boot, caps, settings.vm.pvh)
            images = _upload_boot(conn, pool, boot, say)
            with contextlib.suppress(OSError):
                files = [boot.kernel, boot.initrd] if boot.kernel and boot.initrd else [boot.path]
                record = dataclasses.replace(record, image_digest=file_digest([f for f in files if f]))
            taken = {int(m.get("ssh_port") or 0) for _, m in backend.lkctl_domains(conn)}
            for attempt in range(3):
                port = opts.ssh_port or _pick_port(host.uri, taken)
                spec = _spec(record, boot, opts, settings, port)
                if attempt == 0:
                    vm_files = _vm_files(conn, pool, record, spec, images, caps)
                record = dataclasses.replace(record, ssh_port=port, accel=caps.domain_type)
                xml = domain_xml(spec, caps, vm_files, _metadata(record))
                dom = conn.defineXML(xml)
                record = dataclasses.replace(record, libvirt={**record.libvirt, "uuid": dom.UUIDString()})
                state.save_record(record)
                try:
                    dom.create()
                    break
                except lv.libvirtError as e:
                    msg = backend.error_text(e)
                    if "host forwarding" in msg and not opts.ssh_port and attempt < 2:
                        taken.add(port)
                        continue
                    raise VmError(f"libvirt could not start VM {record.name} on {host.name}: {msg}") from None
            ssh.write_known_hosts(record.dir / "known_hosts", "127.0.0.1", record.ssh_port,
                                  record.dir / "ssh_host_ed25519_key.pub")  # fmt: skip
            _wait_ready(record, conn, pool, dom, opts.ready_timeout or settings.vm.ready_timeout)
            return record
        except BaseException:
            _abandon(conn, record, dom)
            raise


def _wait_ready(
    record: VmRecord, conn: libvirt.virConnect, pool: libvirt.virStoragePool, dom: libvirt.virDomain | None,
    timeout: float,
) -> None:  # fmt: skip
    from lkctl import ssh

    assert dom is not None
    ticks = [0]

    def check_console() -> None:
        ticks[0] += 1
        if ticks[0] % 5 == 0:  # each look is a download from the host: not on every attempt
            console = backend.console_bytes(pool, conn, domain_name(record.id))
            if any(m in console for m in _PANICS):
                raise VmError(f"VM {record.name} failed while booting:\n{_tail(console)}")

    try:
        ssh.wait_ready(ssh_target_libvirt(record), timeout=timeout, alive=lambda: bool(dom.isActive()),
                       on_tick=check_console)  # fmt: skip
    except SshError as e:
        console = backend.console_bytes(pool, conn, domain_name(record.id))
        stage = "init reported ready but sshd did not answer" if _READY in console else "the guest did not boot"
        raise VmError(f"VM {record.name} did not become ready: {e}; {stage}.\n{_tail(console)}") from None


def _tail(console: bytes, lines: int = 15) -> str:
    from lkctl.runtime.untrusted import printable  # the guest's bytes in lkctl's message: no raw control sequences

    text = printable(console.decode(errors="replace").replace("\r", ""))
    return "last console lines:\n" + "\n".join(text.splitlines()[-lines:]) if text.strip() else "(no console output)"


def _abandon(conn: libvirt.virConnect, record: VmRecord, dom: libvirt.virDomain | None) -> None:
    """After a failed start: no domain, no per-VM volume, no local record (the uploaded image stays)."""
    lv = backend.libvirt_module()
    dom = dom or backend.lookup_domain(conn, domain_name(record.id))
    if dom is not None:
        with contextlib.suppress(lv.libvirtError):
            if dom.isActive():
                dom.destroy()
        with contextlib.suppress(lv.libvirtError):
            dom.undefineFlags(lv.VIR_DOMAIN_UNDEFINE_NVRAM)
    with contextlib.suppress(lv.libvirtError, VmError):
        backend.delete_vm_volumes(_pool(conn, record), domain_name(record.id))
    with state.vms_lock():
        state.remove_record(record)


def _domain(conn: libvirt.virConnect, record: VmRecord) -> libvirt.virDomain:
    dom = backend.lookup_domain(conn, record.libvirt["domain"])
    if dom is None:
        raise VmError(f"VM {record.name}: libvirt at {record.libvirt['uri']} has no domain {record.libvirt['domain']}")
    return dom


def stop_libvirt_vm(record: VmRecord, *, timeout: float = 30.0) -> str:
    """ACPI power-off through libvirt, then destroy."""
    with _conn(record) as conn:
        return backend.stop_domain(_domain(conn, record), timeout)


def kill_libvirt_vm(record: VmRecord) -> bool:
    """Destroy the domain at once (no guest shutdown). False if it was not running."""
    with _conn(record) as conn:
        dom = _domain(conn, record)
        if not dom.isActive():
            return False
        dom.destroy()
        return True


def restart_libvirt_vm(record: VmRecord, *, stop_timeout: float = 30.0, ready_timeout: float = 180.0) -> VmRecord:
    """Power off (ACPI, then destroy) and start the same domain again; waits for SSH."""
    lv = backend.libvirt_module()
    with _conn(record) as conn:
        dom = _domain(conn, record)
        backend.stop_domain(dom, stop_timeout)
        pool = _pool(conn, record)
        try:
            dom.create()
        except lv.libvirtError as e:
            raise VmError(f"libvirt could not restart VM {record.name}: {backend.error_text(e)}") from None
        record = dataclasses.replace(record, exit_reason="")
        state.save_record(record)
        _wait_ready(record, conn, pool, dom, ready_timeout)
    return record


def remove_libvirt_vm(record: VmRecord, *, force: bool = False, stop_timeout: float = 30.0) -> None:
    """Undefine the domain and delete its volumes (overlay, data disk, key, console), then the local record."""
    lv = backend.libvirt_module()
    with _conn(record) as conn:
        dom = backend.lookup_domain(conn, record.libvirt["domain"])
        if dom is not None:
            if dom.isActive():
                if not force:
                    raise ConfigError(f"VM {record.name} is running; stop it first or use --force")
                backend.stop_domain(dom, stop_timeout)
            with contextlib.suppress(lv.libvirtError):
                dom.undefineFlags(lv.VIR_DOMAIN_UNDEFINE_NVRAM)
        with contextlib.suppress(VmError):
            backend.delete_vm_volumes(_pool(conn, record), record.libvirt["domain"])
    with state.vms_lock():
        state.remove_record(record)


def console_chunks(record: VmRecord, *, follow: bool = False, poll: float = 0.5) -> Iterator[bytes]:
    """The console file libvirt keeps on the VM's host, downloaded through libvirt; with `follow`, until it stops."""
    with _conn(record) as conn:
        pool = _pool(conn, record)
        dom = _domain(conn, record)
        offset = 0
        while True:
            active = follow and bool(dom.isActive())
            chunk = backend.console_bytes(pool, conn, record.libvirt["domain"], offset)
            if chunk:
                offset += len(chunk)
                yield chunk
            if not active:
                return
            time.sleep(poll)


def inspect_libvirt_vm(record: VmRecord) -> dict[str, Any]:
    """The record plus where it runs: URI, domain name and UUID, host, libvirt's state."""
    with _conn(record) as conn:
        dom = backend.lookup_domain(conn, record.libvirt["domain"])
        status = backend.domain_state(dom) if dom is not None else "missing"
        return {
            **record.to_json(),
            "status": status,
            "uri": record.libvirt["uri"],
            "host": record.libvirt.get("host", ""),
            "domain": record.libvirt["domain"],
            "uuid": dom.UUIDString() if dom is not None else record.libvirt.get("uuid", ""),
            "paths": {"state_dir": str(record.dir), "client_key": str(record.dir / "id_ed25519"),
                      "known_hosts": str(record.dir / "known_hosts")},
        }  # fmt: skip


def export_domain_xml(record: VmRecord) -> str:
    """The domain XML as libvirt holds it (`virsh define` accepts it)."""
    with _conn(record) as conn:
        return str(_domain(conn, record).XMLDesc(0))

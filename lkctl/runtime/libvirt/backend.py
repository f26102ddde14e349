"""Talking to one libvirtd: connect, probe, pool and volumes, define/start/console/stop. The only `libvirt` importer.

Files a domain uses must be readable by the QEMU libvirt starts (user `libvirt-qemu` under qemu:///system), which
never holds for lkctl's caches under /root, and do not exist at all on a remote host: everything goes through a
storage pool. Images are uploaded with libvirt's streamed volume upload, named by their sha256 and marked complete
by a second, empty volume once every byte is in, so an image is sent once per host and a half upload is never
booted. Each VM gets its own volumes named `lkctl-<id>-...`: its boot overlay, data disk, SSH host key and the
console file; removing the VM removes them.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit
from xml.sax.saxutils import escape

from lkctl import paths
from lkctl.arch import machine_arch
from lkctl.errors import ConfigError, HostUnreachable, VmError
from lkctl.fsutil import atomic_write
from lkctl.runtime.libvirt.domain import METADATA_NS, QEMU_NS, LibvirtHostCaps, metadata_from_xml

if TYPE_CHECKING:
    import libvirt

    from lkctl.runtime.state import VmRecord

__all__ = [
    "HostUnreachable",
    "connection",
    "console_bytes",
    "create_volume",
    "delete_vm_volumes",
    "domain_state",
    "domain_status",
    "ensure_pool",
    "error_text",
    "libvirt_module",
    "lkctl_domains",
    "lookup_domain",
    "probe",
    "stop_domain",
    "transport_uri",
    "upload_image",
    "upload_private",
]

_CHUNK = 1 << 20


def libvirt_module() -> Any:
    """The `libvirt` module (imported on first use), or a one-line ConfigError saying how to install it."""
    try:
        import libvirt
    except ImportError:
        raise ConfigError(
            "running VMs through libvirt needs libvirt-python: pip install 'lkctl[libvirt]' "
            "(it builds against libvirt: apt-get install libvirt-dev pkg-config gcc)"
        ) from None
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)  # errors become exceptions, not stderr lines
    return libvirt


def error_text(e: BaseException) -> str:
    """libvirt's message for `e`, first line only."""
    getter = getattr(e, "get_error_message", None)
    text = (getter() if getter else None) or str(e)
    return str(text).strip().splitlines()[0] if str(text).strip() else type(e).__name__


def _ssh_command(known_hosts: Path) -> Path:
    """A tiny `ssh` wrapper pinning the host key for libvirt's ssh transport (it has no known_hosts option).

    StrictHostKeyChecking=yes: a host whose key is not in `known_hosts` is refused, never added.
    """
    import shlex

    kh = os.fspath(known_hosts)
    body = (
        "#!/bin/sh\n# made by lkctl: libvirt's ssh transport with a pinned host key\n"
        f"exec ssh -o UserKnownHostsFile={shlex.quote(kh)} -o GlobalKnownHostsFile=/dev/null "
        '-o StrictHostKeyChecking=yes -o ForwardAgent=no "$@"\n'
    )
    digest = hashlib.sha256(body.encode()).hexdigest()[:16]
    wrapper = paths.state_dir() / "libvirt" / f"ssh-{digest}"
    if not wrapper.exists():
        from lkctl.fsutil import private_dir

        private_dir(paths.state_dir())
        private_dir(wrapper.parent)
        atomic_write(wrapper, body, mode=0o700)
    return wrapper


def transport_uri(uri: str, pin: str = "") -> str:
    """The URI handed to libvirt: for qemu+ssh and qemu+libssh, host-key checking is strict (and pinned if asked)."""
    parts = urlsplit(uri)
    query = dict(parse_qsl(parts.query))
    if parts.scheme in ("qemu+libssh", "qemu+libssh2"):  # these check known_hosts themselves
        if pin:
            query.setdefault("known_hosts", os.fspath(Path(pin).expanduser()))
        if parts.scheme == "qemu+libssh":
            query.setdefault("known_hosts_verify", "normal")  # unknown keys are refused, not added
        return urlunsplit(parts._replace(query=urlencode(query)))
    if parts.scheme != "qemu+ssh":
        return uri
    if "command" not in query:
        known = Path(pin).expanduser() if pin else Path.home() / ".ssh" / "known_hosts"
        query["command"] = os.fspath(_ssh_command(known))
    query.setdefault("no_tty", "1")  # never prompt (for a password or a host key)
    return urlunsplit(parts._replace(query=urlencode(query)))


@contextlib.contextmanager
def connection(uri: str, pin: str = "") -> Iterator[libvirt.virConnect]:
    """An open connection to the libvirtd at `uri`, closed afterwards; HostUnreachable in one line if none.

    A libvirt error raised inside the block becomes a one-line VmError."""
    lv = libvirt_module()
    try:
        conn = lv.open(transport_uri(uri, pin))
    except lv.libvirtError as e:
        raise HostUnreachable(f"cannot reach libvirt at {uri}: {error_text(e)}") from None
    try:
        yield conn
    except lv.libvirtError as e:  # anything libvirt refuses mid-way is one line for the user, not a traceback
        raise VmError(f"libvirt at {uri}: {error_text(e)}") from None
    finally:
        with contextlib.suppress(lv.libvirtError):
            conn.close()


def ensure_pool(conn: libvirt.virConnect, name: str, path: str) -> libvirt.virStoragePool:
    """lkctl's storage pool on that host, defined (a `dir` pool at `path`), built and started if needed."""
    lv = libvirt_module()
    try:
        pool = conn.storagePoolLookupByName(name)
    except lv.libvirtError:
        xml = (
            f"<pool type='dir'><name>{escape(name)}</name><target><path>{escape(path)}</path>"
            "<permissions><mode>0711</mode></permissions></target></pool>"
        )
        try:
            pool = conn.storagePoolDefineXML(xml, 0)
            pool.build(0)
            pool.setAutostart(1)
        except lv.libvirtError as e:
            raise VmError(f"cannot create storage pool {name} at {path} on {conn.getURI()}: {error_text(e)}") from None
    if not pool.isActive():
        try:
            pool.create(0)
        except lv.libvirtError as e:
            raise VmError(f"cannot start storage pool {name} on {conn.getURI()}: {error_text(e)}") from None
    return pool


def _pool_path(pool: libvirt.virStoragePool) -> str:
    root = ET.fromstring(pool.XMLDesc(0))  # noqa: S314 - libvirtd's own output
    return root.findtext("target/path") or ""


def _volume(pool: libvirt.virStoragePool, name: str) -> libvirt.virStorageVol | None:
    lv = libvirt_module()
    try:
        return pool.storageVolLookupByName(name)
    except lv.libvirtError:
        return None


def _volume_xml(name: str, capacity: int, fmt: str, mode: str, backing: tuple[str, str] | None = None) -> str:
    back = ""
    if backing is not None:
        back = f"<backingStore><path>{escape(backing[0])}</path><format type='{backing[1]}'/></backingStore>"
    return (
        f"<volume><name>{escape(name)}</name><capacity unit='B'>{capacity}</capacity>"
        f"<target><format type='{fmt}'/><permissions><mode>{mode}</mode></permissions></target>{back}</volume>"
    )


def _send_file(conn: libvirt.virConnect, vol: libvirt.virStorageVol, src: Path) -> None:
    size = src.stat().st_size
    stream = conn.newStream(0)
    with open(src, "rb") as f:
        vol.upload(stream, 0, size, 0)
        try:
            stream.sendAll(lambda _st, n, fh: fh.read(min(n, _CHUNK)), f)
            stream.finish()
        except BaseException:
            with contextlib.suppress(Exception):
                stream.abort()
            raise


def upload_image(
    conn: libvirt.virConnect, pool: libvirt.virStoragePool, src: Path, digest: str, fmt: str = "raw"
) -> tuple[str, bool]:
    """Put `src` (sha256 `digest`) in the pool once: (its path there, whether it was sent now).

    A volume is only used once its `.ok` marker exists; another lkctl uploading the same image meanwhile is
    waited for. An upload that fails is deleted, so the next attempt starts clean.
    """
    lv = libvirt_module()
    name = "sha256-" + digest.removeprefix("sha256:")
    marker = name + ".ok"
    vol = _volume(pool, name)
    if vol is not None:
        deadline = time.monotonic() + 600
        while _volume(pool, marker) is None:
            if time.monotonic() > deadline:
                raise VmError(f"volume {name} on {conn.getURI()} never completed; delete it (virsh vol-delete)")
            time.sleep(0.5)
        return vol.path(), False
    try:
        vol = pool.createXML(_volume_xml(name, src.stat().st_size, fmt, "0644"), 0)
    except lv.libvirtError as e:
        if _volume(pool, name) is not None:  # someone else started the same upload: wait for theirs
            return upload_image(conn, pool, src, digest, fmt)
        raise VmError(f"cannot create volume {name} on {conn.getURI()}: {error_text(e)}") from None
    try:
        _send_file(conn, vol, src)
        pool.createXML(_volume_xml(marker, 0, "raw", "0644"), 0)
    except BaseException as e:
        with contextlib.suppress(Exception):
            vol.delete(0)
        if isinstance(e, lv.libvirtError):
            raise VmError(f"uploading {src} to {conn.getURI()} failed: {error_text(e)}") from None
        raise
    return vol.path(), True


def upload_private(conn: libvirt.virConnect, pool: libvirt.virStoragePool, src: Path, name: str) -> str:
    """A per-VM secret (the guest's SSH host key) as a 0600 volume; libvirt hands it to that VM's QEMU only."""
    lv = libvirt_module()
    try:
        vol = pool.createXML(_volume_xml(name, src.stat().st_size, "raw", "0600"), 0)
        _send_file(conn, vol, src)
    except lv.libvirtError as e:
        raise VmError(f"cannot store {name} on {conn.getURI()}: {error_text(e)}") from None
    return str(vol.path())


def create_volume(
    pool: libvirt.virStoragePool, name: str, capacity: int, fmt: str, backing: tuple[str, str] | None = None
) -> str:
    """A new empty volume (a data disk, or a qcow2 overlay over `backing` = (path, format)); its path."""
    lv = libvirt_module()
    if backing is not None and not capacity:
        pool.refresh(0)
        base = next((v for v in pool.listAllVolumes(0) if v.path() == backing[0]), None)
        capacity = base.info()[1] if base is not None else 0
    try:
        return str(pool.createXML(_volume_xml(name, capacity, fmt, "0600", backing), 0).path())
    except lv.libvirtError as e:
        raise VmError(f"cannot create volume {name}: {error_text(e)}") from None


def delete_vm_volumes(pool: libvirt.virStoragePool, domain: str) -> None:
    """Delete the volumes of one VM (`<domain>-*` and `<domain>.console.log`); images stay for other VMs."""
    lv = libvirt_module()
    with contextlib.suppress(lv.libvirtError):
        pool.refresh(0)  # the console file was written by libvirt, not made as a volume
    for vol in pool.listAllVolumes(0):
        if vol.name().startswith((f"{domain}-", f"{domain}.")):
            with contextlib.suppress(lv.libvirtError):
                vol.delete(0)


def console_bytes(pool: libvirt.virStoragePool, conn: libvirt.virConnect, domain: str, offset: int = 0) -> bytes:
    """The VM's console file from `offset` on, downloaded through libvirt (works the same for remote hosts)."""
    lv = libvirt_module()
    name = f"{domain}.console.log"
    vol = _volume(pool, name)
    if vol is None:
        with contextlib.suppress(lv.libvirtError):
            pool.refresh(0)
        vol = _volume(pool, name)
    if vol is None:
        return b""
    try:
        size = int(vol.info()[1])  # libvirt re-reads the file's size on every call
        if offset >= size:
            return b""
        stream = conn.newStream(0)
        vol.download(stream, offset, size - offset, 0)
        chunks: list[bytes] = []
        stream.recvAll(lambda _st, data, acc: acc.append(data) or 0, chunks)
        stream.finish()
    except lv.libvirtError:
        return b""
    return b"".join(chunks)


def lookup_domain(conn: libvirt.virConnect, name: str) -> libvirt.virDomain | None:
    lv = libvirt_module()
    try:
        return conn.lookupByName(name)
    except lv.libvirtError:
        return None


def domain_state(dom: libvirt.virDomain) -> str:
    """`running`, `paused`, `stopped` or `crashed` (libvirt's state, in lkctl's words)."""
    lv = libvirt_module()
    state = dom.state(0)[0]
    if state in (lv.VIR_DOMAIN_RUNNING, lv.VIR_DOMAIN_BLOCKED):
        return "running"
    if state in (lv.VIR_DOMAIN_PAUSED, lv.VIR_DOMAIN_PMSUSPENDED):
        return "paused"
    return "crashed" if state == lv.VIR_DOMAIN_CRASHED else "stopped"


def lkctl_domains(conn: libvirt.virConnect) -> list[tuple[libvirt.virDomain, dict[str, Any]]]:
    """Every domain on that host that carries lkctl's metadata, with its record."""
    lv = libvirt_module()
    out = []
    for dom in conn.listAllDomains(0):
        if not dom.name().startswith("lkctl-"):
            continue
        try:
            meta = dom.metadata(lv.VIR_DOMAIN_METADATA_ELEMENT, METADATA_NS, 0)
            out.append((dom, metadata_from_xml(meta)))
        except (lv.libvirtError, VmError):
            continue
        except Exception:  # noqa: S112 - a domain someone else named lkctl-*: not ours
            continue
    return out


def stop_domain(dom: libvirt.virDomain, timeout: float) -> str:
    """ACPI power-off through libvirt, then destroy when the guest ignores it. Returns how it ended."""
    lv = libvirt_module()
    if not dom.isActive():
        return "not running"
    with contextlib.suppress(lv.libvirtError):
        dom.shutdownFlags(lv.VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not dom.isActive():
                return "powered off"
            time.sleep(0.2)
    with contextlib.suppress(lv.libvirtError):
        dom.destroy()
    if dom.isActive():
        raise VmError(f"domain {dom.name()} survived virDomainDestroy; check it with virsh")
    return "destroyed"


# A 16-bit boot sector that writes to the isa-debug-exit port: QEMU exits at once where the accelerator works.
_BOOT_SECTOR = bytes([0xB0, 0x31, 0xE6, 0xF4, 0xF4, 0xEB, 0xFD]).ljust(510, b"\0") + b"\x55\xaa"
_PROBE_TIMEOUT = 5.0


def _kvm_works(conn: libvirt.virConnect, pool: libvirt.virStoragePool) -> bool:
    """Boot a boot sector as a transient KVM domain: it must exit by itself within seconds (here, KVM hangs)."""
    lv = libvirt_module()
    try:
        conn.getDomainCapabilities(None, None, None, "kvm", 0)
    except lv.libvirtError:
        return False  # libvirt says this host has no KVM
    sector = paths.cache_dir() / "probe" / "bootsector.img"
    if not sector.exists():
        atomic_write(sector, _BOOT_SECTOR)
    path, _ = upload_image(conn, pool, sector, hashlib.sha256(_BOOT_SECTOR).hexdigest())
    name = f"lkctl-probe-{os.getpid()}-{int(time.time() * 1000) % 100000}"
    xml = (
        f"<domain type='kvm' xmlns:qemu='{QEMU_NS}'><name>{name}</name><memory unit='MiB'>16</memory>"
        "<os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os><devices>"
        f"<disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='{escape(path)}'/>"
        "<target dev='hda' bus='ide'/><readonly/></disk><memballoon model='none'/></devices>"
        "<qemu:commandline><qemu:arg value='-device'/><qemu:arg value='isa-debug-exit,iobase=0xf4,iosize=0x04'/>"
        "</qemu:commandline></domain>"
    )
    try:
        dom = conn.createXML(xml, 0)
    except lv.libvirtError:
        return False
    deadline = time.monotonic() + _PROBE_TIMEOUT
    try:
        while time.monotonic() < deadline:
            try:
                if not dom.isActive():
                    return True
            except lv.libvirtError:
                return True  # a transient domain is gone once its QEMU exited
            time.sleep(0.1)
        return False
    finally:
        with contextlib.suppress(lv.libvirtError):
            dom.destroy()


def probe(conn: libvirt.virConnect, uri: str, pool: libvirt.virStoragePool, accel: str = "auto") -> LibvirtHostCaps:
    """What this host offers: arch, free memory, and the domain type guests really run under (probed once)."""
    arch = str(conn.getInfo()[0])
    arch = machine_arch(arch)
    if accel == "tcg":
        domain_type = "qemu"
    elif accel == "kvm" or arch != "x86_64":
        domain_type = "kvm" if accel == "kvm" else _kvm_listed(conn)
    else:
        key = hashlib.sha256(f"{uri}|{conn.getHostname()}|{conn.getLibVersion()}".encode()).hexdigest()[:16]
        memo = paths.cache_dir() / "probe" / f"libvirt-{key}"
        try:
            domain_type = memo.read_text().strip()
        except OSError:
            domain_type = "kvm" if _kvm_works(conn, pool) else "qemu"
            atomic_write(memo, domain_type)
    return LibvirtHostCaps(
        uri=uri,
        arch=arch,
        domain_type=domain_type,
        pool_path=_pool_path(pool),
        free_memory=int(conn.getFreeMemory()) // (1 << 20),
        version=int(conn.getLibVersion()),
    )


def _kvm_listed(conn: libvirt.virConnect) -> str:
    lv = libvirt_module()
    try:
        conn.getDomainCapabilities(None, None, None, "kvm", 0)
    except lv.libvirtError:
        return "qemu"
    return "kvm"


def domain_status(record: VmRecord) -> str:
    """libvirt's word on the VM: running, stopped, error, missing (domain gone) or unknown (host unreachable)."""
    try:
        with connection(record.libvirt["uri"], record.libvirt.get("known_hosts", "")) as conn:
            dom = lookup_domain(conn, record.libvirt["domain"])
            if dom is None:
                return "missing"
            status = domain_state(dom)
    except HostUnreachable:
        return "unknown"
    if status == "stopped" and record.exit_reason:
        return "error"
    return status

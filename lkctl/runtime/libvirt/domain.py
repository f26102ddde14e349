"""libvirt domain XML as data: `domain_xml(spec, host, files, record)` is a pure function with golden tests.

The same `VmSpec` that `qemu_argv` turns into a command line becomes a domain here. Every path in the XML is a path
on the *target* host (usually a volume in lkctl's storage pool there), so the caller resolves them first and hands
them in as `DomainFiles`; this module never talks to libvirt and never touches a file.

Networking is QEMU's user-mode stack added through `<qemu:commandline>`: libvirt 9.0's own `<interface
type='user'>` cannot forward ports (its `<portForward>` needs the passt backend, which is not installed on the
hosts we target), and forwards must bind the target host's 127.0.0.1 only. lkctl's record (id, name, image, ports,
the guest's public host key) lives in `<metadata>`, so any client of that libvirtd sees the same VMs.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Any

from lkctl.arch import guest_arch
from lkctl.errors import ConfigError, StateError
from lkctl.runtime.model import ImageFormat, Network, VmSpec, needs_uefi, volume_mounts, volumes_manifest
from lkctl.runtime.qemu import DATA_DISK_SERIAL

__all__ = [
    "METADATA_NS",
    "QEMU_NS",
    "DomainFiles",
    "FwCfgEntry",
    "LibvirtHostCaps",
    "domain_name",
    "domain_xml",
    "metadata_from_xml",
    "metadata_xml",
]

QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
METADATA_NS = "https://lkctl.dev/xmlns/vm/1"
_DOMAIN_PREFIX = "lkctl-"

# libvirt's <target bus=...> for the QEMU disk device an architecture boots from (lkctl.arch.GuestArch.disk_bus)
_LIBVIRT_BUS = {"ide-hd": "sata", "virtio-blk-pci": "virtio"}


@dataclass(frozen=True)
class LibvirtHostCaps:
    """Facts about one libvirt host that shape a domain (injected into the pure builder, like HostCaps)."""

    uri: str
    arch: str = "x86_64"  # "x86_64" | "aarch64"
    domain_type: str = "qemu"  # "kvm" where guests really run under KVM there, "qemu" (TCG) otherwise
    pool_path: str = "/var/lib/libvirt/lkctl"  # the storage pool's directory on that host
    free_memory: int = 0  # MiB the host reports free
    version: int = 0  # libvirt version, major * 1_000_000 + minor * 1000 + micro


@dataclass(frozen=True)
class FwCfgEntry:
    """One fw_cfg blob under opt/lkctl/: a file on the target host, or an inline value (public data only)."""

    name: str
    file: str = ""
    value: str = ""


@dataclass(frozen=True)
class DomainFiles:
    """Where the VM's files are on the target host (volumes of lkctl's pool there)."""

    kernel: str = ""
    initrd: str = ""
    image: str = ""  # ISO (read-only CD) or the base of `overlay`
    overlay: str = ""  # per-VM qcow2 over the disk image (or the squashfs root)
    data_disk: str = ""
    console: str = ""  # the serial console's file, kept by libvirt on the target host
    fw_cfg: tuple[FwCfgEntry, ...] = field(default=())


def domain_name(vm_id: str) -> str:
    """lkctl's domains are named `lkctl-<id>`: the name is unique per host and says who made the domain."""
    return f"{_DOMAIN_PREFIX}{vm_id}"


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    el = ET.SubElement(parent, tag, {k.rstrip("_"): v for k, v in attrs.items()})
    if text is not None:
        el.text = text
    return el


def _cmdline(spec: VmSpec, host: LibvirtHostCaps, root: str = "") -> str:
    words = spec.boot.cmdline.split()
    if not any(w.startswith("console=") for w in words):
        words.append(f"console={guest_arch(host.arch).console}")
    if root and not any(w.startswith("root=") for w in words):
        words.append(f"root={root}")
    words += spec.cmdline_extra.split()
    return " ".join(words)


def _os(root: ET.Element, spec: VmSpec, host: LibvirtHostCaps, files: DomainFiles) -> None:
    os_el = _sub(root, "os")
    _sub(os_el, "type", "hvm", arch=host.arch, machine=guest_arch(host.arch).qemu_machine)
    fmt = spec.boot.format
    if needs_uefi(spec, host.arch):
        os_el.set("firmware", "efi")
        fw = _sub(os_el, "firmware")
        _sub(fw, "feature", enabled="no", name="secure-boot")  # LinuxKit images are not signed
    if fmt is ImageFormat.KERNEL_INITRD:
        if not files.kernel or not files.initrd:
            raise ConfigError(f"{spec.boot.path}: a kernel+initrd image needs both a kernel and an initrd")
        _sub(os_el, "kernel", files.kernel)
        _sub(os_el, "initrd", files.initrd)
        _sub(os_el, "cmdline", _cmdline(spec, host))
    elif fmt is ImageFormat.KERNEL_SQUASHFS:
        if not files.kernel or not files.overlay:
            raise ConfigError(f"{spec.boot.path}: a kernel+squashfs image needs a kernel and its squashfs root")
        _sub(os_el, "kernel", files.kernel)
        _sub(os_el, "cmdline", _cmdline(spec, host, guest_arch(host.arch).root_device))
    else:
        _sub(os_el, "boot", dev="cdrom" if fmt is ImageFormat.ISO else "hd")


def _disk(devices: ET.Element, device: str, fmt: str, source: str, dev: str, bus: str) -> ET.Element:
    disk = _sub(devices, "disk", type_="file", device=device)
    driver = _sub(disk, "driver", name="qemu", type_=fmt)
    if device == "disk":
        driver.set("discard", "unmap")
    _sub(disk, "source", file=source)
    _sub(disk, "target", dev=dev, bus=bus)
    if device == "cdrom":
        _sub(disk, "readonly")
    return disk


def _disks(devices: ET.Element, spec: VmSpec, host: LibvirtHostCaps, files: DomainFiles) -> None:
    fmt = spec.boot.format
    # The same buses as qemu_argv (lkctl.arch.GuestArch): AHCI on q35 (LinuxKit expects /dev/sda, /dev/sr0),
    # virtio on aarch64's virt.
    arch = guest_arch(host.arch)
    dev, bus = arch.root_device.removeprefix("/dev/"), _LIBVIRT_BUS[arch.disk_bus]
    if fmt is ImageFormat.ISO:
        if not files.image:
            raise ConfigError(f"{spec.boot.path}: no ISO volume to boot")
        _disk(devices, "cdrom", "raw", files.image, dev, bus)
    elif fmt.is_disk or fmt is ImageFormat.KERNEL_SQUASHFS:
        if not files.overlay:
            raise ConfigError(f"{spec.boot.path}: a {fmt} image boots through a per-VM overlay, and none was given")
        _disk(devices, "disk", "qcow2", files.overlay, dev, bus)
    disk = spec.data_disk
    if disk is not None:
        if disk.format not in ("qcow2", "raw"):
            raise ConfigError(f"data disk format {disk.format!r}: use qcow2 or raw")
        if not files.data_disk:
            raise ConfigError("a data disk was asked for but no volume was given for it")
        el = _disk(devices, "disk", disk.format, files.data_disk, "vdb", "virtio")
        _sub(el, "serial", DATA_DISK_SERIAL)


def _filesystems(devices: ET.Element, spec: VmSpec) -> bool:
    """The 9p/virtiofs shares (host paths are on the target host). True when guest RAM must be shared memory."""
    shared = False
    for m in volume_mounts(spec):
        if m.fstype == "virtiofs":
            fs = _sub(devices, "filesystem", type_="mount", accessmode="passthrough")
            _sub(fs, "driver", type_="virtiofs")
            shared = True
        else:
            # mapped: the guest's owners and modes live in xattrs, so a guest root cannot plant setuid files
            # on the host; read-only shares need no xattrs (squash = QEMU's security_model=none).
            fs = _sub(devices, "filesystem", type_="mount", accessmode="squash" if m.volume.readonly else "mapped")
            _sub(fs, "driver", type_="path")
        _sub(fs, "source", dir=str(m.volume.host))
        _sub(fs, "target", dir=m.tag)
        if m.volume.readonly:
            _sub(fs, "readonly")
    return shared


def _netdev_args(spec: VmSpec) -> list[str]:
    if spec.network is Network.NONE:
        if spec.ssh_port or spec.ports:
            raise ConfigError("port forwards need a network: drop --network none or the --port/SSH forwards")
        return []
    if spec.network is not Network.USER:
        raise ConfigError(f"--network {spec.network} is not available through libvirt; use --network user")
    parts = ["user", "id=lknet0"]
    if spec.ssh_port:
        parts.append(f"hostfwd=tcp:127.0.0.1:{spec.ssh_port}-:22")
    for p in spec.ports:
        parts.append(f"hostfwd={p.proto}:{p.host_ip}:{p.host_port}-:{p.guest_port}")
    return ["-netdev", ",".join(parts), "-device", f"virtio-net-pci,netdev=lknet0,mac={spec.mac},bus=pcie.0,addr=0x10"]


def _metadata_element(record: dict[str, Any]) -> ET.Element:
    el = ET.Element(f"{{{METADATA_NS}}}vm")
    el.text = json.dumps(record, sort_keys=True)
    return el


def metadata_xml(record: dict[str, Any]) -> str:
    """lkctl's record as the `<metadata>` child element (JSON inside one namespaced element)."""
    return ET.tostring(_metadata_element(record), encoding="unicode")


def metadata_from_xml(text: str) -> dict[str, Any]:
    """The record stored by `metadata_xml` (from `virDomainGetMetadata` or a whole domain XML)."""
    try:
        # libvirtd's own output; expat (>= 2.4) expands no external entities and caps entity amplification
        root = ET.fromstring(text)  # noqa: S314
    except ET.ParseError as e:
        raise StateError(f"unreadable lkctl metadata in a libvirt domain: {e}") from None
    # virDomainGetMetadata returns the element without its namespace; a whole domain XML keeps it
    el = root if root.tag in ("vm", f"{{{METADATA_NS}}}vm") else root.find(f"metadata/{{{METADATA_NS}}}vm")
    if el is None or not el.text:
        raise StateError("the libvirt domain carries no lkctl metadata")
    try:
        data = json.loads(el.text)
    except ValueError as e:
        raise StateError(f"unreadable lkctl metadata in a libvirt domain: {e}") from None
    if not isinstance(data, dict):
        raise StateError("lkctl metadata in a libvirt domain is not a record")
    return data


def domain_xml(spec: VmSpec, host: LibvirtHostCaps, files: DomainFiles, record: dict[str, Any]) -> str:
    """The domain XML for `spec` on `host` (`virsh define` accepts it). Pure: same inputs, same text."""
    if spec.memory < 64:
        raise ConfigError(f"memory {spec.memory} MB is too small; give at least 64 (e.g. --memory 1024)")
    if spec.cpus < 1:
        raise ConfigError(f"cpus must be at least 1, got {spec.cpus}")
    guest_arch(host.arch)  # ConfigError for an architecture lkctl does not boot
    if host.domain_type not in ("kvm", "qemu"):
        raise ConfigError(f"libvirt domain type {host.domain_type!r}: use kvm or qemu")
    ET.register_namespace("qemu", QEMU_NS)
    ET.register_namespace("lkctl", METADATA_NS)
    root = ET.Element("domain", type=host.domain_type)
    _sub(root, "name", domain_name(spec.vm_id))
    if record.get("name"):
        _sub(root, "title", str(record["name"]))
    _sub(root, "description", f"lkctl VM {record.get('name') or spec.vm_id} ({record.get('image', '')})")
    meta = _sub(root, "metadata")
    meta.append(_metadata_element(record))
    _sub(root, "memory", str(spec.memory), unit="MiB")
    _sub(root, "vcpu", str(spec.cpus))
    _os(root, spec, host, files)
    features = _sub(root, "features")
    _sub(features, "acpi")
    if host.arch == "x86_64":
        _sub(features, "apic")
    # TCG's `maximum` is QEMU's -cpu max; under KVM the guest sees the host's CPU
    _sub(root, "cpu", mode="host-passthrough" if host.domain_type == "kvm" else "maximum")
    _sub(root, "clock", offset="utc")
    _sub(root, "on_poweroff", "destroy")
    _sub(root, "on_reboot", "restart")
    _sub(root, "on_crash", "destroy")
    devices = _sub(root, "devices")
    _disks(devices, spec, host, files)
    shared_memory = _filesystems(devices, spec)
    if not files.console:
        raise ConfigError("the VM's console needs a file on the target host")
    serial = _sub(devices, "serial", type_="file")
    _sub(serial, "source", path=files.console)
    _sub(serial, "target", port="0")
    rng = _sub(devices, "rng", model="virtio")
    _sub(rng, "backend", "/dev/urandom", model="random")
    _sub(devices, "memballoon", model="none")
    if shared_memory:
        # vhost-user devices need guest RAM virtiofsd can map: a shared memfd
        backing = ET.Element("memoryBacking")
        _sub(backing, "source", type_="memfd")
        _sub(backing, "access", mode="shared")
        root.insert([c.tag for c in root].index("vcpu") + 1, backing)
    fw_cfg = list(files.fw_cfg)
    if spec.volumes:
        fw_cfg.append(FwCfgEntry("volumes", value=volumes_manifest(spec)))
    if fw_cfg:
        sysinfo = _sub(root, "sysinfo", type_="fwcfg")
        for entry in fw_cfg:
            if bool(entry.file) == bool(entry.value):
                raise ConfigError(f"fw_cfg entry {entry.name}: give a file or a value")
            attrs = {"name": f"opt/lkctl/{entry.name}"} | ({"file": entry.file} if entry.file else {})
            _sub(sysinfo, "entry", entry.value or None, **attrs)
    args = _netdev_args(spec)
    if args:
        cmdline = _sub(root, f"{{{QEMU_NS}}}commandline")
        for arg in args:
            _sub(cmdline, f"{{{QEMU_NS}}}arg", value=arg)
    ET.indent(root, "  ")
    return ET.tostring(root, encoding="unicode") + "\n"

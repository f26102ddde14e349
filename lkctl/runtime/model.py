"""The neutral VM model every backend reads: what boots (`BootImage`), with what (`VmSpec`: memory, CPUs, ports,
volumes, disks, network), and the parsers of what users type for them (`--port`, `--volume`, `--network`).

Nothing here knows a hypervisor: QEMU's argv (lkctl.runtime.qemu), hyperkit's (lkctl.runtime.hyperkit) and
libvirt's domain XML (lkctl.runtime.libvirt.domain) are all made from these frozen dataclasses.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path, PurePosixPath

from lkctl.arch import GUEST_ARCHES, machine_arch
from lkctl.errors import ConfigError

__all__ = [
    "BootImage",
    "DataDisk",
    "ImageFormat",
    "Network",
    "PortForward",
    "UefiFirmware",
    "VmSpec",
    "Volume",
    "VolumeMount",
    "check_guest_path",
    "needs_uefi",
    "parse_network",
    "parse_port",
    "parse_volume",
    "volume_mounts",
    "volumes_manifest",
]


class ImageFormat(StrEnum):
    KERNEL_INITRD = "kernel+initrd"
    KERNEL_SQUASHFS = "kernel+squashfs"
    ISO = "iso"
    QCOW2 = "qcow2"
    RAW = "raw"
    VMDK = "vmdk"

    @property
    def is_disk(self) -> bool:
        """A whole-disk image (booted by firmware through a per-VM overlay)."""
        return self in (ImageFormat.QCOW2, ImageFormat.RAW, ImageFormat.VMDK)


class Network(StrEnum):
    """The guest's network. `user` reaches the outside and every service on the host's 127.0.0.1 (as 10.0.2.2);
    `restricted` reaches nothing (slirp `restrict=on`) while lkctl's forwards (SSH, --port) still work."""

    USER = "user"  # QEMU user-mode networking (slirp); vpnkit under hyperkit
    RESTRICTED = "restricted"  # slirp with restrict=on: no guest-initiated traffic to the host or beyond
    VMNET = "vmnet"  # macOS vmnet.framework (root): QEMU's vmnet-shared, hyperkit's virtio-net
    NONE = "none"


@dataclass(frozen=True)
class BootImage:
    """What the VM boots.

    For kernel+initrd and kernel+squashfs, `path` is the LinuxKit prefix (`<prefix>-kernel` etc.); for the other
    formats it is the image file. `uefi` says the image boots through UEFI firmware (LinuxKit's iso-efi, raw-efi,
    qcow2-efi); on aarch64 every ISO and disk boots through UEFI since `virt` has no BIOS.
    """

    format: ImageFormat
    path: Path
    kernel: Path | None = None
    initrd: Path | None = None
    cmdline: str = ""
    squashfs: Path | None = None  # kernel+squashfs: the root filesystem image
    uefi: bool = False
    # kernel+initrd: a disk whose ext4 root init mounts and makes the userland (the dev image); it boots through
    # the per-VM overlay, so the VM's writes persist across restarts and the base is never written
    rootdisk: Path | None = None
    rootdisk_format: str = "qcow2"

    @property
    def overlay_base(self) -> tuple[Path, str] | None:
        """The file (and its QEMU format) that boots through a per-VM overlay, or None for ISO/kernel+initrd."""
        if self.format.is_disk:
            return self.path, self.format.value
        if self.format is ImageFormat.KERNEL_INITRD and self.rootdisk is not None:
            return self.rootdisk, self.rootdisk_format
        if self.format is ImageFormat.KERNEL_SQUASHFS:
            if self.squashfs is None:
                raise ConfigError(f"{self.path}: a kernel+squashfs image needs its squashfs file")
            return self.squashfs, "raw"
        return None


@dataclass(frozen=True)
class PortForward:
    """A host→guest forward. The host address defaults to loopback: nothing is exposed unless asked."""

    host_port: int
    guest_port: int
    host_ip: str = "127.0.0.1"
    proto: str = "tcp"

    def __str__(self) -> str:
        return f"{self.host_ip}:{self.host_port}->{self.guest_port}/{self.proto}"


def parse_network(text: str) -> Network:
    """`--network user|restricted|none` (and `vmnet` on macOS)."""
    try:
        return Network(text.strip().lower())
    except ValueError:
        raise ConfigError(
            f"--network {text}: expected user, restricted or none (vmnet on macOS); see README Safety"
        ) from None


def parse_port(text: str) -> PortForward:
    """Parse `[HOST_IP:]HOST:GUEST[/tcp|udp]` (e.g. `8080:80`, `127.0.0.1:5353:53/udp`)."""
    spec, slash, proto = text.partition("/")
    proto = proto or ("" if slash else "tcp")
    if proto not in ("tcp", "udp"):
        raise ConfigError(f"--port {text}: protocol must be tcp or udp")
    parts = spec.rsplit(":", 2)
    if len(parts) == 2:
        host_ip, host, guest = "127.0.0.1", parts[0], parts[1]
    elif len(parts) == 3:
        host_ip, host, guest = parts
        host_ip = host_ip.strip("[]") or "127.0.0.1"
        try:
            address = ipaddress.ip_address(host_ip)
        except ValueError:
            raise ConfigError(f"--port {text}: {host_ip!r} is not an IP address") from None
        if address.version == 6:  # QEMU's user network (7.2) answers `Invalid host forwarding rule` to any
            raise ConfigError(f"--port {text}: forwards listen on IPv4 addresses only, e.g. 127.0.0.1 or 0.0.0.0")
    else:
        raise ConfigError(f"--port {text}: expected HOST:GUEST, e.g. --port 8080:80")
    try:
        hp, gp = int(host), int(guest)
    except ValueError:
        raise ConfigError(f"--port {text}: ports must be numbers, e.g. --port 8080:80") from None
    for p in (hp, gp):
        if not 1 <= p <= 65535:
            raise ConfigError(f"--port {text}: {p} is not a port number (1-65535)")
    return PortForward(hp, gp, host_ip, proto)


@dataclass(frozen=True)
class Volume:
    """A host directory shared into the guest at `guest` (absolute), read-only when `readonly`."""

    host: Path
    guest: str
    readonly: bool = False

    def __str__(self) -> str:
        return f"{self.host}:{self.guest}{':ro' if self.readonly else ''}"


def parse_volume(text: str, *, cwd: Path | None = None) -> Volume:
    """Parse `HOST:GUEST[:ro|:rw]`; HOST must be an existing directory (relative to `cwd`), GUEST absolute."""
    body, readonly = text, False
    head, sep, mode = text.rpartition(":")
    if sep and mode in ("ro", "rw"):
        body, readonly = head, mode == "ro"
    elif text.count(":") >= 2 and "/" not in mode:
        raise ConfigError(f"--volume {text}: unknown mode {mode!r}; the mode is ro or rw, e.g. ./src:/src:ro")
    host_text, sep, guest = body.rpartition(":")
    if not sep or not host_text or not guest:
        raise ConfigError(f"--volume {text}: expected HOST:GUEST[:ro], e.g. --volume ./src:/src:ro")
    host = Path(host_text).expanduser()
    if not host.is_absolute():
        host = (cwd or Path.cwd()) / host
    if not host.is_dir():
        raise ConfigError(f"--volume {text}: {host} is not a directory on this host")
    check_guest_path(guest, f"--volume {text}")
    return Volume(Path(os.path.normpath(host)), str(PurePosixPath(guest)), readonly)


def check_guest_path(guest: str, what: str) -> None:
    """Refuse a guest mount point that is relative, `/`, climbs with `..` or holds tabs/newlines."""
    path = PurePosixPath(guest)
    if not path.is_absolute() or path == PurePosixPath("/"):
        raise ConfigError(f"{what}: the guest path must be absolute and not /, e.g. /mnt/src")
    if ".." in path.parts or any(c in guest for c in "\t\n\r\0"):
        raise ConfigError(f"{what}: the guest path may not contain '..', tabs or newlines")


@dataclass(frozen=True)
class DataDisk:
    """A persistent data disk. Its file lives in the VM's state dir unless `path` is given; created if missing."""

    size: int  # bytes
    format: str = "qcow2"  # qcow2 | raw
    path: Path | None = None

    @property
    def file(self) -> Path:
        return self.path or Path("data.img" if self.format == "raw" else "data.qcow2")


@dataclass(frozen=True)
class UefiFirmware:
    """UEFI firmware: `code` is mapped read-only; `vars_template` is copied per VM (None: a combined image)."""

    code: Path
    vars_template: Path | None = None


@dataclass(frozen=True)
class VmSpec:
    """Everything about one VM that its hypervisor command line depends on."""

    vm_id: str
    boot: BootImage
    memory: int = 1024
    cpus: int = 1
    ssh_port: int = 0  # host port forwarded to the guest's 22; 0 = no SSH forward
    ports: tuple[PortForward, ...] = ()
    mac: str = "52:54:00:12:34:56"
    # fw_cfg entries handed to the guest at boot: (name under opt/lkctl/, host file)
    guest_files: tuple[tuple[str, Path], ...] = field(default=())
    cmdline_extra: str = ""
    daemonize: bool = True
    data_disk: DataDisk | None = None
    volumes: tuple[Volume, ...] = ()
    virtiofs: bool = False  # share read-write volumes over virtiofs (a virtiofsd per volume) instead of 9p
    firmware: UefiFirmware | None = None  # required when needs_uefi(spec, arch)
    network: Network = Network.USER
    vpnkit_socket: Path | None = None  # hyperkit only: vpnkit's ethernet socket


@dataclass(frozen=True)
class VolumeMount:
    """How one volume reaches the guest: its mount tag, filesystem type and (virtiofs) vhost-user socket."""

    volume: Volume
    tag: str
    fstype: str  # "9p" | "virtiofs"
    socket: str = ""  # virtiofs: the socket virtiofsd serves, relative to the state dir


def volume_mounts(spec: VmSpec) -> tuple[VolumeMount, ...]:
    """Tags `lkvol0..N` in order. Read-only volumes always use 9p: QEMU enforces `readonly` there, virtiofsd not."""
    guests: set[str] = set()
    out = []
    for i, v in enumerate(spec.volumes):
        check_guest_path(v.guest, f"volume {v}")
        if v.guest in guests:
            raise ConfigError(f"two volumes are mounted at {v.guest} in the guest")
        guests.add(v.guest)
        tag = f"lkvol{i}"
        if spec.virtiofs and not v.readonly:
            out.append(VolumeMount(v, tag, "virtiofs", f"virtiofs-{tag}.sock"))
        else:
            out.append(VolumeMount(v, tag, "9p"))
    return tuple(out)


def volumes_manifest(spec: VmSpec) -> str:
    """The guest's volume list: one `TAG<TAB>FSTYPE<TAB>ro|rw<TAB>GUEST_PATH` line each (path last: may hold spaces)."""
    return "".join(
        f"{m.tag}\t{m.fstype}\t{'ro' if m.volume.readonly else 'rw'}\t{m.volume.guest}\n" for m in volume_mounts(spec)
    )


def needs_uefi(spec: VmSpec, arch: str) -> bool:
    """Whether the boot goes through UEFI firmware (kernel boots never do: QEMU loads the kernel itself)."""
    fmt = spec.boot.format
    if fmt in (ImageFormat.KERNEL_INITRD, ImageFormat.KERNEL_SQUASHFS):
        return False
    row = GUEST_ARCHES.get(machine_arch(arch))
    return spec.boot.uefi or (row is not None and row.uefi_only)

"""QEMU command lines as data: `qemu_argv(spec, host)` is a pure function with golden tests.

Every path that lives in the VM's state directory is given relative to it (QEMU runs with that directory as its
working directory), which keeps unix-socket paths under the 108-byte limit wherever the state lives. The files the
argv names there (the boot overlay, the data disk, the UEFI variable store, the volume list) are made beforehand by
`lkctl.runtime.disks.prepare_vm_files`; this module never touches the file system.

Disk images are never opened for writing: a disk boots through a per-VM qcow2 overlay whose backing file is the
image, an ISO is a read-only CD, and UEFI firmware code is a read-only pflash next to a per-VM copy of its variables.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path, PurePosixPath

from lkctl.errors import ConfigError
from lkctl.runtime.host import Accel, HostCaps

__all__ = [
    "BOOT_OVERLAY",
    "CONSOLE_LOG",
    "CONSOLE_SOCKET",
    "DATA_DISK_SERIAL",
    "PIDFILE",
    "QMP_SOCKET",
    "ROOT_DISK_SERIAL",
    "UEFI_VARS",
    "VOLUMES_FILE",
    "BootImage",
    "DataDisk",
    "ImageFormat",
    "Network",
    "PortForward",
    "UefiFirmware",
    "VmSpec",
    "Volume",
    "VolumeMount",
    "needs_uefi",
    "parse_network",
    "parse_port",
    "parse_volume",
    "qemu_argv",
    "volume_mounts",
    "volumes_manifest",
]

PIDFILE = "qemu.pid"
QMP_SOCKET = "qmp.sock"
CONSOLE_LOG = "console.log"
CONSOLE_SOCKET = "console.sock"  # the serial console, for one interactive client at a time; also logged
BOOT_OVERLAY = "boot.qcow2"  # per-VM overlay over a disk image (or a kernel+squashfs root)
UEFI_VARS = "efivars.fd"  # per-VM copy of the firmware's variable store
VOLUMES_FILE = "volumes"  # tag → guest path list, handed to the guest as fw_cfg opt/lkctl/volumes
DATA_DISK_SERIAL = "lkctl-data"  # the guest finds the data disk as /dev/disk/by-id/virtio-lkctl-data
ROOT_DISK_SERIAL = "lkctl-root"  # a kernel+initrd boot's persistent root disk (init mounts it on /sysroot)


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
    spec, _, proto = text.partition("/")
    proto = proto or "tcp"
    if proto not in ("tcp", "udp"):
        raise ConfigError(f"--port {text}: protocol must be tcp or udp")
    parts = spec.rsplit(":", 2)
    if len(parts) == 2:
        host_ip, host, guest = "127.0.0.1", parts[0], parts[1]
    elif len(parts) == 3:
        host_ip, host, guest = parts
        host_ip = host_ip.strip("[]") or "127.0.0.1"
        try:
            ipaddress.ip_address(host_ip)
        except ValueError:
            raise ConfigError(f"--port {text}: {host_ip!r} is not an IP address") from None
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
    _check_guest_path(guest, f"--volume {text}")
    return Volume(Path(os.path.normpath(host)), str(PurePosixPath(guest)), readonly)


def _check_guest_path(guest: str, what: str) -> None:
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
        _check_guest_path(v.guest, f"volume {v}")
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
    return spec.boot.uefi or arch == "aarch64"


def _machine(host: HostCaps) -> list[str]:
    accel = host.accel.value
    if host.arch == "x86_64":
        machine = f"q35,accel={accel}"
        cpu = "host" if host.accel in (Accel.KVM, Accel.HVF) else "max"
    elif host.arch == "aarch64":
        if host.os == "darwin":
            machine = f"virt,highmem=off,accel={accel}"  # HVF on Apple Silicon: a 36-bit IPA space on M1/M2
        elif host.accel is Accel.KVM:
            machine = f"virt,gic-version=host,accel={accel}"
        else:
            machine = f"virt,gic-version=max,accel={accel}"
        # TCG's `max` emulates pointer authentication with the architected QARMA cipher, 4x slower to boot
        cpu = "host" if host.accel in (Accel.KVM, Accel.HVF) else "max,pauth-impdef=on"
    else:
        raise ConfigError(f"unsupported architecture {host.arch}: lkctl runs x86_64 and aarch64 guests")
    return ["-machine", machine, "-cpu", cpu]


def _console_arg(host: HostCaps) -> str:
    return "console=ttyS0" if host.arch == "x86_64" else "console=ttyAMA0"


def _kernel_cmdline(spec: VmSpec, host: HostCaps, root: str = "") -> str:
    words = spec.boot.cmdline.split()
    if not any(w.startswith("console=") for w in words):
        words.append(_console_arg(host))
    if root and not any(w.startswith("root=") for w in words):
        words.append(f"root={root}")
    words += spec.cmdline_extra.split()
    return " ".join(words)


def _netdev(spec: VmSpec, host: HostCaps) -> list[str]:
    if spec.network is Network.NONE:
        if spec.ssh_port or spec.ports:
            raise ConfigError("port forwards need a network: drop --network none or the --port/SSH forwards")
        return []
    if spec.network is Network.VMNET:
        if host.os != "darwin":
            raise ConfigError("--network vmnet exists on macOS only; use --network user")
        if spec.ssh_port or spec.ports:
            raise ConfigError("--network vmnet gives the guest its own address: port forwards need --network user")
        netdev = "vmnet-shared,id=net0"
    else:
        parts = ["user", "id=net0"]
        if spec.network is Network.RESTRICTED:
            parts.append("restrict=on")  # hostfwd still reaches the guest; the guest reaches nothing
        if spec.ssh_port:
            parts.append(f"hostfwd=tcp:127.0.0.1:{spec.ssh_port}-:22")
        for p in spec.ports:
            parts.append(f"hostfwd={p.proto}:{p.host_ip}:{p.host_port}-:{p.guest_port}")
        netdev = ",".join(parts)
    return ["-netdev", netdev, "-device", f"virtio-net-pci,netdev=net0,mac={spec.mac}"]


def _qemu_path_arg(path: Path | str) -> str:
    text = os.fspath(path)
    # QEMU option values are comma-separated: a literal comma is written twice
    return text.replace(",", ",,")


def _firmware(spec: VmSpec, host: HostCaps) -> list[str]:
    if not needs_uefi(spec, host.arch):
        return []
    fw = spec.firmware
    if fw is None:
        pkg = "ovmf" if host.arch == "x86_64" else "qemu-efi-aarch64"
        raise ConfigError(
            f"{spec.boot.path}: this {spec.boot.format} image boots through UEFI firmware and none was found; "
            f"install it (Debian: apt-get install {pkg}; macOS: brew install qemu ships edk2 firmware)"
        )
    if fw.vars_template is None:
        return ["-bios", _qemu_path_arg(fw.code)]  # a combined image: QEMU maps it as ROM, nothing is written
    return [
        "-drive", f"if=pflash,format=raw,unit=0,file={_qemu_path_arg(fw.code)},readonly=on",
        "-drive", f"if=pflash,format=raw,unit=1,file={UEFI_VARS}",
    ]  # fmt: skip


def _boot(spec: VmSpec, host: HostCaps) -> list[str]:
    boot = spec.boot
    if boot.format is ImageFormat.KERNEL_INITRD:
        if boot.kernel is None or boot.initrd is None:
            raise ConfigError(f"{boot.path}: a kernel+initrd image needs both a kernel and an initrd")
        argv = [
            "-kernel", _qemu_path_arg(boot.kernel),
            "-initrd", _qemu_path_arg(boot.initrd),
            "-append", _kernel_cmdline(spec, host),
        ]  # fmt: skip
        if boot.rootdisk is not None:
            argv += [
                "-drive", f"file={BOOT_OVERLAY},format=qcow2,if=none,id=root0,discard=unmap",
                "-device", f"virtio-blk-pci,drive=root0,serial={ROOT_DISK_SERIAL}",
            ]  # fmt: skip
        return argv
    if boot.format is ImageFormat.ISO:
        # -cdrom is an AHCI CD (/dev/sr0) on q35 and a read-only virtio disk (/dev/vda) on virt, as LinuxKit
        # expects (its iso-efi appends root=/dev/vda on aarch64); the medium is read-only either way.
        argv = ["-cdrom", _qemu_path_arg(boot.path)]
        return [*argv, "-boot", "d"] if host.arch == "x86_64" else argv
    if boot.format is ImageFormat.KERNEL_SQUASHFS and (boot.kernel is None or boot.squashfs is None):
        raise ConfigError(f"{boot.path}: a kernel+squashfs image needs a kernel and a squashfs file")
    # Disks and the squashfs root boot through the per-VM overlay. On x86 the disk is AHCI (/dev/sda, what
    # LinuxKit's images and its `root=/dev/sda` expect); on aarch64 virtio-blk (/dev/vda).
    bus = "ide-hd" if host.arch == "x86_64" else "virtio-blk-pci"
    argv = [
        "-drive", f"file={BOOT_OVERLAY},format=qcow2,if=none,id=boot0,discard=unmap",
        "-device", f"{bus},drive=boot0,bootindex=0",
    ]  # fmt: skip
    if boot.format is ImageFormat.KERNEL_SQUASHFS:
        assert boot.kernel is not None
        root = "/dev/sda" if host.arch == "x86_64" else "/dev/vda"
        argv += ["-kernel", _qemu_path_arg(boot.kernel), "-append", _kernel_cmdline(spec, host, root)]
    return argv


def _data_disk(spec: VmSpec) -> list[str]:
    disk = spec.data_disk
    if disk is None:
        return []
    if disk.format not in ("qcow2", "raw"):
        raise ConfigError(f"data disk format {disk.format!r}: use qcow2 or raw")
    return [
        "-drive", f"file={_qemu_path_arg(disk.file)},format={disk.format},if=none,id=data0,discard=unmap",
        "-device", f"virtio-blk-pci,drive=data0,serial={DATA_DISK_SERIAL}",
    ]  # fmt: skip


def _volumes(spec: VmSpec, host: HostCaps) -> tuple[list[str], list[str]]:
    """(memory backend args, device args) for the volumes."""
    mounts = volume_mounts(spec)
    backend: list[str] = []
    devices: list[str] = []
    for i, m in enumerate(mounts):
        if m.fstype == "virtiofs":
            if host.os != "linux":
                raise ConfigError("virtiofs volumes need a Linux host (virtiofsd and memfd); 9p works everywhere")
            devices += [
                "-chardev", f"socket,id=vfs{i},path={m.socket}",
                "-device", f"vhost-user-fs-pci,chardev=vfs{i},tag={m.tag}",
            ]  # fmt: skip
            continue
        # mapped-xattr: the guest's owners, modes and special files live in xattrs, so a guest root can never
        # plant a setuid-root binary or a device node in the host directory (with `none`, and QEMU running as
        # root, it could). Read-only shares use `none`: nothing is created, and no xattr support is needed.
        # fmode/dmode: the host-side modes of what the guest creates (QEMU's default 0600/0700 would hide the
        # guest's files from the host user's group; a daemonized QEMU's own umask 027 makes them 0640/0750);
        # the guest's own modes stay in the xattrs.
        model = "none,readonly=on" if m.volume.readonly else "mapped-xattr,fmode=0644,dmode=0755"
        devices += [
            "-fsdev", f"local,id=fsdev{i},path={_qemu_path_arg(m.volume.host)},security_model={model},multidevs=remap",
            "-device", f"virtio-9p-pci,fsdev=fsdev{i},mount_tag={m.tag}",
        ]  # fmt: skip
    if any(m.fstype == "virtiofs" for m in mounts):
        # vhost-user devices need guest RAM the daemon can map: a shared memfd backing the only NUMA node
        backend = [
            "-object", f"memory-backend-memfd,id=mem,size={spec.memory}M,share=on",
            "-numa", "node,memdev=mem",
        ]  # fmt: skip
    if mounts:
        devices += ["-fw_cfg", f"name=opt/lkctl/volumes,file={VOLUMES_FILE}"]
    return backend, devices


def qemu_argv(spec: VmSpec, host: HostCaps) -> list[str]:
    """The full QEMU argv for `spec` on `host`. Pure: same inputs, same list, in a stable order."""
    if spec.memory < 64:
        raise ConfigError(f"memory {spec.memory} MB is too small; give at least 64 (e.g. --memory 1024)")
    if spec.cpus < 1:
        raise ConfigError(f"cpus must be at least 1, got {spec.cpus}")
    backend, volume_args = _volumes(spec, host)
    argv = [
        host.qemu,
        "-name", f"lkctl-{spec.vm_id},process=lkctl-{spec.vm_id}",
        *_machine(host),
        "-smp", str(spec.cpus),
        "-m", str(spec.memory),
        *backend,
        "-nodefaults", "-no-user-config", "-display", "none",
        "-pidfile", PIDFILE,
        "-qmp", f"unix:{QMP_SOCKET},server=on,wait=off",
        # a socket to attach to interactively (dev.shell --console) that also copies everything to the log
        "-chardev", f"socket,id=console0,path={CONSOLE_SOCKET},server=on,wait=off,logfile={CONSOLE_LOG}",
        "-serial", "chardev:console0",
        *_firmware(spec, host),
        "-object", "rng-random,id=rng0,filename=/dev/urandom",
        "-device", "virtio-rng-pci,rng=rng0",
        *_netdev(spec, host),
    ]  # fmt: skip
    for name, path in spec.guest_files:
        argv += ["-fw_cfg", f"name=opt/lkctl/{name},file={_qemu_path_arg(path)}"]
    argv += _boot(spec, host)
    argv += _data_disk(spec)
    argv += volume_args
    if spec.daemonize:
        argv.append("-daemonize")
    return argv

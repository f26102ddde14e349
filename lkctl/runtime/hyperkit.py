"""Hyperkit command lines (macOS on Intel) as data, and the choice between QEMU and hyperkit.

The Go tool's hyperkit argv could not boot (no `-f` firmware), handed qcow2 to virtio-blk as raw and put port
forwards on virtio-net, which takes none. This one boots the way LinuxKit does:
- kernel+initrd (and kernel+squashfs) through hyperkit's kexec loader: `-f kexec,<kernel>,<initrd>,<cmdline>`;
- ISOs and raw disks through a UEFI boot ROM (`-f bootrom,<firmware>,,`), bhyve's UEFI build (not QEMU's edk2);
- raw disks only: hyperkit's qcow2 support is a build option, so qcow2/vmdk are refused with the conversion to run.
  The raw image is booted from a copy-on-write clone in the state dir (`prepare_vm_files`), never in place;
- networking through vpnkit (user mode, port forwards via vpnkit's control socket) or vmnet (needs root);
- hyperkit has no fw_cfg: the guest files (SSH keys) ride on a small ISO attached as an AHCI CD;
- no 9p of its own: hyperkit's virtio-9p talks to an external 9P server, so `--volume` needs QEMU.
Paths are relative to the VM's state dir (hyperkit runs there) and may not contain commas: hyperkit cannot
escape them.
"""

from __future__ import annotations

import os
import platform
import shutil
import uuid
from enum import StrEnum
from pathlib import Path

from lkctl import proc
from lkctl.errors import ConfigError
from lkctl.runtime.host import HostCaps
from lkctl.runtime.qemu import PIDFILE, ImageFormat, Network, VmSpec, qemu_argv

__all__ = [
    "CONSOLE_RING",
    "CONSOLE_TTY",
    "GUEST_FILES_ISO",
    "HYPERKIT_BOOT_DISK",
    "READY_VSOCK_PORT",
    "Hypervisor",
    "choose_hypervisor",
    "detect_hypervisor",
    "guest_files_iso",
    "hyperkit_argv",
    "hypervisor_argv",
    "read_console_ring",
]

HYPERKIT_BOOT_DISK = "boot.img"  # the VM's clone of a raw image
GUEST_FILES_ISO = "guest-files.iso"  # what QEMU passes with fw_cfg, as an ISO (volume id LKCTL)
CONSOLE_TTY = "tty"  # hyperkit writes the console pty's name here
CONSOLE_RING = "console-ring"  # the last 64 KiB of console output, a ring buffer hyperkit mmaps
# The guest's init connects to the host (CID 2) on this vsock port when it is ready; hyperkit forwards the
# connection to the unix socket `00000002.<port as 8 hex digits>` in the state dir, where lkctl listens.
READY_VSOCK_PORT = 0x4C4B
_GUEST_CID = 3
_UUID_NAMESPACE = uuid.UUID("6c6b6374-6c00-4000-8000-68797065726b")


class Hypervisor(StrEnum):
    QEMU = "qemu"
    HYPERKIT = "hyperkit"


def _no_comma(path: Path | str, what: str) -> str:
    text = os.fspath(path)
    if "," in text:
        raise ConfigError(f"{what} {text}: hyperkit cannot take a path containing a comma; rename or move it")
    return text


def _network(spec: VmSpec, vm_uuid: str) -> list[str]:
    if spec.network is Network.NONE:
        if spec.ssh_port or spec.ports:
            raise ConfigError("port forwards need a network: drop --network none or the --port/SSH forwards")
        return []
    if spec.network is Network.VMNET:
        if spec.ssh_port or spec.ports:
            raise ConfigError(
                "hyperkit with vmnet gives the guest its own address and forwards no ports; "
                "port forwards (and lkctl's SSH) need vpnkit or --hypervisor qemu"
            )
        return ["-s", "1:0,virtio-net"]
    if spec.vpnkit_socket is None:
        raise ConfigError(
            "hyperkit has no user-mode networking of its own: it needs vpnkit (Docker Desktop ships one, or "
            "`brew install vpnkit`), and no vpnkit is running; start one, use --network vmnet as root, "
            "or use --hypervisor qemu"
        )
    sock = _no_comma(spec.vpnkit_socket, "vpnkit socket")
    return ["-s", f"1:0,virtio-vpnkit,path={sock},uuid={vm_uuid}"]


def _cmdline(spec: VmSpec, root: str = "") -> str:
    words = spec.boot.cmdline.split()
    if not any(w.startswith("console=") for w in words):
        words = ["earlyprintk=serial", "console=ttyS0", *words]
    if root and not any(w.startswith("root=") for w in words):
        words.append(f"root={root}")
    return " ".join([*words, *spec.cmdline_extra.split()])


def _bootrom(spec: VmSpec) -> list[str]:
    if spec.firmware is None:
        raise ConfigError(
            f"{spec.boot.path}: hyperkit boots {spec.boot.format} images only through a UEFI boot ROM (bhyve's "
            f"UEFI.fd, e.g. Docker Desktop's Contents/Resources/uefi/UEFI.fd) and none was given; "
            f"or use --hypervisor qemu"
        )
    return ["-f", f"bootrom,{_no_comma(spec.firmware.code, 'firmware')},,"]


def _boot(spec: VmSpec) -> tuple[list[str], list[str]]:
    """(slot-2 device, -f loader) for the boot image."""
    boot = spec.boot
    fmt = boot.format
    if fmt is ImageFormat.KERNEL_INITRD:
        if boot.kernel is None or boot.initrd is None:
            raise ConfigError(f"{boot.path}: a kernel+initrd image needs both a kernel and an initrd")
        if boot.rootdisk is not None:  # it needs a per-VM qcow2 overlay, which hyperkit cannot open
            raise ConfigError(f"{boot.path}: an image with a root disk (the dev image) needs --hypervisor qemu")
        kernel, initrd = _no_comma(boot.kernel, "kernel"), _no_comma(boot.initrd, "initrd")
        return [], ["-f", f"kexec,{kernel},{initrd},{_cmdline(spec)}"]
    if fmt is ImageFormat.KERNEL_SQUASHFS:
        if boot.kernel is None or boot.squashfs is None:
            raise ConfigError(f"{boot.path}: a kernel+squashfs image needs a kernel and a squashfs file")
        squashfs = _no_comma(boot.squashfs, "squashfs")
        # squashfs is read-only by nature; `ro` makes hyperkit open the image read-only too
        return (
            ["-s", f"2:0,virtio-blk,{squashfs},ro"],
            ["-f", f"kexec,{_no_comma(boot.kernel, 'kernel')},,{_cmdline(spec, '/dev/vda')}"],
        )
    if fmt is ImageFormat.ISO:
        return ["-s", f"2:0,ahci-cd,{_no_comma(boot.path, 'ISO')}"], _bootrom(spec)
    if fmt is ImageFormat.RAW:
        return ["-s", f"2:0,virtio-blk,{HYPERKIT_BOOT_DISK}"], _bootrom(spec)
    raise ConfigError(
        f"{boot.path}: hyperkit cannot boot {fmt} images (its qcow2 support is a build option); convert it with "
        f"`qemu-img convert -O raw {boot.path} {boot.path.with_suffix('.img')}` or use --hypervisor qemu"
    )


def hyperkit_argv(spec: VmSpec, host: HostCaps, *, binary: str = "hyperkit") -> list[str]:
    """The full hyperkit argv for `spec`. Pure; hyperkit runs in the foreground, so the runtime detaches it."""
    if host.os != "darwin" or host.arch != "x86_64":
        raise ConfigError(f"hyperkit requires macOS on Intel (this host is {host.os}/{host.arch}); use QEMU")
    if spec.memory < 64:
        raise ConfigError(f"memory {spec.memory} MB is too small; give at least 64 (e.g. --memory 1024)")
    if spec.cpus < 1:
        raise ConfigError(f"cpus must be at least 1, got {spec.cpus}")
    if spec.volumes:
        raise ConfigError(
            "hyperkit cannot share host directories by itself (its virtio-9p needs an external 9P server); "
            "use --hypervisor qemu for --volume"
        )
    if spec.virtiofs:
        raise ConfigError("virtiofs needs QEMU on Linux; hyperkit cannot use it")
    vm_uuid = str(uuid.uuid5(_UUID_NAMESPACE, spec.vm_id))
    media, loader = _boot(spec)
    argv = [
        binary, "-A", "-u",  # -A: ACPI tables (so the guest can power off), -u: the RTC keeps UTC
        "-F", PIDFILE,
        "-c", str(spec.cpus),
        "-m", f"{spec.memory}M",
        "-U", vm_uuid,  # vpnkit derives the guest's MAC (and so its address) from it: stable per VM
        "-s", "0:0,hostbridge",
        "-s", "31,lpc",
        *_network(spec, vm_uuid),
        *media,
    ]  # fmt: skip
    disk = spec.data_disk
    if disk is not None:
        if disk.format != "raw":
            raise ConfigError("hyperkit attaches raw data disks only: use --disk size=SIZE,format=raw")
        argv += ["-s", f"3:0,virtio-blk,{_no_comma(disk.file, 'data disk')}"]
    argv += ["-s", f"4,virtio-sock,guest_cid={_GUEST_CID},path=."]
    argv += ["-s", "5,virtio-rnd"]
    if spec.guest_files:
        argv += ["-s", f"6,ahci-cd,{GUEST_FILES_ISO}"]
    argv += ["-l", f"com1,autopty={CONSOLE_TTY},log={CONSOLE_RING}"]
    argv += loader
    return argv


def hypervisor_argv(spec: VmSpec, host: HostCaps, hypervisor: str, *, hyperkit: str = "hyperkit") -> list[str]:
    """The argv for `spec` under the chosen hypervisor ("qemu" or "hyperkit")."""
    if hypervisor == Hypervisor.QEMU:
        return qemu_argv(spec, host)
    if hypervisor == Hypervisor.HYPERKIT:
        return hyperkit_argv(spec, host, binary=hyperkit)
    raise ConfigError(f"unknown hypervisor {hypervisor!r}: use qemu or hyperkit")


def choose_hypervisor(
    requested: str, host_os: str, host_arch: str = "x86_64", *, have_qemu: bool = True, have_hyperkit: bool = False
) -> Hypervisor:
    """Which hypervisor to run: QEMU everywhere it is installed; hyperkit on Intel Macs when asked for, or when
    QEMU is missing there. `requested` is auto, qemu or hyperkit."""
    intel_mac = host_os == "darwin" and host_arch == "x86_64"
    if requested == "hyperkit":
        if not intel_mac:
            raise ConfigError(f"hyperkit requires macOS on Intel (this host is {host_os}/{host_arch}); use qemu")
        if not have_hyperkit:
            raise ConfigError("hyperkit not found on PATH; install it with: brew install hyperkit")
        return Hypervisor.HYPERKIT
    if requested == "qemu":
        if not have_qemu:
            raise ConfigError(f"QEMU not found on PATH; install it ({_qemu_hint(host_os)})")
        return Hypervisor.QEMU
    if requested != "auto":
        raise ConfigError(f"unknown hypervisor {requested!r}: use auto, qemu or hyperkit")
    if have_qemu:
        return Hypervisor.QEMU
    if intel_mac and have_hyperkit:
        return Hypervisor.HYPERKIT
    raise ConfigError(f"no hypervisor found: install QEMU ({_qemu_hint(host_os)})")


def _qemu_hint(host_os: str) -> str:
    return "brew install qemu" if host_os == "darwin" else "sudo apt-get install qemu-system-x86 qemu-utils"


def detect_hypervisor(requested: str = "auto", arch: str = "") -> Hypervisor:
    """`choose_hypervisor` for this host: what is installed decides."""
    machine = arch or {"amd64": "x86_64", "arm64": "aarch64"}.get(platform.machine().lower(), platform.machine())
    return choose_hypervisor(
        requested,
        platform.system().lower(),
        machine,
        have_qemu=shutil.which(f"qemu-system-{machine}") is not None,
        have_hyperkit=shutil.which("hyperkit") is not None,
    )


def guest_files_iso(files: tuple[tuple[str, Path], ...], state_dir: Path) -> Path:
    """Write GUEST_FILES_ISO: each (name, file) at `name` on an ISO with volume id LKCTL (hyperkit's fw_cfg)."""
    for name, _ in files:
        if name.startswith("/") or ".." in name.split("/") or "=" in name:
            raise ConfigError(f"guest file name {name!r} must be a relative path without '..' or '='")
    dest = state_dir / GUEST_FILES_ISO
    tmp = state_dir / f".{GUEST_FILES_ISO}.tmp"
    grafts = [f"{name}={os.fspath(path)}" for name, path in files]
    proc.run(
        [proc.find_program("xorriso"), "-as", "mkisofs", "-quiet", "-R", "-V", "LKCTL", "-o", tmp.name,
         "-graft-points", *grafts],
        cwd=state_dir, what="making the guest files ISO",
    )  # fmt: skip
    os.replace(tmp, dest)
    return dest


def read_console_ring(path: Path) -> bytes:
    """The console output in hyperkit's ring file (unwritten bytes are NUL; once it wraps, order is lost)."""
    try:
        return path.read_bytes().replace(b"\0", b"")
    except FileNotFoundError:
        return b""

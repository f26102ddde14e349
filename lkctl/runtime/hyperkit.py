"""Hyperkit command lines (macOS on Intel) as data, and the choice between QEMU and hyperkit.

`hyperkit_argv` builds what LinuxKit's `linuxkit run hyperkit --console-file --state .` builds for the same
inputs (src/cmd/linuxkit/run_hyperkit.go and moby/hyperkit's go/hyperkit.go `buildArgs`: same option order, slots
numbered in the same sequence); the golden tests in tests/unit/test_hyperkit_argv.py pin that. lkctl's deviations,
each for a reason:
- the pidfile is `qemu.pid` (lkctl's state layout reads one pidfile name for every hypervisor);
- the squashfs root disk is opened `ro`: it is the shared image, and the guest is untrusted;
- lkctl also boots raw UEFI disks (a per-VM clone, `prepare_vm_files`) through the boot ROM; LinuxKit boots only
  ISOs that way. qcow2/vmdk are refused with the conversion to run (hyperkit's qcow2 support is a build option);
- the guest files (SSH keys) ride on an ISO where LinuxKit puts its metadata ISO (`--data`): hyperkit has no fw_cfg;
- the guest gets a fixed address from its own vpnkit (LinuxKit's `--ip`), see lkctl.runtime.vpnkit.
Networking is LinuxKit's `vpnkit` mode (lkctl starts a vpnkit per VM; port forwards over its port socket), an
existing vpnkit's ethernet socket (`VmSpec.vpnkit_socket`, no port forwards), vmnet (root), or none. There is no
`--volume` under hyperkit: its virtio-9p needs an external 9P server, which only vpnkit's port socket provides.
Paths are relative to the VM's state dir (hyperkit runs there) and may not contain commas: hyperkit cannot
escape them.

NEVER EXECUTED: no hyperkit runs on this project's Linux machines. Everything here is pure and unit-tested; the
start path (vm.py) runs hyperkit detached with vpnkit as a recorded helper, untested on a Mac.
"""

from __future__ import annotations

import os
import platform
import shutil
import uuid
from enum import StrEnum
from pathlib import Path

from lkctl import proc
from lkctl.arch import machine_arch
from lkctl.errors import ConfigError
from lkctl.runtime.host import HostCaps
from lkctl.runtime.model import ImageFormat, Network, VmSpec
from lkctl.runtime.qemu import CONSOLE_LOG, PIDFILE
from lkctl.runtime.vpnkit import VPNKIT_FORWARDER_VSOCK_PORT, VpnkitLink, own_vpnkit_link

__all__ = [
    "CONSOLE_RING",
    "CONSOLE_TTY",
    "GUEST_FILES_ISO",
    "HYPERKIT_BOOT_DISK",
    "READY_VSOCK_PORT",
    "Hypervisor",
    "choose_hypervisor",
    "console_file",
    "detect_hypervisor",
    "guest_files_iso",
    "hyperkit_argv",
    "read_console",
    "read_console_ring",
    "require_hypervisor",
    "vm_uuid",
    "vpnkit_link",
]

HYPERKIT_BOOT_DISK = "boot.img"  # the VM's clone of a raw image
GUEST_FILES_ISO = "guest-files.iso"  # what QEMU passes with fw_cfg, as an ISO (volume id LKCTL)
CONSOLE_TTY = "tty"  # hyperkit writes the console pty's name here
CONSOLE_RING = "console-ring"  # the last 64 KiB of console output, a ring buffer hyperkit mmaps
# The guest's init connects to the host (CID 2) on this vsock port when it is ready; hyperkit forwards the
# connection to the unix socket `00000002.<port as 8 hex digits>` in the state dir, where lkctl listens.
READY_VSOCK_PORT = 0x4C4B
_GUEST_CID = 3
_STATE = "."  # hyperkit runs in the VM's state dir: LinuxKit's `--state .`
_UUID_NAMESPACE = uuid.UUID("6c6b6374-6c00-4000-8000-68797065726b")


class Hypervisor(StrEnum):
    QEMU = "qemu"
    HYPERKIT = "hyperkit"


def vm_uuid(vm_id: str) -> str:
    """The VM's DMI UUID (`-U`, the guest's /sys/class/dmi/id/product_uuid): LinuxKit makes a random one per run,
    lkctl derives it from the VM id so a restart keeps it."""
    return str(uuid.uuid5(_UUID_NAMESPACE, vm_id))


def _no_comma(path: Path | str, what: str) -> str:
    text = os.fspath(path)
    if "," in text:
        raise ConfigError(f"{what} {text}: hyperkit cannot take a path containing a comma; rename or move it")
    return text


def vpnkit_link(spec: VmSpec) -> VpnkitLink | None:
    """Which vpnkit the VM uses: an existing one's ethernet socket when `spec.vpnkit_socket` names one, else the
    VM's own (started by lkctl); None unless the network is user-mode."""
    if spec.network is not Network.USER:
        return None
    if spec.vpnkit_socket is not None:
        from lkctl.runtime.vpnkit import vpnkit_uuid

        return VpnkitLink(os.fspath(spec.vpnkit_socket), uuid=vpnkit_uuid(spec.vm_id))
    return own_vpnkit_link(spec.vm_id)


def _check_network(spec: VmSpec, link: VpnkitLink | None) -> None:
    forwards = bool(spec.ssh_port or spec.ports)
    if spec.network is Network.RESTRICTED:
        raise ConfigError("--network restricted needs QEMU's user network: use --hypervisor qemu")
    if spec.network is Network.NONE and forwards:
        raise ConfigError("a VM without a network cannot have port forwards (nor lkctl's SSH)")
    if spec.network is Network.VMNET and forwards:
        raise ConfigError(
            "hyperkit with vmnet gives the guest its own address and forwards no ports; "
            "port forwards (and lkctl's SSH) need vpnkit or --hypervisor qemu"
        )
    if link is not None and forwards and not link.port_control:
        raise ConfigError(
            f"the vpnkit at {link.ethernet} was given without its port socket, so no port can be published "
            f"(and lkctl's SSH needs one); leave the vpnkit socket unset so lkctl starts the VM's own vpnkit"
        )


def _cmdline(spec: VmSpec, root: str = "") -> str:
    """LinuxKit's kexec command line: `earlyprintk=serial ` + the image's cmdline (+ ` root=/dev/vda` for squashfs).
    lkctl adds console=ttyS0 when the image names no console (the console ring is COM1) and its own extras."""
    words = spec.boot.cmdline.split()
    if not any(w.startswith("console=") for w in words):
        words.append("console=ttyS0")
    if root:
        words.append(f"root={root}")
    return " ".join(["earlyprintk=serial", *words, *spec.cmdline_extra.split()])


def _bootrom(spec: VmSpec) -> list[str]:
    if spec.firmware is None:
        raise ConfigError(
            f"{spec.boot.path}: hyperkit boots {spec.boot.format} images only through a UEFI boot ROM (bhyve's "
            f"UEFI.fd, e.g. Docker Desktop's Contents/Resources/uefi/UEFI.fd) and none was given; "
            f"or use --hypervisor qemu"
        )
    return ["-f", f"bootrom,{_no_comma(spec.firmware.code, 'firmware')},,"]


def _boot(spec: VmSpec) -> tuple[list[str], list[str], list[str]]:
    """(disk devices, ISO images, -f loader) for the boot image, each without its slot number."""
    boot = spec.boot
    fmt = boot.format
    if fmt is ImageFormat.KERNEL_INITRD:
        if boot.kernel is None or boot.initrd is None:
            raise ConfigError(f"{boot.path}: a kernel+initrd image needs both a kernel and an initrd")
        if boot.rootdisk is not None:  # it needs a per-VM qcow2 overlay, which hyperkit cannot open
            raise ConfigError(f"{boot.path}: an image with a root disk (the dev image) needs --hypervisor qemu")
        kernel, initrd = _no_comma(boot.kernel, "kernel"), _no_comma(boot.initrd, "initrd")
        return [], [], ["-f", f"kexec,{kernel},{initrd},{_cmdline(spec)}"]
    if fmt is ImageFormat.KERNEL_SQUASHFS:
        if boot.kernel is None or boot.squashfs is None:
            raise ConfigError(f"{boot.path}: a kernel+squashfs image needs a kernel and a squashfs file")
        squashfs = _no_comma(boot.squashfs, "squashfs")
        # LinuxKit's RawDisk{Trim: false} is virtio-blk; `ro` (lkctl's) makes hyperkit open the shared image read-only
        return (
            [f"virtio-blk,{squashfs},ro"],
            [],
            ["-f", f"kexec,{_no_comma(boot.kernel, 'kernel')},,{_cmdline(spec, '/dev/vda')}"],
        )
    if fmt is ImageFormat.ISO:
        return [], [_no_comma(boot.path, "ISO")], _bootrom(spec)
    if fmt is ImageFormat.RAW:
        return [f"virtio-blk,{HYPERKIT_BOOT_DISK}"], [], _bootrom(spec)
    raise ConfigError(
        f"{boot.path}: hyperkit cannot boot {fmt} images (its qcow2 support is a build option); convert it with "
        f"`qemu-img convert -O raw {boot.path} {boot.path.with_suffix('.img')}` or use --hypervisor qemu"
    )


def _refuse(spec: VmSpec, host: HostCaps) -> None:
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
    disk = spec.data_disk
    if disk is not None and disk.format != "raw":
        raise ConfigError("hyperkit attaches raw data disks only: use --disk size=SIZE,format=raw")


def hyperkit_argv(spec: VmSpec, host: HostCaps, *, binary: str = "hyperkit") -> list[str]:
    """The full hyperkit argv for `spec`, in LinuxKit's order. Pure; hyperkit runs in the foreground in the VM's
    state dir, so the runtime detaches it."""
    _refuse(spec, host)
    link = vpnkit_link(spec)
    _check_network(spec, link)
    disks, isos, loader = _boot(spec)
    if spec.data_disk is not None:
        disks.append(f"ahci-hd,{_no_comma(spec.data_disk.file, 'data disk')}")  # LinuxKit's RawDisk{Trim: true}
    if spec.guest_files:
        isos.append(GUEST_FILES_ISO)
    argv = [
        binary, "-A", "-u",  # -A: ACPI tables (so the guest can power off), -u: the RTC keeps UTC
        "-F", PIDFILE,
        "-c", str(spec.cpus),
        "-m", f"{spec.memory}M",
        "-s", "0:0,hostbridge",
        "-s", "31,lpc",
    ]  # fmt: skip
    slot = 1
    if link is not None:
        nic = f"{slot}:0,virtio-vpnkit,path={_no_comma(link.ethernet, 'vpnkit socket')}"
        nic += f",uuid={link.uuid}" if link.uuid else ""
        nic += f",preferred_ipv4={link.guest_ip}" if link.guest_ip else ""
        argv += ["-s", nic]
        slot += 1
    if spec.network is Network.VMNET:
        argv += ["-s", f"{slot}:0,virtio-net"]
        slot += 1
    argv += ["-U", vm_uuid(spec.vm_id)]
    for disk in disks:
        argv += ["-s", f"{slot}:0,{disk}"]
        slot += 1
    vsock = f"{slot},virtio-sock,guest_cid={_GUEST_CID},path={_STATE}"
    own = link is not None and link.own
    argv += ["-s", vsock + (f",guest_forwards={VPNKIT_FORWARDER_VSOCK_PORT}" if own else "")]
    slot += 1
    for iso in isos:
        argv += ["-s", f"{slot},ahci-cd,{iso}"]
        slot += 1
    argv += ["-s", f"{slot},virtio-rnd"]
    slot += 1
    if link is not None and link.own:
        # the guest's vpnkit tools read and write port forwards through this 9P mount (tag "port")
        argv += ["-s", f"{slot},virtio-9p,path={link.port_control},tag=port"]
    argv += ["-l", f"com1,autopty={_STATE}/{CONSOLE_TTY},log={_STATE}/{CONSOLE_RING}"]
    argv += loader
    return argv


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
    machine = arch or machine_arch()
    return choose_hypervisor(
        requested,
        platform.system().lower(),
        machine,
        have_qemu=shutil.which(f"qemu-system-{machine}") is not None,
        have_hyperkit=shutil.which("hyperkit") is not None,
    )


def require_hypervisor(requested: str = "auto", qemu: str = "") -> Hypervisor:
    """The hypervisor `vm.run` will use, or ConfigError/ProgramMissing now, before any build or state is made.

    QEMU (the setting `qemu` names its binary) wherever it is installed; hyperkit on Intel Macs when asked for or
    when QEMU is missing there. On Linux, `hyperkit` is refused in one line."""
    from lkctl.errors import LkError
    from lkctl.runtime.host import require_qemu

    if requested in ("auto", "qemu"):
        try:
            require_qemu(qemu)
        except LkError:
            intel_mac = platform.system() == "Darwin" and machine_arch() == "x86_64"
            if requested == "auto" and intel_mac and shutil.which("hyperkit"):
                return Hypervisor.HYPERKIT
            raise  # QEMU's own message says what to install
        return Hypervisor.QEMU
    return detect_hypervisor(requested)


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
    """The console output in hyperkit's ring file.

    hyperkit truncates the file to 64 KiB of NULs, mmaps it and writes each console byte at the next offset,
    wrapping at the end (uart_emul.c `ringwrite`); the write offset is not stored. Until it wraps, the output is the
    bytes before the first NUL; after that, the oldest bytes are overwritten and where the output ends is unknown,
    so the whole ring is returned, NULs removed."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return b""
    end = data.find(b"\0")
    return data[:end] if end >= 0 and not data[end:].strip(b"\0") else data.replace(b"\0", b"")


def console_file(vm_dir: Path) -> Path:
    """Where the VM's console output is: hyperkit's ring when there is one (hyperkit creates it as it starts),
    else QEMU's log."""
    ring = vm_dir / CONSOLE_RING
    return ring if ring.exists() else vm_dir / CONSOLE_LOG


def read_console(vm_dir: Path) -> bytes:
    """All the console output there is, whichever hypervisor wrote it."""
    path = console_file(vm_dir)
    if path.name == CONSOLE_RING:
        return read_console_ring(path)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return b""

"""QEMU command lines as data: `qemu_argv(spec, host)` is a pure function with golden tests.

Every path that lives in the VM's state directory is given relative to it (QEMU runs with that directory as its
working directory), which keeps unix-socket paths under the 108-byte limit wherever the state lives. The files the
argv names there (the boot overlay, the data disk, the UEFI variable store, the volume list) are made beforehand by
`lkctl.runtime.disks.prepare_vm_files`; this module never touches the file system.

Disk images are never opened for writing: a disk boots through a per-VM qcow2 overlay whose backing file is the
image, an ISO is a read-only CD, and UEFI firmware code is a read-only pflash next to a per-VM copy of its variables.
"""

from __future__ import annotations

import os
from pathlib import Path

from lkctl.arch import guest_arch
from lkctl.errors import ConfigError
from lkctl.runtime.host import HostCaps
from lkctl.runtime.model import (
    ImageFormat,
    Network,
    VmSpec,
    needs_uefi,
    volume_mounts,
)

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
    "qemu_argv",
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


def _machine(host: HostCaps) -> list[str]:
    row = guest_arch(host.arch)
    return ["-machine", row.machine_arg(host.accel.value, host.os), "-cpu", row.cpu_arg(host.accel.value)]


def _console_arg(host: HostCaps) -> str:
    return f"console={guest_arch(host.arch).console}"


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
        pkg = guest_arch(host.arch).firmware_package
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
        return [*argv, "-boot", "d"] if guest_arch(host.arch).cdrom_boot_flag else argv
    if boot.format is ImageFormat.KERNEL_SQUASHFS and (boot.kernel is None or boot.squashfs is None):
        raise ConfigError(f"{boot.path}: a kernel+squashfs image needs a kernel and a squashfs file")
    # Disks and the squashfs root boot through the per-VM overlay. On x86 the disk is AHCI (/dev/sda, what
    # LinuxKit's images and its `root=/dev/sda` expect); on aarch64 virtio-blk (/dev/vda).
    bus = guest_arch(host.arch).disk_bus
    argv = [
        "-drive", f"file={BOOT_OVERLAY},format=qcow2,if=none,id=boot0,discard=unmap",
        "-device", f"{bus},drive=boot0,bootindex=0",
    ]  # fmt: skip
    if boot.format is ImageFormat.KERNEL_SQUASHFS:
        assert boot.kernel is not None
        root = guest_arch(host.arch).root_device
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

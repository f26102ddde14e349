"""QEMU command lines as data: `qemu_argv(spec, host)` is a pure function with golden tests.

Every path that lives in the VM's state directory is given relative to it (QEMU runs with that directory as its
working directory), which keeps unix-socket paths under the 108-byte limit wherever the state lives.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from lkctl.errors import ConfigError
from lkctl.runtime.host import Accel, HostCaps

__all__ = [
    "CONSOLE_LOG",
    "PIDFILE",
    "QMP_SOCKET",
    "BootImage",
    "ImageFormat",
    "PortForward",
    "VmSpec",
    "parse_port",
    "qemu_argv",
]

PIDFILE = "qemu.pid"
QMP_SOCKET = "qmp.sock"
CONSOLE_LOG = "console.log"


class ImageFormat(StrEnum):
    KERNEL_INITRD = "kernel+initrd"
    ISO = "iso"
    QCOW2 = "qcow2"
    RAW = "raw"
    VMDK = "vmdk"


@dataclass(frozen=True)
class BootImage:
    """What the VM boots. For kernel+initrd, `path` is the LinuxKit prefix (`<prefix>-kernel` etc.)."""

    format: ImageFormat
    path: Path
    kernel: Path | None = None
    initrd: Path | None = None
    cmdline: str = ""


@dataclass(frozen=True)
class PortForward:
    """A host→guest forward. The host address defaults to loopback: nothing is exposed unless asked."""

    host_port: int
    guest_port: int
    host_ip: str = "127.0.0.1"
    proto: str = "tcp"

    def __str__(self) -> str:
        return f"{self.host_ip}:{self.host_port}->{self.guest_port}/{self.proto}"


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
class VmSpec:
    """Everything about one VM that its QEMU command line depends on."""

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


def _machine(host: HostCaps) -> list[str]:
    if host.arch == "x86_64":
        machine = "q35"
    elif host.arch == "aarch64":
        machine = "virt,highmem=off" if host.os == "darwin" else "virt"
    else:
        raise ConfigError(f"unsupported host architecture {host.arch}")
    cpu = "host" if host.accel in (Accel.KVM, Accel.HVF) else "max"
    return ["-machine", f"{machine},accel={host.accel.value}", "-cpu", cpu]


def _console_arg(host: HostCaps) -> str:
    return "console=ttyS0" if host.arch == "x86_64" else "console=ttyAMA0"


def _kernel_cmdline(spec: VmSpec, host: HostCaps) -> str:
    words = spec.boot.cmdline.split()
    if not any(w.startswith("console=") for w in words):
        words.append(_console_arg(host))
    words += spec.cmdline_extra.split()
    return " ".join(words)


def _netdev(spec: VmSpec) -> str:
    parts = ["user", "id=net0"]
    if spec.ssh_port:
        parts.append(f"hostfwd=tcp:127.0.0.1:{spec.ssh_port}-:22")
    for p in spec.ports:
        parts.append(f"hostfwd={p.proto}:{p.host_ip}:{p.host_port}-:{p.guest_port}")
    return ",".join(parts)


def _qemu_path_arg(path: Path) -> str:
    text = os.fspath(path)
    # QEMU option values are comma-separated: a literal comma is written twice
    return text.replace(",", ",,")


def qemu_argv(spec: VmSpec, host: HostCaps) -> list[str]:
    """The full QEMU argv for `spec` on `host`. Pure: same inputs, same list, in a stable order."""
    if spec.memory < 64:
        raise ConfigError(f"memory {spec.memory} MB is too small; give at least 64 (e.g. --memory 1024)")
    if spec.cpus < 1:
        raise ConfigError(f"cpus must be at least 1, got {spec.cpus}")
    argv = [
        host.qemu,
        "-name", f"lkctl-{spec.vm_id},process=lkctl-{spec.vm_id}",
        *_machine(host),
        "-smp", str(spec.cpus),
        "-m", str(spec.memory),
        "-nodefaults", "-no-user-config", "-display", "none",
        "-pidfile", PIDFILE,
        "-qmp", f"unix:{QMP_SOCKET},server=on,wait=off",
        "-chardev", f"file,id=console0,path={CONSOLE_LOG}",
        "-serial", "chardev:console0",
        "-object", "rng-random,id=rng0,filename=/dev/urandom",
        "-device", "virtio-rng-pci,rng=rng0",
        "-netdev", _netdev(spec),
        "-device", f"virtio-net-pci,netdev=net0,mac={spec.mac}",
    ]  # fmt: skip
    for name, path in spec.guest_files:
        argv += ["-fw_cfg", f"name=opt/lkctl/{name},file={_qemu_path_arg(path)}"]
    boot = spec.boot
    if boot.format is ImageFormat.KERNEL_INITRD:
        if boot.kernel is None or boot.initrd is None:
            raise ConfigError(f"{boot.path}: a kernel+initrd image needs both a kernel and an initrd")
        argv += [
            "-kernel", _qemu_path_arg(boot.kernel),
            "-initrd", _qemu_path_arg(boot.initrd),
            "-append", _kernel_cmdline(spec, host),
        ]  # fmt: skip
    else:
        raise ConfigError(
            f"{boot.path}: lkctl runs kernel+initrd images so far; {boot.format} images are not supported yet"
        )
    if spec.daemonize:
        argv.append("-daemonize")
    return argv

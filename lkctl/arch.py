"""Architecture names: the one table of what OCI, the kernel (and QEMU) and Debian call each architecture.

OCI and LinuxKit say `amd64`/`arm64`, the kernel, QEMU and libvirt say `x86_64`/`aarch64`, Debian says `amd64`/
`arm64` but `armhf`/`i386` for the 32-bit ones. Every translation between them, and every question "what is this
host?", goes through here.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass

from lkctl.errors import ConfigError

__all__ = [
    "BUILD_ARCHES",
    "GUEST_ARCHES",
    "ArchNames",
    "GuestArch",
    "Platform",
    "arch_names",
    "debian_arch",
    "guest_arch",
    "host_machine",
    "machine_arch",
    "oci_arch",
]


@dataclass(frozen=True)
class ArchNames:
    """One architecture's names."""

    oci: str  # OCI/LinuxKit/Go: amd64, arm64
    machine: str  # kernel (`uname -m`), QEMU, libvirt: x86_64, aarch64
    debian: str  # dpkg: amd64, arm64, armhf
    aliases: tuple[str, ...] = ()  # other spellings seen in the wild (release file names)


_TABLE = (
    ArchNames("amd64", "x86_64", "amd64", ("x64",)),
    ArchNames("arm64", "aarch64", "arm64"),
    ArchNames("riscv64", "riscv64", "riscv64"),
    ArchNames("s390x", "s390x", "s390x"),
    ArchNames("arm", "armv7l", "armhf"),
    ArchNames("386", "i686", "i386"),
)
_BY_NAME = {n: a for a in _TABLE for n in (a.oci, a.machine, *a.aliases)}

# The architectures lkctl builds and boots images for (OCI names).
BUILD_ARCHES = ("amd64", "arm64", "riscv64")


def host_machine() -> str:
    """This machine's architecture as the kernel names it, lower-cased (`uname -m`)."""
    return platform.machine().lower()


def arch_names(name: str | None = None) -> ArchNames | None:
    """The names of the architecture spelled `name` in any convention (default: this host), or None if unknown."""
    return _BY_NAME.get((host_machine() if name is None else name).strip().lower())


def oci_arch(name: str | None = None) -> str:
    """The OCI name (amd64, arm64...) of `name` (default: this host); an unknown name comes back unchanged."""
    names = arch_names(name)
    return names.oci if names else (host_machine() if name is None else name)


def machine_arch(name: str | None = None) -> str:
    """The kernel/QEMU name (x86_64, aarch64...) of `name` (default: this host); unknown names come back unchanged."""
    names = arch_names(name)
    return names.machine if names else (host_machine() if name is None else name)


def debian_arch(name: str | None = None) -> str:
    """The Debian name (amd64, arm64, armhf...) of `name` (default: this host); unknown names come back unchanged."""
    names = arch_names(name)
    return names.debian if names else (host_machine() if name is None else name)


@dataclass(frozen=True)
class Platform:
    """An OS/architecture pair in OCI spelling (`linux/amd64`)."""

    os: str = "linux"
    arch: str = "amd64"

    @classmethod
    def host(cls) -> Platform:
        return cls("linux", oci_arch())

    @classmethod
    def parse(cls, text: str) -> Platform:
        os_, sep, arch = text.partition("/")
        if not sep or not os_ or not arch:
            raise ConfigError(f"platform {text!r}: expected OS/ARCH such as linux/amd64")
        return cls(os_, oci_arch(arch))

    @property
    def arch_aliases(self) -> tuple[str, ...]:
        """Names this architecture goes by in file names (amd64 is also x86_64)."""
        names = arch_names(self.arch)
        return tuple(dict.fromkeys((names.oci, names.machine, *names.aliases))) if names else (self.arch,)

    def __str__(self) -> str:
        return f"{self.os}/{self.arch}"


@dataclass(frozen=True)
class GuestArch:
    """How a guest of one architecture boots under QEMU (and libvirt): the per-architecture facts in one row."""

    machine: str  # kernel/QEMU name: x86_64, aarch64
    qemu_machine: str  # QEMU machine type: q35, virt
    console: str  # the serial console's kernel name: ttyS0, ttyAMA0
    disk_bus: str  # QEMU device of a boot disk: AHCI on x86 (LinuxKit's root=/dev/sda), virtio-blk on arm
    root_device: str  # the boot disk as the guest kernel sees it
    tcg_cpu: str  # -cpu under TCG (hardware accelerators take `host`)
    firmware_package: str  # the Debian package with its UEFI firmware
    uefi_only: bool = False  # no BIOS: every ISO and disk boots through UEFI firmware
    cdrom_boot_flag: bool = False  # `-boot d` picks the CD (firmware without a boot order needs none)
    pvh: bool = False  # QEMU can boot the kernel's uncompressed ELF through PVH (lkctl.runtime.pvh)
    # extra -machine options: by host OS first ("darwin"), then by accelerator ("kvm"), else ""
    machine_options: tuple[tuple[str, str], ...] = ()

    def machine_arg(self, accel: str, host_os: str) -> str:
        """The value of QEMU's -machine for this guest under `accel` on a `host_os` host."""
        options = dict(self.machine_options)
        extra = options.get(host_os) or options.get(accel) or options.get("", "")
        return ",".join(p for p in (self.qemu_machine, extra, f"accel={accel}") if p)

    def cpu_arg(self, accel: str) -> str:
        return "host" if accel in ("kvm", "hvf") else self.tcg_cpu


GUEST_ARCHES = {
    a.machine: a
    for a in (
        GuestArch(
            machine="x86_64",
            qemu_machine="q35",
            console="ttyS0",
            disk_bus="ide-hd",
            root_device="/dev/sda",
            tcg_cpu="max",
            firmware_package="ovmf",
            cdrom_boot_flag=True,
            pvh=True,
        ),
        GuestArch(
            machine="aarch64",
            qemu_machine="virt",
            console="ttyAMA0",
            disk_bus="virtio-blk-pci",
            root_device="/dev/vda",
            # TCG's `max` emulates pointer authentication with the architected QARMA cipher, 4x slower to boot
            tcg_cpu="max,pauth-impdef=on",
            firmware_package="qemu-efi-aarch64",
            uefi_only=True,
            # HVF on Apple Silicon: a 36-bit IPA space on M1/M2; KVM takes the host's GIC
            machine_options=(("darwin", "highmem=off"), ("kvm", "gic-version=host"), ("", "gic-version=max")),
        ),
    )
}


def guest_arch(name: str) -> GuestArch:
    """The boot facts of architecture `name` (any spelling); ConfigError for one lkctl does not boot."""
    row = GUEST_ARCHES.get(machine_arch(name))
    if row is None:
        raise ConfigError(f"unsupported architecture {name}: lkctl runs x86_64 and aarch64 guests")
    return row

"""lkctl.arch: every architecture spelling maps through one table."""

from __future__ import annotations

import platform

import pytest

from lkctl.arch import BUILD_ARCHES, arch_names, debian_arch, machine_arch, oci_arch
from lkctl.flags import ARCHES, parse_arch
from lkctl.sources import Platform


@pytest.mark.parametrize(
    ("spelling", "oci", "machine", "debian"),
    [
        ("x86_64", "amd64", "x86_64", "amd64"),
        ("amd64", "amd64", "x86_64", "amd64"),
        ("X64", "amd64", "x86_64", "amd64"),
        ("aarch64", "arm64", "aarch64", "arm64"),
        ("arm64", "arm64", "aarch64", "arm64"),
        ("armv7l", "arm", "armv7l", "armhf"),
        ("i686", "386", "i686", "i386"),
        ("riscv64", "riscv64", "riscv64", "riscv64"),
    ],
)
def test_each_spelling_gives_oci_kernel_and_debian_names(spelling: str, oci: str, machine: str, debian: str) -> None:
    assert (oci_arch(spelling), machine_arch(spelling), debian_arch(spelling)) == (oci, machine, debian)


def test_an_unknown_architecture_comes_back_unchanged() -> None:
    assert arch_names("mips64") is None
    assert oci_arch("mips64") == machine_arch("mips64") == debian_arch("mips64") == "mips64"


def test_the_host_defaults_follow_uname() -> None:
    machine = platform.machine().lower()
    assert machine_arch() == machine_arch(machine)
    assert oci_arch() == oci_arch(machine) == Platform.host().arch


def test_flags_and_sources_use_the_same_table() -> None:
    assert set(ARCHES.values()) == set(BUILD_ARCHES)
    assert parse_arch("aarch64") == "arm64"
    assert Platform.parse("linux/x86_64").arch == "amd64"
    assert Platform("linux", "amd64").arch_aliases == ("amd64", "x86_64", "x64")
    assert Platform("linux", "arm64").arch_aliases == ("arm64", "aarch64")
    assert Platform("linux", "riscv64").arch_aliases == ("riscv64",)


def test_guest_arch_rows_give_qemus_machine_and_cpu_per_accelerator_and_host() -> None:
    from lkctl.arch import guest_arch

    x86, arm = guest_arch("amd64"), guest_arch("aarch64")
    assert (x86.machine_arg("kvm", "linux"), x86.cpu_arg("kvm"), x86.cpu_arg("tcg")) == ("q35,accel=kvm", "host", "max")
    assert arm.machine_arg("kvm", "linux") == "virt,gic-version=host,accel=kvm"
    assert arm.machine_arg("tcg", "linux") == "virt,gic-version=max,accel=tcg"
    assert arm.machine_arg("hvf", "darwin") == "virt,highmem=off,accel=hvf"
    assert arm.machine_arg("tcg", "darwin") == "virt,highmem=off,accel=tcg"
    assert arm.cpu_arg("tcg") == "max,pauth-impdef=on" and arm.cpu_arg("hvf") == "host"
    assert (x86.console, arm.console, x86.disk_bus, arm.root_device) == ("ttyS0", "ttyAMA0", "ide-hd", "/dev/vda")
    assert arm.uefi_only and not x86.uefi_only and x86.firmware_package == "ovmf"
    assert x86.pvh and not arm.pvh


def test_guest_arch_refuses_an_architecture_lkctl_does_not_boot_in_one_line() -> None:
    from lkctl.arch import guest_arch
    from lkctl.errors import ConfigError

    with pytest.raises(ConfigError, match="unsupported architecture riscv64: lkctl runs x86_64 and aarch64 guests"):
        guest_arch("riscv64")

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

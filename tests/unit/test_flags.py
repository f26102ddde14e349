"""What users type: one set of rules for sizes, counts, ports, timeouts, architectures and VM names."""

from __future__ import annotations

import pytest

from lkctl.errors import ConfigError
from lkctl.flags import (
    check_vm_name,
    parse_arch,
    parse_count,
    parse_memory,
    parse_port_number,
    parse_size,
    parse_timeout,
)

MIB = 1 << 20


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("10G", 10 << 30),
        ("512M", 512 * MIB),
        ("1.5G", 3 << 29),
        ("64MiB", 64 * MIB),
        ("1t", 1 << 40),
        ("4KB", 4096),
        ("8k", 8192),
        ("512", 512 * MIB),  # a bare number is MiB, as LinuxKit's --size and QEMU's -m
    ],
)
def test_sizes_take_binary_units_and_bare_mib(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "G", "ten", "10X", "-1G", "0", "0M", "1..5G", "1G1"])
def test_bad_sizes_are_refused_with_the_flag_named(text: str) -> None:
    with pytest.raises(ConfigError, match=r"^--size "):
        parse_size(text, what="--size")


def test_a_size_may_require_a_unit() -> None:
    with pytest.raises(ConfigError, match="give a unit"):
        parse_size("10", what="--disk", bare=None)
    assert parse_size("10G", what="--disk", bare=None) == 10 << 30


@pytest.mark.parametrize(("text", "mib"), [("1G", 1024), ("512M", 512), ("256", 256), (384, 384), ("1.5G", 1536)])
def test_memory_is_in_mib(text: str | int, mib: int) -> None:
    assert parse_memory(text) == mib


@pytest.mark.parametrize(
    ("text", "why"),
    [("abc", "expected"), ("0", "more than zero"), ("-1", "expected"), ("10TB", "more than this machine"),
     ("1000K", "whole megabytes")],
)  # fmt: skip
def test_bad_memory_is_refused(text: str, why: str) -> None:
    with pytest.raises(ConfigError, match=rf"--memory.*{why}"):
        parse_memory(text)


def test_counts_ports_and_timeouts() -> None:
    assert parse_count("2", what="--cpus") == 2
    assert parse_port_number("2222", what="--ssh-port") == 2222
    assert parse_timeout("2.5") == 2.5 and parse_timeout("0") == 0
    for bad in ("0", "x", "1.5", "256", ""):
        with pytest.raises(ConfigError, match="--cpus"):
            parse_count(bad, what="--cpus")
    for bad in ("70000", "-5", "0", "ssh"):
        with pytest.raises(ConfigError, match="--ssh-port"):
            parse_port_number(bad, what="--ssh-port")
    for bad in ("-1", "soon", "inf", "nan"):
        with pytest.raises(ConfigError, match="--timeout"):
            parse_timeout(bad)


def test_architectures_are_checked_not_defaulted() -> None:
    assert [parse_arch(a) for a in ("amd64", "x86_64", "arm64", "aarch64", "AMD64")] == [
        "amd64", "amd64", "arm64", "arm64", "amd64",
    ]  # fmt: skip
    with pytest.raises(ConfigError, match="--arch 'sparc': unknown architecture; use one of amd64, arm64"):
        parse_arch("sparc")


@pytest.mark.parametrize("name", ["web", "web-1", "a", "c0", "deaf", "db.primary_2", "x" * 63, "DEADBEEF", "1abc"])
def test_good_vm_names(name: str) -> None:
    assert check_vm_name(name) == name


@pytest.mark.parametrize("name", ["a/b", "a:b", "a\nb", "x" * 64, "x" * 300, "-web", ".hidden", "", "web vm",
                                  "dead beef", "deadbeef", "0123abcd", "ü"])  # fmt: skip
def test_bad_vm_names_get_one_line(name: str) -> None:
    with pytest.raises(ConfigError) as e:
        check_vm_name(name)
    assert "\n" not in e.value.message and e.value.message.startswith("--name ")

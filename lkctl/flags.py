"""What users type: sizes, counts, ports, timeouts, architectures and VM names, parsed and checked in one place.

The tasks, the `lkctl` CLI and library callers share these rules, so a bad value gets the same one-line
`ConfigError` (exit 2) wherever it comes from, and no value is silently replaced by a default.
"""

from __future__ import annotations

import math
import os
import re
import signal

from lkctl.arch import BUILD_ARCHES, machine_arch
from lkctl.errors import ConfigError

__all__ = [
    "ARCHES",
    "MAX_CPUS",
    "check_vm_name",
    "parse_arch",
    "parse_count",
    "parse_memory",
    "parse_port_number",
    "parse_signal",
    "parse_size",
    "parse_tail",
    "parse_timeout",
]

_MIB = 1 << 20
_UNITS = {"K": 1 << 10, "M": _MIB, "G": 1 << 30, "T": 1 << 40}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", re.IGNORECASE)

# OCI architecture names lkctl builds and boots, with the kernel's spellings as aliases (from lkctl.arch)
ARCHES = {n: a for a in BUILD_ARCHES for n in (a, machine_arch(a))}
MAX_CPUS = 255  # QEMU's q35/virt limit for a plain configuration

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
_ID_LIKE = re.compile(r"[0-9a-f]{8}")


def parse_size(text: str, *, what: str = "size", bare: str | None = "M") -> int:
    """Bytes in `2G`, `512M`, `1.5G`, `64MiB`, `4KB` (binary units). A bare number is in `bare` units (MiB, as
    LinuxKit's `--size` and QEMU's `-m`), or refused when `bare` is None. Zero and negative sizes are refused."""
    m = _SIZE.fullmatch(text)
    if not m:
        raise ConfigError(f"{what} {text!r}: expected a number and a unit, e.g. 512M or 2G")
    unit_text = m.group(2).upper() or bare
    if unit_text is None:
        raise ConfigError(f"{what} {text!r}: give a unit (K, M, G or T), e.g. {text.strip()}G")
    size = math.floor(float(m.group(1)) * _UNITS[unit_text])
    if size <= 0:
        raise ConfigError(f"{what} {text!r}: must be more than zero, e.g. 512M or 2G")
    return size


def _host_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 0


def parse_memory(text: str | int, *, local: bool = True) -> int:
    """`--memory`: MiB from `1G`, `512M` or a plain number of MB; more than this machine has is refused for a `local`
    VM (one run through libvirt is checked against its host's memory when it is placed)."""
    size = parse_size(str(text), what="--memory")
    if size % _MIB:
        raise ConfigError(f"--memory {text!r}: give whole megabytes, e.g. 512M or 1G")
    host = _host_memory() if local else 0
    if host and size > host:
        raise ConfigError(f"--memory {text!r}: more than this machine's {host // _MIB}M of memory")
    return size // _MIB


def parse_count(text: str | int, *, what: str, low: int = 1, high: int = MAX_CPUS) -> int:
    """A whole number in [low, high], e.g. `--cpus`."""
    value = str(text).strip()
    if not re.fullmatch(r"[+-]?\d+", value):
        raise ConfigError(f"{what} {text!r}: expected a whole number from {low} to {high}")
    number = int(value)
    if not low <= number <= high:
        raise ConfigError(f"{what} {text!r}: must be from {low} to {high}")
    return number


def parse_port_number(text: str | int, *, what: str) -> int:
    """A TCP/UDP port (1-65535)."""
    return parse_count(text, what=what, low=1, high=65535)


def parse_timeout(text: str | float, *, what: str = "--timeout") -> float:
    """Seconds, e.g. `180` or `2.5`; 0 means "the default". Negative, infinite and non-numbers are refused."""
    try:
        seconds = float(str(text).strip())
    except ValueError:
        raise ConfigError(f"{what} {text!r}: expected a number of seconds, e.g. 180") from None
    if not math.isfinite(seconds) or seconds < 0:
        raise ConfigError(f"{what} {text!r}: expected a number of seconds that is 0 or more, e.g. 180")
    return seconds


def parse_arch(text: str, *, what: str = "--arch") -> str:
    """The OCI name (amd64, arm64, riscv64) of an architecture lkctl knows; anything else is refused."""
    arch = ARCHES.get(text.strip().lower())
    if arch is None:
        known = ", ".join(sorted(set(ARCHES.values())))
        raise ConfigError(f"{what} {text!r}: unknown architecture; use one of {known}")
    return arch


def check_vm_name(name: str) -> str:
    """A VM name: letters, digits, `.`, `_`, `-`, starting with a letter or digit, at most 63 characters, and
    not 8 lowercase hex digits, the shape of a VM ID. (A name of 4+ characters that starts an existing VM's ID is
    refused when the VM is created, and new IDs never start with an existing name.)"""
    if not _NAME.fullmatch(name):
        shown = name if len(name) <= 70 else name[:67] + "..."
        raise ConfigError(
            f"--name {shown!r}: a VM name has 1-63 letters, digits, '.', '_' or '-' and starts with a letter or "
            f"digit, e.g. web-1"
        )
    if _ID_LIKE.fullmatch(name):
        raise ConfigError(f"--name {name!r}: 8 hex digits is the shape of a VM ID; add a letter after f or a '-'")
    return name


def parse_signal(text: str) -> signal.Signals:
    """`KILL`, `sigterm`, `SIGINT` or a number (`9`, as `docker kill -s 9`) → the signal (`vm.kill --signal`)."""
    name = text.strip().upper().removeprefix("SIG")
    try:
        return signal.Signals(int(name)) if name.isdigit() else signal.Signals[f"SIG{name}"]
    except (KeyError, ValueError):
        raise ConfigError(f"unknown signal {text!r} (e.g. KILL, TERM, INT)") from None


def parse_tail(text: str) -> int | None:
    """`vm.logs --tail`: a number of lines, or `all` (or nothing) for every line (None)."""
    if text in ("all", ""):
        return None
    if text.isdigit():
        return int(text)
    raise ConfigError(f"--tail {text!r}: give a number of lines or all")

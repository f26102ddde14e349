"""What this host can run: the QEMU binary and an accelerator chosen by a real probe.

`/dev/kvm` existing proves nothing (on some hosts it opens, runs real-mode code, yet a Linux guest hangs before its
first line), so an accelerator counts as usable only after guests have really run under it:
1. a 512-byte boot sector that writes to QEMU's isa-debug-exit port must exit within a few seconds, then
2. when a kernel is at hand, it must print its `Linux version` banner on the serial port within a few seconds.
The answer is cached per host boot and per QEMU binary, so the probe costs once.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import subprocess
import tempfile
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from lkctl import paths
from lkctl.arch import machine_arch
from lkctl.errors import ConfigError
from lkctl.fsutil import atomic_write
from lkctl.proc import find_program

__all__ = [
    "Accel",
    "HostCaps",
    "ProcessIdentity",
    "boot_id",
    "guest_arch",
    "probe_accel",
    "probe_host",
    "process_identity",
    "qemu_binary_name",
    "require_qemu",
]


class Accel(StrEnum):
    KVM = "kvm"
    HVF = "hvf"
    TCG = "tcg"


@dataclass(frozen=True)
class HostCaps:
    """Facts about the host that shape a QEMU command line (injected into the pure argv builders)."""

    os: str  # "linux" | "darwin"
    arch: str  # guest/host machine arch: "x86_64" | "aarch64"
    accel: Accel
    qemu: str  # path to qemu-system-<arch>


def guest_arch() -> str:
    """The kernel/QEMU name (x86_64, aarch64) of the guests this host runs natively."""
    return machine_arch()


def qemu_binary_name(arch: str) -> str:
    return f"qemu-system-{arch}"


# 16-bit real mode: mov al,0x31 ; out 0xf4,al ; hlt ; jmp $-1  → QEMU exits with status (0x31<<1)|1 = 99
_BOOT_SECTOR = bytes([0xB0, 0x31, 0xE6, 0xF4, 0xF4, 0xEB, 0xFD]).ljust(510, b"\0") + b"\x55\xaa"
_PROBE_EXIT = 99
# A working accelerator runs the boot sector in well under a second and prints the kernel banner in about one.
_SECTOR_TIMEOUT = 3.0
_KERNEL_TIMEOUT = 8.0


@functools.cache  # read once per process: `vm.ps` asks for every recorded VM
def boot_id() -> str:
    """This host boot's id (Linux), "" elsewhere: what makes a pid + start time unique across reboots."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text(encoding="utf-8").strip()
    except OSError:
        return ""


def _run_probe(qemu: str, accel: Accel, kernel: Path | None = None) -> bool:
    return _probe_boot_sector(qemu, accel) and (kernel is None or _probe_kernel(qemu, accel, kernel))


def _probe_kernel(qemu: str, accel: Accel, kernel: Path) -> bool:
    argv = [
        qemu, "-accel", accel.value, "-machine", "q35", "-nodefaults", "-no-user-config", "-display", "none",
        "-m", "256", "-serial", "stdio", "-no-reboot", "-kernel", os.fspath(kernel),
        "-append", "console=ttyS0 panic=-1 lkctl.probe",
    ]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    try:
        import selectors

        sel = selectors.DefaultSelector()
        assert proc.stdout is not None
        sel.register(proc.stdout, selectors.EVENT_READ)
        seen = b""
        deadline = time.monotonic() + _KERNEL_TIMEOUT
        while (left := deadline - time.monotonic()) > 0:
            if not sel.select(left):
                break
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                break
            seen = (seen + chunk)[-4096:]
            if b"Linux version" in seen or b"Kernel panic" in seen:
                return True
        return False
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def _probe_boot_sector(qemu: str, accel: Accel) -> bool:
    with tempfile.TemporaryDirectory(prefix="lkctl-probe-") as tmp:
        disk = Path(tmp) / "boot.img"
        disk.write_bytes(_BOOT_SECTOR)
        argv = [
            qemu, "-accel", accel.value, "-machine", "pc", "-nodefaults", "-no-user-config", "-display", "none",
            "-m", "16", "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04",
            "-drive", f"file={disk},format=raw,if=ide",
        ]  # fmt: skip
        try:
            proc = subprocess.run(argv, capture_output=True, timeout=_SECTOR_TIMEOUT, check=False)
        except subprocess.TimeoutExpired:
            return False  # the guest hung under this accelerator: exactly the case we must catch
        return proc.returncode == _PROBE_EXIT


def probe_accel(qemu: str, *, kernel: Path | None = None, cache: bool = True) -> Accel:
    """The fastest accelerator under which a guest really runs on this host (TCG when none does)."""
    system = platform.system().lower()
    candidates: list[Accel] = []
    if system == "linux" and os.access("/dev/kvm", os.R_OK | os.W_OK):
        candidates.append(Accel.KVM)
    if system == "darwin":
        candidates.append(Accel.HVF)
    if not candidates:
        return Accel.TCG
    st = os.stat(qemu)
    kernel_id = f"{kernel}:{kernel.stat().st_size}" if kernel else "-"
    key = hashlib.sha256(f"{boot_id()}|{qemu}|{st.st_size}|{st.st_mtime_ns}|{kernel_id}".encode()).hexdigest()[:16]
    cache_file = paths.cache_dir() / "probe" / f"accel-{key}.json"
    if cache:
        try:
            return Accel(json.loads(cache_file.read_text())["accel"])
        except (OSError, ValueError, KeyError):
            pass
    chosen = next((a for a in candidates if _run_probe(qemu, a, kernel)), Accel.TCG)
    if cache:
        atomic_write(cache_file, json.dumps({"accel": chosen.value}))
    return chosen


def require_qemu(qemu: str = "") -> str:
    """The QEMU binary to use, or ProgramMissing/ConfigError now — before any slow work."""
    if qemu:
        if not os.access(qemu, os.X_OK):
            raise ConfigError(f"QEMU binary {qemu} does not exist or is not executable (setting lkctl.vm.qemu)")
        return qemu
    return find_program(qemu_binary_name(guest_arch()))


def probe_host(
    *, accel: str = "auto", qemu: str = "", kernel: Path | None = None, hypervisor: str = "qemu"
) -> HostCaps:
    """Find QEMU for the host's architecture and pick the accelerator (`accel` overrides the probe).

    For `hypervisor="hyperkit"` no QEMU is needed or probed: hyperkit always runs on Hypervisor.framework."""
    arch = guest_arch()
    if hypervisor == "hyperkit":
        return HostCaps(os=platform.system().lower(), arch=arch, accel=Accel.HVF, qemu="")
    binary = require_qemu(qemu)
    if accel == "auto":
        chosen = probe_accel(binary, kernel=kernel)
    else:
        try:
            chosen = Accel(accel)
        except ValueError:
            raise ConfigError(f"unknown accelerator {accel!r}: use auto, kvm, hvf or tcg") from None
    return HostCaps(os=platform.system().lower(), arch=arch, accel=chosen, qemu=binary)


@dataclass(frozen=True)
class ProcessIdentity:
    """What identifies one process across PID reuse."""

    pid: int
    start: str  # start time (clock ticks since boot on Linux, `ps lstart` elsewhere)
    boot_id: str


def process_identity(pid: int) -> ProcessIdentity | None:
    """Identity of the live process `pid`, or None if there is none (zombies count as dead)."""
    if pid <= 0:
        return None
    if _have_proc():
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
        except (FileNotFoundError, ProcessLookupError):
            return None
        # the command name (field 2) may contain spaces and parentheses: split after the last ')'
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] in ("Z", "X"):
            return None
        return ProcessIdentity(pid, fields[19], boot_id())
    try:  # macOS and other systems without /proc
        out = subprocess.run(
            ["ps", "-o", "stat=,lstart=", "-p", str(pid)], capture_output=True, text=True, check=False
        ).stdout.strip()
    except OSError:
        return None
    if not out or out.startswith("Z"):
        return None
    return ProcessIdentity(pid, out.split(None, 1)[1], "")


@functools.cache
def _have_proc() -> bool:
    return os.path.exists("/proc/self/stat")

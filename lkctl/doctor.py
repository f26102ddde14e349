"""`lkctl doctor`: what this host has for lkctl, what is missing, and how to get it.

The report is a plain dict (the `--json` output); `render_report` turns it into text. Facts are read from the
host (PATH, dpkg, /proc, /dev/kvm, sockets); the accelerator comes from the same cached probe `vm.run` uses, so
it answers what `vm.run` will do and why.
"""

from __future__ import annotations

import os
import platform
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from lkctl import __version__, paths
from lkctl.settings import Settings

__all__ = [
    "DEMO_PACKAGES",
    "TEST_PACKAGES",
    "accel_reason",
    "diagnose",
    "host_accel_reason",
    "missing_packages",
    "render_report",
]

DEMO_PACKAGES = (
    "python3", "python3-venv", "qemu-system-x86", "qemu-utils", "busybox-static", "dropbear-bin",
    "linux-image-amd64", "cpio", "kmod", "openssh-client",
)  # fmt: skip
"""What `./bootstrap demo` installs: enough to build the `minimal` image, boot it and exec in it."""

TEST_PACKAGES = (
    "nginx", "docker-registry", "skopeo", "curl", "runc", "git", "make", "vim-tiny", "xorriso", "isolinux",
    "syslinux", "syslinux-common", "grub-efi-amd64-bin", "mtools", "ovmf", "dosfstools", "e2fsprogs", "zstd",
    "qemu-system-arm", "qemu-efi-aarch64",
    "libvirt-daemon-system", "libvirt-clients", "libvirt-dev", "pkg-config", "gcc", "openssh-server", "dbus",
    "python3-pip", "python3-pytest", "nodejs", "php-cli", "composer", "golang-go",
)  # fmt: skip
"""What `./bootstrap test` adds: servers and tools the tests use, the `dev` template's userland, disk formats,
libvirt and an sshd for the libvirt tests."""


def accel_reason(chosen: str, *, setting: str, system: str, kvm_exists: bool, kvm_usable: bool) -> str:
    """One line on why `chosen` is the accelerator: `tcg: /dev/kvm is present but a test guest hung under KVM`."""
    if setting != "auto":
        return f"{chosen}: set by lkctl.vm.accel={setting}"
    if chosen == "kvm":
        return "kvm: /dev/kvm works (a test guest ran under it)"
    if chosen == "hvf":
        return "hvf: macOS Hypervisor.framework works (a test guest ran under it)"
    if system == "darwin":
        return "tcg: a test guest did not run under HVF"
    if system != "linux":
        return f"tcg: no hardware accelerator is known on {system}"
    if not kvm_exists:
        return "tcg: there is no /dev/kvm (no virtualization extensions, or the kvm module is not loaded)"
    if not kvm_usable:
        return "tcg: /dev/kvm is not readable and writable by this user (add yourself to the kvm group)"
    return "tcg: /dev/kvm is present but a test guest hung under KVM"


def host_accel_reason(chosen: str, setting: str) -> str:
    """accel_reason with this host's facts."""
    kvm = Path("/dev/kvm")
    return accel_reason(
        chosen, setting=setting, system=platform.system().lower(), kvm_exists=kvm.exists(),
        kvm_usable=os.access(kvm, os.R_OK | os.W_OK),
    )  # fmt: skip


def missing_packages(wanted: tuple[str, ...], installed: Callable[[str], bool]) -> list[str]:
    return [p for p in wanted if not installed(p)]


def _dpkg_installed(package: str) -> bool:
    try:
        out = subprocess.run(
            ["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True, timeout=20, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "install ok installed" in out


def _first_line(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"error: {e}"
    return (done.stdout or done.stderr).strip().splitlines()[0] if (done.stdout or done.stderr).strip() else ""


def _memory_mb() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _ports() -> dict[str, Any]:
    out: dict[str, Any] = {}
    try:
        lo, hi = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text(encoding="utf-8").split()
        out["ephemeral_range"] = f"{lo}-{hi}"
    except (OSError, ValueError):
        out["ephemeral_range"] = None
    try:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            out["loopback_free_port"] = int(s.getsockname()[1])
    except OSError as e:
        out["loopback_free_port"] = None
        out["loopback_error"] = str(e)
    from lkctl.runtime import state

    used: list[str] = []
    for r in state.listed_records():
        if state.vm_status(r) == "running":
            used += [f"{r.name}: 127.0.0.1:{r.ssh_port} (ssh)"] + [f"{r.name}: {p}" for p in r.ports]
    out["used_by_vms"] = used
    return out


def _writable(path: Path) -> bool:
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return os.access(probe, os.W_OK)


def diagnose(
    settings: Settings,
    *,
    config_files: list[Path] | None = None,
    sources: Mapping[str, str] | None = None,
    probe: bool = True,
) -> dict[str, Any]:
    """The doctor's report. `probe=False` skips the accelerator probe (it may boot a tiny guest once per host boot)."""
    from lkctl.errors import LkError
    from lkctl.runtime.disks import find_virtiofsd
    from lkctl.runtime.host import guest_arch, probe_accel, require_qemu

    report: dict[str, Any] = {
        "lkctl": __version__,
        "python": platform.python_version(),
        "host": {
            "os": platform.system().lower(),
            "kernel": platform.release(),
            "arch": guest_arch(),
            "cpus": os.cpu_count(),
            "memory_mb": _memory_mb(),
            "ci": os.environ.get("CI", "").lower() == "true",
            "terminal": sys.stderr.isatty(),
        },
    }
    qemu: dict[str, Any] = {"path": None, "version": None, "error": None}
    try:
        qemu["path"] = require_qemu(settings.vm.qemu)
        qemu["version"] = _first_line([qemu["path"], "--version"])
    except LkError as e:
        qemu["error"] = e.message
    report["qemu"] = qemu
    accel: dict[str, Any] = {"setting": settings.vm.accel, "chosen": None, "reason": None}
    if qemu["path"] and (probe or settings.vm.accel != "auto"):
        chosen = settings.vm.accel if settings.vm.accel != "auto" else probe_accel(qemu["path"]).value
        accel["chosen"] = chosen
        accel["reason"] = host_accel_reason(chosen, settings.vm.accel)
    elif not qemu["path"]:
        accel["reason"] = "no QEMU, nothing to probe"
    else:
        accel["reason"] = "not probed (--no-probe)"
    report["accelerator"] = accel
    if shutil.which("dpkg-query"):
        demo = missing_packages(DEMO_PACKAGES, _dpkg_installed)
        test = missing_packages(TEST_PACKAGES, _dpkg_installed)
        report["packages"] = {
            "missing_for_demo": demo,
            "missing_for_tests": test,
            "apt": f"sudo apt-get install -y --no-install-recommends {' '.join(demo + test)}" if demo + test else None,
        }
    else:
        report["packages"] = {"missing_for_demo": None, "missing_for_tests": None, "apt": None}
    virsh = shutil.which("virsh")
    report["libvirt"] = {
        "virsh": virsh,
        "socket": next((s for s in ("/run/libvirt/libvirt-sock", "/var/run/libvirt/libvirt-sock") if Path(s).exists()),
                       None),
    }  # fmt: skip
    report["virtiofsd"] = find_virtiofsd()
    report["ports"] = _ports()
    report["dirs"] = {
        name: {"path": str(p), "writable": _writable(p)}
        for name, p in (("cache", paths.cache_dir()), ("state", paths.state_dir()), ("data", paths.data_dir()))
    }
    from lkctl.runtime.snapshot import snapshot_usage

    snaps = snapshot_usage()
    report["snapshots"] = {"path": str(snaps.directory), "count": snaps.count, "bytes": snaps.size}
    report["config"] = {
        "files": [str(p) for p in config_files or []],
        "vm": {
            "memory": {"value": settings.vm.memory, "source": (sources or {}).get("memory") or "default"},
            "cpus": {"value": settings.vm.cpus, "source": (sources or {}).get("cpus") or "default"},
            "accel": settings.vm.accel,
        },
    }
    return report


def render_report(report: Mapping[str, Any]) -> str:
    """The report for people: one fact per line, problems first-class (`!` marks what needs doing)."""
    h = report["host"]
    q = report["qemu"]
    a = report["accelerator"]
    lines = [
        f"lkctl {report['lkctl']} on Python {report['python']}",
        f"host         {h['os']} {h['kernel']} {h['arch']}, {h['cpus']} CPUs, {h['memory_mb']} MB"
        + (", CI" if h["ci"] else ""),
        f"qemu         {q['path']} ({q['version']})" if q["path"] else f"! qemu       {q['error']}",
        f"accelerator  {a['reason']}",
    ]
    pk = report["packages"]
    if pk["missing_for_demo"] is None:
        lines.append("packages     not a Debian/Ubuntu host: see README for what lkctl needs")
    else:
        lines.append(
            f"! packages   missing for the demo: {' '.join(pk['missing_for_demo'])}"
            if pk["missing_for_demo"]
            else "packages     everything the demo needs is installed"
        )
        if pk["missing_for_tests"]:
            lines.append(f"  tests also need: {' '.join(pk['missing_for_tests'])}")
        if pk["apt"]:
            lines.append(f"  install with: {pk['apt']}")
    lv = report["libvirt"]
    lines.append(f"libvirt      {'virsh ' + lv['virsh'] if lv['virsh'] else 'no virsh'}; "
                 f"{'daemon socket ' + lv['socket'] if lv['socket'] else 'no daemon socket'}")  # fmt: skip
    lines.append(f"virtiofsd    {report['virtiofsd'] or 'not found (vm.run --virtiofs needs it; 9p works without)'}")
    p = report["ports"]
    free = p["loopback_free_port"]
    lines.append(
        f"ports        127.0.0.1 binds ({free} was free), ephemeral range {p['ephemeral_range']}"
        if free
        else f"! ports      cannot bind 127.0.0.1: {p.get('loopback_error')}"
    )
    for used in p["used_by_vms"]:
        lines.append(f"  in use by {used}")
    for name, d in report["dirs"].items():
        lines.append(
            f"{'' if d['writable'] else '! '}{name:<12} {d['path']}" + ("" if d["writable"] else " (not writable)")
        )
    sn = report["snapshots"]
    lines.append(f"snapshots    {sn['count']} ({sn['bytes'] / 2**20:.0f} MiB) in {sn['path']} (vm.run --snapshot; "
                 "image.prune removes those no longer usable)")  # fmt: skip
    cfg = report["config"]
    lines.append(f"config files {', '.join(cfg['files']) or 'none'}")
    vm = cfg["vm"]
    lines.append(
        f"vm defaults  memory {vm['memory']['value']} MB ({vm['memory']['source']}), "
        f"cpus {vm['cpus']['value']} ({vm['cpus']['source']}), accel {vm['accel']}"
    )
    return "\n".join(lines)

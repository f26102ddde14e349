"""The runtime against a real QEMU: accelerator probe, daemonized start, identity, stop escalation."""

from __future__ import annotations

import gzip
import io
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from lkctl.runtime import state
from lkctl.runtime.host import Accel, _run_probe, probe_accel, probe_host
from lkctl.runtime.model import BootImage, ImageFormat
from lkctl.runtime.vm import RunOptions, run_vm, stop_vm
from lkctl.settings import Settings, VmSettings
from tests.conftest import require_busybox, require_qemu

pytestmark = pytest.mark.integration


def _kernel() -> Path:
    kernels = sorted(Path("/boot").glob("vmlinuz-*"))
    if not kernels:
        pytest.skip("no kernel in /boot")
    return kernels[-1]


def _newc(entries: list[tuple[str, int, bytes]]) -> bytes:
    out = io.BytesIO()
    for ino, (name, mode, data) in enumerate([*entries, ("TRAILER!!!", 0, b"")], start=1):
        nb = name.encode() + b"\0"
        hdr = b"070701" + b"".join(
            f"{v:08x}".encode() for v in (ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(nb), 0)
        )
        out.write(hdr + nb + b"\0" * ((4 - (110 + len(nb)) % 4) % 4))
        out.write(data + b"\0" * ((4 - len(data) % 4) % 4))
    return out.getvalue()


@pytest.fixture
def deaf_guest(tmp_path: Path) -> BootImage:
    """A kernel + initrd whose init ignores ACPI power-off: it only prints a line and sleeps."""
    require_qemu()
    busybox = require_busybox()
    init = b"#!/bin/busybox sh\n/bin/busybox echo deaf-init-running\nexec /bin/busybox sleep 100000\n"
    cpio = _newc(
        [("bin", 0o40755, b""), ("bin/busybox", 0o100755, Path(busybox).read_bytes()), ("init", 0o100755, init)]
    )
    initrd = tmp_path / "deaf-initrd.img"
    initrd.write_bytes(gzip.compress(cpio, 1))
    return BootImage(ImageFormat.KERNEL_INITRD, tmp_path / "deaf", kernel=_kernel(), initrd=initrd, cmdline="quiet")


def test_probe_picks_an_accelerator_under_which_the_kernel_really_boots() -> None:
    require_qemu()
    qemu = shutil.which("qemu-system-x86_64")
    assert qemu
    chosen = probe_accel(qemu, kernel=_kernel(), cache=False)
    if chosen is not Accel.TCG:
        # a hardware accelerator was chosen: a guest really boots under it (fast, so the probe's timeout holds)
        assert _run_probe(qemu, chosen, _kernel())
    elif os.path.exists("/dev/kvm"):
        # /dev/kvm exists yet the probe fell back: KVM guests must really fail to boot on this host.
        # (TCG itself is not timed here: under a loaded CI machine it may miss the probe's few seconds.)
        assert not _run_probe(qemu, Accel.KVM, _kernel())


def test_probe_result_is_cached_per_boot() -> None:
    require_qemu()
    first = probe_host(kernel=_kernel())
    start = time.monotonic()
    assert probe_host(kernel=_kernel()) == first
    assert time.monotonic() - start < 0.5


def test_stop_escalates_to_sigterm_when_the_guest_ignores_acpi(deaf_guest: BootImage) -> None:
    settings = Settings(vm=VmSettings(memory=256, accel="tcg"))
    record, _ = run_vm(deaf_guest, "deaf", RunOptions(name="deaf", wait_ssh=False), settings)
    try:
        assert state.vm_status(record) == "running"
        pid = record.pid
        deadline = time.monotonic() + 60
        while b"deaf-init-running" not in (record.dir / "console.log").read_bytes():
            assert time.monotonic() < deadline, "guest never started"
            time.sleep(0.2)
        assert stop_vm(record, timeout=2) == "terminated"
        assert state.process_identity(pid) is None
        assert state.vm_status(record) == "stopped"
        assert not (record.dir / "qemu.pid").exists()  # QEMU cleaned up after itself on SIGTERM
    finally:
        if state.is_our_process(record):
            os.kill(record.pid, 9)


def test_a_qemu_killed_behind_our_back_shows_stopped(deaf_guest: BootImage) -> None:
    settings = Settings(vm=VmSettings(memory=256, accel="tcg"))
    record, _ = run_vm(deaf_guest, "deaf", RunOptions(name="victim", wait_ssh=False), settings)
    os.kill(record.pid, 9)
    deadline = time.monotonic() + 10
    while state.vm_status(record) == "running" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert state.vm_status(record) == "stopped"
    assert stop_vm(record) == "not running"


def test_qemu_failure_leaves_no_state_and_says_why(deaf_guest: BootImage, tmp_path: Path) -> None:
    broken = BootImage(
        ImageFormat.KERNEL_INITRD, tmp_path / "x", kernel=tmp_path / "missing-kernel", initrd=deaf_guest.initrd
    )
    with pytest.raises(Exception, match="QEMU failed to start VM broken") as e:
        run_vm(broken, "x", RunOptions(name="broken", wait_ssh=False), Settings(vm=VmSettings(accel="tcg")))
    assert "missing-kernel" in str(e.value)
    assert state.all_records() == []
    # no QEMU is left over from the failed start (its argv names the missing kernel)
    out = subprocess.run(["pgrep", "-f", "missing-kernel"], capture_output=True, text=True).stdout.split()
    assert [p for p in out if state.process_identity(int(p)) is not None and int(p) != os.getpid()] == []

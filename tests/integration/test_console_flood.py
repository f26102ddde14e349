"""A guest that floods its console while `vm.run -d` waits for it: the boot progress is fed a bounded view of the
console, read incrementally, instead of the whole console log read again five times a second (a guest printing
hundreds of MB made lkctl hold all of it in memory on every tick). No guest boots: a stand-in process carries the
VM's ID, as a QEMU would, and a large (sparse) console log stands for what the guest printed."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lkctl.errors import VmError
from lkctl.runtime import state
from lkctl.runtime.qemu import CONSOLE_LOG
from lkctl.runtime.start import wait_ready

FLOOD = 256 << 20


def test_boot_progress_sees_a_bounded_console_however_much_the_guest_printed(lkctl_home: Path) -> None:
    record = state.VmRecord(id="abcd1234", name="flood", image="x", image_format="kernel+initrd",
                            created="2026-01-01T00:00:00", memory=256, cpus=1, ssh_port=1)  # fmt: skip
    state.save_record(record)
    qemu = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", f"lkctl-{record.id}"])
    try:
        ident = state.process_identity(qemu.pid)
        assert ident is not None
        record = state.VmRecord(**{**record.to_json(), "pid": qemu.pid, "pid_start": ident.start,
                                   "boot_id": ident.boot_id})  # fmt: skip
        state.save_record(record)
        console = record.dir / CONSOLE_LOG
        with open(console, "wb") as f:
            f.write(b"[    0.000000] Linux version 6.1\nlkctl-init: starting\n")
            f.truncate(FLOOD)  # what a guest printing without end leaves (sparse here: cheap to make)
            f.seek(0, os.SEEK_END)
            f.write(b"\nthe last line\n")
        seen: list[int] = []
        last: list[bytes] = []

        def on_wait(text: bytes) -> None:
            seen.append(len(text))
            last[:] = [text]

        started = time.monotonic()
        with pytest.raises(VmError, match="did not become ready"):
            wait_ready(record, 3, on_wait)
        took = time.monotonic() - started
        assert seen, "on_wait was never called"
        assert max(seen) <= 1 << 20, max(seen)  # before: the whole 256 MiB console, every 0.2 s
        assert last[0].startswith(b"[    0.000000] Linux version") and last[0].endswith(b"the last line\n")
        assert took < 30, took
    finally:
        qemu.kill()
        qemu.wait()


@pytest.mark.parametrize("args", [["--tail", "2"], ["--tail", "2", "--timestamps"], []])
def test_vm_logs_streams_a_large_console_instead_of_reading_it_whole(
    args: list[str], lkctl_home: Path, tmp_path: Path
) -> None:
    record = state.VmRecord(id="abcd1234", name="chatty", image="x", image_format="kernel+initrd",
                            created="2026-01-01T00:00:00", memory=256, cpus=1, ssh_port=0)  # fmt: skip
    state.save_record(record)
    line = b"[   12.345678] " + b"x" * 49 + b"\n"
    with open(record.dir / CONSOLE_LOG, "wb") as f:
        for _ in range(32):
            f.write(line * (1 << 14))  # 32 MiB of console in all, never held here (a fork would count it)
        f.write(b"[   13.000000] the last line\nno newline yet")
    env = {k: v for k, v in os.environ.items() if not k.startswith("LKCTL_")}
    env.update(LKCTL_HOME=str(lkctl_home), HOME=str(tmp_path))
    lkctl = str(Path(sys.executable).parent / "lkctl")
    rc, maxrss_kb, stderr = _peak_rss([lkctl, "vm.logs", "chatty", *args], env, tmp_path / "out")
    assert rc == 0, stderr
    printed = (tmp_path / "out").read_bytes()
    assert printed.endswith(b"] the last line\n") and b"no newline yet" not in printed
    if args:
        assert printed.count(b"\n") == 2
    # 32 MiB of console: before, ~260 MB resident (the log, then a list of its lines); now about lkctl's own
    assert maxrss_kb < 120 << 10, f"{maxrss_kb >> 10} MB"


def _peak_rss(argv: list[str], env: dict[str, str], out: Path) -> tuple[int, int, str]:
    """Run argv from a small parent that reports its peak resident memory (RUSAGE_CHILDREN: argv's own, not a
    fork of this test process); returns (exit status, peak RSS in KiB, stderr)."""
    measure = (
        "import resource, subprocess, sys\n"
        "with open(sys.argv[1], 'wb') as out:\n"
        "    rc = subprocess.call(sys.argv[2:], stdout=out)\n"
        "print(rc, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    )
    proc = subprocess.run([sys.executable, "-c", measure, str(out), *argv], env=env, capture_output=True, text=True,
                          timeout=300, check=False)  # fmt: skip
    rc, maxrss_kb = map(int, proc.stdout.split())
    return rc, maxrss_kb, proc.stderr


def test_vm_stop_looks_for_the_ready_line_without_reading_the_console_whole(lkctl_home: Path, tmp_path: Path) -> None:
    record = state.VmRecord(id="abcd1234", name="chatty", image="x", image_format="kernel+initrd",
                            created="2026-01-01T00:00:00", memory=256, cpus=1, ssh_port=0)  # fmt: skip
    state.save_record(record)
    with open(record.dir / CONSOLE_LOG, "wb") as f:
        for _ in range(128):
            f.write(b"y" * (1 << 20))  # 128 MiB of console and no `lkctl-init: ready`: SIGTERM at once
    qemu = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", f"lkctl-{record.id}"])
    try:
        ident = state.process_identity(qemu.pid)
        assert ident is not None
        state.save_record(state.VmRecord(**{**record.to_json(), "pid": qemu.pid, "pid_start": ident.start,
                                            "boot_id": ident.boot_id}))  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith("LKCTL_")}
        env.update(LKCTL_HOME=str(lkctl_home), HOME=str(tmp_path))
        lkctl = str(Path(sys.executable).parent / "lkctl")
        rc, maxrss_kb, stderr = _peak_rss([lkctl, "vm.stop", "chatty"], env, tmp_path / "out")
        assert rc == 0 and "chatty terminated" in stderr, stderr
        assert qemu.wait(timeout=10) == -15
        assert maxrss_kb < 120 << 10, f"{maxrss_kb >> 10} MB"  # before: the 128 MiB console was read whole
    finally:
        qemu.kill()
        qemu.wait()

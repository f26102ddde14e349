"""A connection holder started before its VM (a warm start, lkctl.runtime.readiness.spawn_holder(after_go=True)):
real holder processes, no VM. What a go does with a booted VM is tested by tests/boot/test_snapshot.py."""

from __future__ import annotations

import time
from pathlib import Path

from lkctl.runtime.readiness import abandon_holder, spawn_holder


def _pid_line(starter_stdout: object) -> int:
    line = starter_stdout.readline()  # type: ignore[attr-defined]
    assert line.startswith(b"pid "), line
    return int(line[4:])


def _gone(pid: int, within: float = 30.0) -> bool:
    """The process ended (the PID 1 here may leave it a zombie for a while: that counts as ended)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8")
        except OSError:
            return True
        if stat.rpartition(")")[2].split()[0] in ("Z", "X"):
            return True
        time.sleep(0.05)
    return False


def test_a_holder_whose_vm_never_started_ends_without_a_go(tmp_path: Path) -> None:
    starter = spawn_holder(tmp_path, 60, after_go=True)
    pid = _pid_line(starter.stdout)
    time.sleep(0.5)  # it is waiting (or still preparing its handshake): it must not go on by itself
    assert not _gone(pid, within=0.1)
    abandon_holder(starter)
    assert _gone(pid), f"the holder {pid} kept running after its start was abandoned"
    assert "no VM record" not in (tmp_path / "holder.log").read_text()  # it ended without looking for its VM
    assert not (tmp_path / "holder.sock").exists()


def test_a_holder_told_to_go_reads_the_vm_record_only_then(tmp_path: Path) -> None:
    starter = spawn_holder(tmp_path, 5, after_go=True)
    assert starter.stdin is not None and starter.stdout is not None
    _pid_line(starter.stdout)
    starter.stdin.write(b"go\n")
    starter.stdin.close()
    # an empty directory: the go made it look, and it says what it found
    assert starter.stdout.readline().decode().strip() == f"error: no VM record in {tmp_path}"
    starter.stdout.close()
    starter.wait()

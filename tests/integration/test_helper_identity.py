"""Helper daemons (virtiofsd) are identified like QEMU before any signal: a PID now held by another process — other
command line, other boot, other start time, or an entry from before identities were recorded — is never signalled."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lkctl.runtime import state
from lkctl.runtime.lifecycle import kill_vm
from lkctl.runtime.state import VmRecord

SLEEPER = [sys.executable, "-c", "import time; time.sleep(120)", "lkctl-test-helper"]


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """A live process standing in for whatever now holds a helper's old PID."""
    p = subprocess.Popen(SLEEPER)
    yield p
    p.kill()
    p.wait()


def _record(helpers: list[list[str]]) -> VmRecord:
    return VmRecord(id="0a1b2c3d", name="h", image="x", image_format="kernel+initrd", created="", memory=1, cpus=1,
                    ssh_port=0, helpers=helpers)  # fmt: skip


def _alive_after_kill(p: subprocess.Popen[bytes], entry: list[str]) -> bool:
    assert kill_vm(_record([entry])) is False  # no QEMU: only the helpers are looked at
    for _ in range(50):
        if p.poll() is not None:
            return False
        time.sleep(0.02)
    return True


def _entry(p: subprocess.Popen[bytes]) -> list[str]:
    entry = state.helper_entry(p.pid, SLEEPER)
    assert entry is not None
    return entry


def test_a_reused_pid_with_another_command_line_is_never_signalled(sleeper: subprocess.Popen[bytes]) -> None:
    pid, start, boot, _ = _entry(sleeper)
    virtiofsd = f"/usr/libexec/virtiofsd --socket-path=lkvol0.sock -o source={Path.cwd()} -o cache=auto"
    assert _alive_after_kill(sleeper, [pid, start, boot, virtiofsd])


def test_a_pid_from_another_boot_or_start_time_is_never_signalled(sleeper: subprocess.Popen[bytes]) -> None:
    pid, start, boot, command = _entry(sleeper)
    assert _alive_after_kill(sleeper, [pid, start, "00000000-another-boot", command])
    assert _alive_after_kill(sleeper, [pid, str(int(start) - 1), boot, command])


def test_an_entry_without_a_recorded_identity_is_never_signalled(sleeper: subprocess.Popen[bytes]) -> None:
    pid, start, _, _ = _entry(sleeper)
    assert _alive_after_kill(sleeper, [pid, start])  # what lkctl recorded before: pid + start time only


def test_the_helper_itself_is_stopped(sleeper: subprocess.Popen[bytes]) -> None:
    entry = _entry(sleeper)
    assert entry[3] == " ".join(SLEEPER) and state.is_our_helper(entry)
    assert not _alive_after_kill(sleeper, entry)


def test_a_record_keeps_the_identity_through_json(sleeper: subprocess.Popen[bytes], tmp_path: Path) -> None:
    record = _record([_entry(sleeper)])
    again = VmRecord.from_json(record.to_json(), tmp_path / "vm.json")
    assert again.helpers == record.helpers and state.is_our_helper(again.helpers[0])

"""The one start path (lkctl.runtime.start) with real processes: a helper daemon serving a unix socket and a real
QEMU (`-machine none`, nothing to boot). A failed start rolls back everything it started; a good one lets go."""

from __future__ import annotations

import dataclasses
import gc
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lkctl.errors import HypervisorFailed, VmError
from lkctl.runtime import state
from lkctl.runtime.lifecycle import restart_vm
from lkctl.runtime.start import DAEMONS_FILE, Daemon, StartPlan, load_daemons, save_daemons, start_processes
from lkctl.runtime.state import VmRecord
from lkctl.runtime.stop import stop_vm
from tests.conftest import require_qemu

pytestmark = pytest.mark.integration

# serves a unix socket (as virtiofsd does) and then waits to be stopped
SERVE = "import socket, sys, time; s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen(); time.sleep(300)"


@pytest.fixture
def record(lkctl_home: Path) -> Iterator[VmRecord]:
    r = VmRecord(id="5a7e0001", name="startpath", image="x", image_format="kernel+initrd", created="", memory=64,
                 cpus=1, ssh_port=0)  # fmt: skip
    r.dir.mkdir(parents=True)
    state.save_record(r)
    yield r
    current = state.load_record(r.dir) or r
    stop_vm(current, timeout=1)  # whatever a failed assertion left running


def _qemu_argv(record: VmRecord, *extra: str) -> tuple[str, ...]:
    require_qemu()
    qemu = shutil.which("qemu-system-x86_64")
    assert qemu is not None
    return (qemu, "-name", f"lkctl-{record.id}", "-machine", "none", "-nodefaults", "-display", "none",
            "-pidfile", "qemu.pid", *extra, "-daemonize")  # fmt: skip


def _daemon(socket: str = "d.sock") -> Daemon:
    return Daemon("test daemon", (sys.executable, "-c", SERVE, socket), "d.log", socket)


def _gone(entry: list[str]) -> bool:
    deadline = time.monotonic() + 10
    while state.is_our_helper(entry):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_a_started_vm_keeps_its_daemon_and_qemu_once_the_start_has_returned(record: VmRecord) -> None:
    started, child = start_processes(record, StartPlan(_qemu_argv(record), (_daemon(),)))
    gc.collect()  # the released ExitStack and its generators are gone: that must stop nothing
    time.sleep(0.3)
    assert child is None  # QEMU daemonized itself
    assert state.is_our_process(started) and state.vm_status(started) == "running"
    assert len(started.helpers) == 1 and state.is_our_helper(started.helpers[0])
    assert (record.dir / "d.sock").exists()
    assert state.load_record(record.dir) == started  # what stop/kill/rm read
    assert stop_vm(started, timeout=1) == "terminated"
    assert _gone(started.helpers[0])
    assert not state.is_our_process(started)


def test_a_start_that_fails_after_qemu_runs_stops_qemu_and_the_daemon(record: VmRecord) -> None:
    seen: list[VmRecord] = []

    def fail(r: VmRecord) -> None:
        seen.append(r)
        assert state.is_our_process(r)  # QEMU really ran
        raise RuntimeError("publishing ports failed")

    with pytest.raises(RuntimeError, match="publishing ports failed"):
        start_processes(record, StartPlan(_qemu_argv(record), (_daemon(),)), after_start=fail)
    assert len(seen) == 1
    assert not state.is_our_process(seen[0])
    assert _gone(seen[0].helpers[0])


def test_qemu_refusing_its_argv_stops_the_daemon_and_keeps_qemus_words(record: VmRecord) -> None:
    plan = StartPlan(_qemu_argv(record, "-no-such-option"), (_daemon(),))
    with pytest.raises(HypervisorFailed, match=f"QEMU failed to start VM {record.name}: .*no-such-option") as e:
        start_processes(record, plan)
    assert "-no-such-option" in e.value.output
    helpers = (state.load_record(record.dir) or record).helpers
    assert len(helpers) == 1 and _gone(helpers[0])


def test_a_daemon_that_never_serves_its_socket_fails_the_start_before_qemu(record: VmRecord) -> None:
    quitter = Daemon("quitter", (sys.executable, "-c", "print('no socket for you')"), "q.log", "q.sock")
    with pytest.raises(VmError, match=r"quitter did not start; see .*q\.log"):
        start_processes(record, StartPlan(_qemu_argv(record), (quitter,)))
    assert (record.dir / "q.log").read_text() == "no socket for you\n"
    assert not (record.dir / "qemu.pid").exists()


def test_the_daemons_of_a_start_are_kept_private_for_restarts(tmp_path: Path) -> None:
    daemons = (_daemon(), Daemon("other", ("/usr/bin/true", "a b"), "o.log"))
    save_daemons(tmp_path, daemons)
    assert (tmp_path / DAEMONS_FILE).stat().st_mode & 0o777 == 0o600
    assert load_daemons(tmp_path) == daemons
    assert load_daemons(tmp_path / "nothing-here") == ()


def test_restarting_a_virtiofs_vm_made_before_daemons_were_kept_is_refused_before_it_is_stopped(
    record: VmRecord,
) -> None:
    started, _ = start_processes(record, StartPlan(_qemu_argv(record)))
    assert state.is_our_process(started)
    old = dataclasses.replace(started, argv=[*started.argv, "-device", "vhost-user-fs-pci,chardev=vfs0,tag=lkvol0"])
    assert not (record.dir / DAEMONS_FILE).exists()
    with pytest.raises(VmError, match=r"helper was not recorded \(the VM was made by an older lkctl\); remove it"):
        restart_vm(old, stop_timeout=1, ready_timeout=1)
    assert state.is_our_process(started)  # still running: nothing was stopped

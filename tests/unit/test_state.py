import json
import os
import subprocess
import sys
from dataclasses import replace

import pytest

from lkctl.errors import StateError, VmNotFound
from lkctl.runtime import state
from lkctl.runtime.state import VmRecord


def rec(vm_id: str, name: str, **kw: object) -> VmRecord:
    base: dict[str, object] = dict(
        id=vm_id, name=name, image="minimal", image_format="kernel+initrd",
        created=f"2026-01-01T00:00:0{len(name) % 10}", memory=1024, cpus=1, ssh_port=2222,
    )  # fmt: skip
    base.update(kw)
    return VmRecord(**base)  # type: ignore[arg-type]


def test_find_by_id_name_and_unique_prefix() -> None:
    for r in (rec("aaaa1111", "web"), rec("aaab2222", "db"), rec("cccc3333", "worker")):
        state.save_record(r)
    assert state.find_vm("web").id == "aaaa1111"
    assert state.find_vm("aaab2222").name == "db"
    assert state.find_vm("cc").name == "worker"
    assert state.find_vm("wo").id == "cccc3333"


def test_ambiguous_prefix_lists_the_candidates() -> None:
    state.save_record(rec("aaaa1111", "web"))
    state.save_record(rec("aaab2222", "db"))
    with pytest.raises(VmNotFound, match="ambiguous") as e:
        state.find_vm("aaa")
    assert "aaaa1111 (web)" in str(e.value) and "aaab2222 (db)" in str(e.value)


def test_unknown_vm_is_a_clear_error() -> None:
    with pytest.raises(VmNotFound, match="no VM matches 'nope'"):
        state.find_vm("nope")


def test_record_of_newer_format_is_refused_not_misread() -> None:
    r = rec("aaaa1111", "web")
    state.save_record(r)
    path = r.dir / "vm.json"
    data = json.loads(path.read_text())
    data["version"] = 99
    path.write_text(json.dumps(data))
    with pytest.raises(StateError, match="format 99"):
        state.all_records()


def test_state_files_are_private() -> None:
    r = rec("aaaa1111", "web")
    state.save_record(r)
    assert (r.dir.stat().st_mode & 0o777) == 0o700
    assert ((r.dir / "vm.json").stat().st_mode & 0o777) == 0o600


def test_a_vm_without_a_live_process_is_stopped() -> None:
    r = rec("aaaa1111", "web", pid=999_999_99, pid_start="1", boot_id="x")
    assert state.vm_status(r) == "stopped"
    assert state.vm_status(replace(r, exit_reason="boom")) == "error"
    assert state.vm_status(rec("bbbb1111", "new")) == "created"


def test_a_reused_pid_is_never_taken_for_our_vm() -> None:
    # a live process whose command line carries our id, but which started at another time: a reused PID
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "lkctl-aaaa1111"])
    try:
        ident = state.process_identity(child.pid)
        assert ident is not None
        ours = rec("aaaa1111", "web", pid=child.pid, pid_start=ident.start, boot_id=ident.boot_id)
        assert state.is_our_process(ours)
        assert not state.is_our_process(replace(ours, pid_start=str(int(ident.start) - 5)))
        # same pid and start time, but not carrying our id: not ours either
        assert not state.is_our_process(replace(ours, id="bbbb2222"))
    finally:
        child.kill()
        child.wait()


def test_zombies_count_as_dead() -> None:
    child = subprocess.Popen(["true"])
    os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # exited but not reaped: a zombie
    try:
        assert state.process_identity(child.pid) is None
    finally:
        child.wait()

import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

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
    (unknown,) = state.all_records()
    assert state.vm_status(unknown) == "unknown" and "format 99" in unknown.problem
    with pytest.raises(StateError, match="format 99"):
        state.load_record(r.dir)


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
        # under load the child's /proc/PID/cmdline can read empty for a moment after Popen returns: wait for it
        deadline = time.monotonic() + 10
        while b"lkctl-aaaa1111" not in Path(f"/proc/{child.pid}/cmdline").read_bytes():
            assert time.monotonic() < deadline, "the child never showed its command line"
            time.sleep(0.05)
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


@pytest.mark.parametrize("content", [b"{not json", b"\xff\xfe", b"[]", json.dumps({"version": 99, "id": "x"}).encode()])
def test_an_unreadable_record_is_an_unknown_vm_that_rm_force_removes(content: bytes) -> None:
    from lkctl.errors import ConfigError
    from lkctl.runtime.launch import list_vms
    from lkctl.runtime.lifecycle import inspect_vm, prune_vms, remove_vm

    good = rec("aaaa1111", "web")
    state.save_record(good)
    bad_dir = state.vms_dir() / "bbbb2222"
    bad_dir.mkdir(mode=0o700)
    (bad_dir / "vm.json").write_bytes(content)
    rows = {r.id: r for r in list_vms()}  # shown even without --all: it may be running
    assert rows["bbbb2222"].status == "unknown" and rows["bbbb2222"].error
    assert rows["bbbb2222"].to_json()["error"] == rows["bbbb2222"].error and "uri" not in rows["bbbb2222"].to_json()
    assert state.find_vm("web") == good  # one bad record no longer breaks the others
    with pytest.raises(StateError, match=r"vm\.rm --force bbbb2222"):
        state.find_vm("bbbb")
    unknown = state.find_vm("bbbb", unknown=True)
    assert inspect_vm(unknown).status == "unknown" and inspect_vm(unknown).to_json()["problem"]
    assert prune_vms() == [good]  # prune leaves what it cannot read
    with pytest.raises(ConfigError, match="--force"):
        remove_vm(unknown)
    assert bad_dir.exists()
    remove_vm(unknown, force=True)
    assert not bad_dir.exists()


def test_an_unknown_record_is_never_saved_over() -> None:
    with pytest.raises(StateError):
        state.save_record(VmRecord.unknown(state.vms_dir() / "cccc3333", "broken"))


def test_a_record_being_created_by_a_live_lkctl_is_never_swept() -> None:
    from lkctl.runtime.launch import list_vms
    from lkctl.runtime.lifecycle import prune_vms

    creator = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        ident = state.process_identity(creator.pid)
        assert ident is not None
        starting = rec("aaaa1111", "starting", creator=[str(ident.pid), ident.start], auto_remove=True)
        reused = rec("bbbb2222", "reused", creator=[str(ident.pid), str(int(ident.start) - 1)])  # PID reused
        for r in (starting, reused):
            state.save_record(r)
        assert state.being_created(starting) and not state.being_created(reused)
        assert sorted(r.id for r in list_vms(include_stopped=True)) == ["aaaa1111", "bbbb2222"]
        assert [r.id for r in prune_vms()] == ["bbbb2222"]
        assert [r.id for r in state.all_records()] == ["aaaa1111"]
    finally:
        creator.kill()
        creator.wait()
    assert not state.being_created(starting)  # its creator died: now it is litter
    assert list_vms(include_stopped=True) == []  # an --rm VM whose creator died is swept


def test_only_an_ended_rm_vm_is_forgotten_and_only_by_the_one_rule() -> None:
    creator = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        ident = state.process_identity(creator.pid)
        assert ident is not None
        starting = rec("aaaa1111", "starting", creator=[str(ident.pid), ident.start], auto_remove=True)
        ended = rec("bbbb2222", "ended", auto_remove=True)
        kept = rec("cccc3333", "kept")
        for r in (starting, ended, kept):
            state.save_record(r)
        assert [state.forget_ended(r) for r in (starting, ended, kept)] == [False, True, False]
        assert sorted(r.id for r in state.all_records()) == ["aaaa1111", "cccc3333"]
        assert state.forget_ended(ended)  # already gone: nothing left to forget
    finally:
        creator.kill()
        creator.wait()


def test_new_ids_never_start_with_a_taken_name() -> None:
    taken = {"a", "b", "c", "d", "e", "f", "0", "1", "2", "3", "4", "5", "6", "7"}
    for _ in range(200):
        assert state.new_vm_id(taken)[0] in "89"


def test_ps_rows_and_inspect_keep_their_json_shape() -> None:
    """vm.ps --json and vm.inspect print these objects: typed in the library, the same keys in the same order."""
    from lkctl.runtime.launch import VmRow
    from lkctl.runtime.lifecycle import VmInspection, inspect_vm

    web = rec("aaaa1111", "web")
    state.save_record(web)
    keys = ["id", "name", "image", "status", "created", "pid", "ssh_port", "ports", "memory", "cpus", "accel", "error"]
    local = VmRow("aaaa1111", "web", "img", "stopped", "", None, 0, ("127.0.0.1:80->80/tcp",), 1, 1, "tcg", None,
                  "local")  # fmt: skip
    assert list(local.to_json()) == [*keys, "host"] and local.to_json()["ports"] == ["127.0.0.1:80->80/tcp"]
    remote = {**local.to_json(), "host": "h1", "uri": "qemu+ssh://h1/system", "uuid": "u-1"}
    assert VmRow.from_json(remote).to_json() == remote and VmRow.from_json(remote).ports == local.ports
    # the listing's fast constructor makes the row the frozen __init__ would
    ran = rec("aaaa2222", "db", pid=42, ports=["127.0.0.1:8080->80/tcp"], exit_reason="x")
    for status, pid in (("running", 42), ("stopped", None)):
        made = VmRow("aaaa2222", "db", "minimal", status, ran.created, pid, ran.ssh_port, ("127.0.0.1:8080->80/tcp",),
                     ran.memory, ran.cpus, ran.accel, "x", "local")  # fmt: skip
        assert VmRow.local(ran, status) == made and VmRow.local(ran, status).to_json() == made.to_json()
        assert hash(VmRow.local(ran, status)) == hash(made)
    doc = inspect_vm(web).to_json()
    assert list(doc)[-3:] == ["status", "problem", "paths"] and doc["status"] == "created" and doc["problem"] is None
    assert doc["paths"]["client_key"] == str(web.dir / "id_ed25519")
    placed = VmInspection(web, "running", {"state_dir": "/x"}, placement={"uri": "u", "host": "h"}).to_json()
    assert list(placed)[-4:] == ["status", "uri", "host", "paths"]

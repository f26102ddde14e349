"""The summary index of VM records (vms/.index.json): used while vm.json is unchanged, never trusted over it."""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
from pathlib import Path
from typing import Any

from lkctl.runtime import state
from lkctl.runtime.state import VmRecord


def rec(vm_id: str, name: str, **kw: object) -> VmRecord:
    base: dict[str, object] = dict(
        id=vm_id, name=name, image="minimal", image_format="kernel+initrd", created=f"2026-01-01T00:00:{vm_id[-2:]}",
        memory=1024, cpus=1, ssh_port=2222, argv=["qemu-system-x86_64", "-name", f"lkctl-{vm_id}"],
    )  # fmt: skip
    base.update(kw)
    return VmRecord(**base)  # type: ignore[arg-type]


def index_path() -> Path:
    return state.vms_dir() / ".index.json"


def read_index() -> tuple[dict[str, Any], dict[str, Any]]:
    """The index's two JSON lines: the entries without argv, then every argv by id."""
    head, argvs = index_path().read_text().split("\n")
    return json.loads(head), json.loads(argvs)


def write_index(index: dict[str, Any], argvs: dict[str, Any]) -> None:
    index_path().write_text(json.dumps(index) + "\n" + json.dumps(argvs))


def test_a_listing_writes_the_index_and_the_next_one_reads_records_from_it() -> None:
    for i in range(3):
        state.save_record(rec(f"0000aa{i:02d}", f"vm{i}"))
    first = state.all_records()
    assert [r.name for r in first] == ["vm0", "vm1", "vm2"]
    assert index_path().stat().st_mode & 0o777 == 0o600
    # an entry whose vm.json still has the recorded inode, mtime and size is not read again: change only the index
    index, argvs = read_index()
    index["records"]["0000aa01"][3][2] = "from-the-index"  # image, the third field
    write_index(index, argvs)
    assert [r.image for r in state.all_records()] == ["minimal", "from-the-index", "minimal"]
    assert state.all_records() == [r if r.id != "0000aa01" else rec("0000aa01", "vm1", image="from-the-index")
                                   for r in first]  # fmt: skip


def test_a_changed_vm_json_wins_over_the_index() -> None:
    state.save_record(rec("0000aa01", "web"))
    state.all_records()
    state.save_record(rec("0000aa01", "web", pid=1234, image="other"))  # same size or not: a new inode
    (r,) = state.all_records()
    assert (r.pid, r.image) == (1234, "other")
    # written in place (same inode) with another size
    path = r.dir / "vm.json"
    data = json.loads(path.read_text())
    data["name"] = "renamed-in-place"
    with open(path, "r+", encoding="utf-8") as f:
        f.write(json.dumps(data))
        f.truncate()
    assert [r.name for r in state.all_records()] == ["renamed-in-place"]
    assert read_index()[0]["records"]["0000aa01"][3][1] == "renamed-in-place"


def test_removed_and_added_vms_show_at_once() -> None:
    a, b = rec("0000aa01", "a"), rec("0000aa02", "b")
    state.save_record(a)
    state.save_record(b)
    state.all_records()
    state.remove_record(a)
    state.save_record(rec("0000aa03", "c"))
    assert [r.name for r in state.all_records()] == ["b", "c"]
    assert sorted(read_index()[0]["records"]) == ["0000aa02", "0000aa03"]


def test_a_corrupt_or_foreign_index_is_rebuilt() -> None:
    state.save_record(rec("0000aa01", "web"))
    state.vms_dir().joinpath(".index.json").write_text("{not json")
    assert [r.name for r in state.all_records()] == ["web"]
    assert read_index()[0]["records"]["0000aa01"][3][1] == "web"
    index, argvs = read_index()
    index["format"][0] = 999  # another lkctl's layout: ignored, even with an entry that would match
    index["records"]["0000aa01"][3][1] = "stale"
    write_index(index, argvs)
    assert [r.name for r in state.all_records()] == ["web"]


def test_a_listing_reads_no_argv_and_the_argvs_stay_true_for_everything_else() -> None:
    for i in range(3):
        state.save_record(rec(f"0000aa{i:02d}", f"vm{i}"))
    full = state.all_records()
    listed = state.listed_records()
    assert listed == [dataclasses.replace(r, argv=[]) for r in full]
    assert read_index()[1]["0000aa01"] == ["qemu-system-x86_64", "-name", "lkctl-0000aa01"]
    # a listing parses only the first line: with the second one broken it is still served from the index ...
    index, _ = read_index()
    index["records"]["0000aa01"][3][2] = "from-the-index"
    index_path().write_text(json.dumps(index) + "\n{broken")
    assert [r.image for r in state.listed_records()] == ["minimal", "from-the-index", "minimal"]
    # ... while whatever needs an argv finds the index unreadable and reads every vm.json again
    assert state.all_records() == full
    assert read_index()[1]["0000aa02"] == ["qemu-system-x86_64", "-name", "lkctl-0000aa02"]


def test_find_vm_looks_up_in_the_listing_and_reads_the_one_record_whole() -> None:
    for i in range(3):
        state.save_record(rec(f"0000aa{i:02d}", f"vm{i}"))
    state.all_records()
    index, _ = read_index()
    index_path().write_text(json.dumps(index) + "\n{broken")  # no argv from the index: they must come from vm.json
    assert state.find_vm("vm1") == rec("0000aa01", "vm1")
    assert state.find_vm("0000aa02").argv == ["qemu-system-x86_64", "-name", "lkctl-0000aa02"]


def test_a_listing_that_finds_a_change_rewrites_the_index_with_every_argv() -> None:
    for i in range(3):
        state.save_record(rec(f"0000aa{i:02d}", f"vm{i}"))
    state.all_records()
    state.save_record(rec("0000aa01", "vm1", argv=["qemu-system-x86_64", "-name", "lkctl-0000aa01", "-m", "2048"]))
    state.remove_record(rec("0000aa02", ""))
    assert [(r.name, r.argv) for r in state.listed_records()] == [("vm0", []), ("vm1", [])]
    index, argvs = read_index()
    assert sorted(index["records"]) == sorted(argvs) == ["0000aa00", "0000aa01"]
    assert argvs["0000aa01"][-2:] == ["-m", "2048"]
    assert [r.argv[-1] for r in state.all_records()] == ["lkctl-0000aa00", "2048"]


def test_an_index_entry_of_the_wrong_shape_is_read_again_from_vm_json() -> None:
    state.save_record(good := rec("0000aa01", "web"))
    state.save_record(other := rec("0000aa02", "db"))
    state.all_records()
    index, argvs = read_index()
    index["records"]["0000aa01"][3] = index["records"]["0000aa01"][3][:-1]  # one field short
    argvs["0000aa02"] = "not a list"
    index["records"]["0000aa03"] = {"not": "an entry"}  # (no such VM: dropped when the index is rewritten)
    write_index(index, argvs)
    assert state.all_records() == [good, other]
    assert state.listed_records() == [dataclasses.replace(good, argv=[]), dataclasses.replace(other, argv=[])]
    state.save_record(third := rec("0000aa03", "cache"))
    index, argvs = read_index()
    index["records"]["0000aa03"] = 7  # an entry that is no list at all
    write_index(index, argvs)
    assert state.all_records() == [good, other, third]


def test_unreadable_records_are_never_cached() -> None:
    good = rec("0000aa01", "web")
    state.save_record(good)
    (good.dir / "vm.json").write_text("{broken")
    (r,) = state.all_records()
    assert state.vm_status(r) == "unknown"
    assert "0000aa01" not in read_index()[0]["records"]
    state.save_record(good)
    assert state.all_records() == [good]


def test_an_index_that_cannot_be_written_does_not_break_listing() -> None:
    state.save_record(rec("0000aa01", "web"))
    index_path().mkdir()  # cannot be read as a file nor replaced by one (a mode would not stop root)
    assert [r.name for r in state.all_records()] == ["web"]
    assert [r.name for r in state.all_records()] == ["web"]
    assert not [p for p in state.vms_dir().iterdir() if p.name.endswith(".tmp")]


def _lister(home: str, rounds: int, out: multiprocessing.Queue[str]) -> None:
    os.environ["LKCTL_HOME"] = home
    try:
        for _ in range(rounds):
            state.all_records()
        out.put("ok")
    except BaseException as e:
        out.put(repr(e))


def test_two_processes_listing_while_records_change_leave_a_true_index() -> None:
    home = os.environ["LKCTL_HOME"]
    for i in range(40):
        state.save_record(rec(f"0000{i:04x}", f"vm{i}"))
    ctx = multiprocessing.get_context("fork")
    out: multiprocessing.Queue[str] = ctx.Queue()
    procs = [ctx.Process(target=_lister, args=(home, 30, out)) for _ in range(2)]
    for p in procs:
        p.start()
    for i in range(40):  # meanwhile: every record changes once, a few go away
        if i % 10 == 0:
            state.remove_record(rec(f"0000{i:04x}", ""))
        else:
            state.save_record(rec(f"0000{i:04x}", f"vm{i}", pid=i))
    for p in procs:
        p.join(60)
    assert [out.get(timeout=5) for _ in procs] == ["ok", "ok"]
    truth = sorted((r for d in state.vms_dir().iterdir() if d.is_dir() and (r := state.load_record(d))),
                   key=lambda r: (r.created, r.id))  # fmt: skip
    assert state.all_records() == truth
    assert len(truth) == 36 and all(r.pid for r in truth)
    assert not [p for p in state.vms_dir().iterdir() if p.name.endswith(".tmp")]

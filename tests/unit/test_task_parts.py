"""Pieces the vm.* tasks now call instead of doing it themselves: flag parsers, the several-VMs loop, output lines."""

from __future__ import annotations

import signal

import pytest

from lkctl.errors import ConfigError, LkError, VmError
from lkctl.flags import parse_signal, parse_tail
from lkctl.runtime.control import for_each_vm
from lkctl.runtime.state import VmRecord, require_running
from lkctl.tasks._adapter import parse_vars
from lkctl.tasks._format import ps_table, running_line, stats_table


def _record(name: str, **kw: object) -> VmRecord:
    base: dict[str, object] = dict(
        id=f"{abs(hash(name)) % 16**8:08x}", name=name, image="minimal", image_format="kernel+initrd", created="",
        memory=512, cpus=1, ssh_port=2222,
    )  # fmt: skip
    base.update(kw)
    return VmRecord(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "sig"), [("KILL", signal.SIGKILL), ("term", signal.SIGTERM), ("SIGINT", signal.SIGINT)]
)
def test_parse_signal_takes_names_with_or_without_sig(text: str, sig: signal.Signals) -> None:
    assert parse_signal(text) is sig


def test_parse_signal_refuses_an_unknown_name_in_one_line() -> None:
    with pytest.raises(ConfigError, match=r"unknown signal 'BOOM'"):
        parse_signal("BOOM")


def test_parse_tail_reads_a_count_or_all() -> None:
    assert parse_tail("all") is None and parse_tail("") is None and parse_tail("20") == 20
    with pytest.raises(ConfigError, match="--tail '-3'"):
        parse_tail("-3")


def test_exec_env_goes_through_parse_vars_like_run_env() -> None:
    assert parse_vars(["A=1", "B==x", "A=2"], flag="--env") == {"A": "2", "B": "=x"}
    with pytest.raises(ConfigError, match="--env 'NOEQUALS': expected NAME=VALUE"):
        parse_vars(["NOEQUALS"], flag="--env")


def test_for_each_vm_acts_on_all_then_raises_the_first_failure_counted() -> None:
    records = [_record("a"), _record("b"), _record("c")]
    done: list[str] = []
    said: list[str] = []

    def action(r: VmRecord) -> None:
        done.append(r.name)
        if r.name != "b":
            raise VmError(f"{r.name} broke", exit_code=3)

    with pytest.raises(VmError) as failed:
        for_each_vm(records, action, say=said.append)
    assert done == ["a", "b", "c"] and said == ["a broke", "c broke"]
    assert failed.value.message == "2 of 3 VMs failed: a broke" and failed.value.exit_code == 3


def test_for_each_vm_raises_a_single_vms_error_unchanged_and_says_nothing() -> None:
    said: list[str] = []

    def action(r: VmRecord) -> None:
        raise ConfigError(f"VM {r.name} is not running")

    with pytest.raises(LkError) as failed:
        for_each_vm([_record("solo")], action, say=said.append)
    assert failed.value.message == "VM solo is not running" and failed.value.exit_code == 2 and said == []


def test_running_line_says_where_the_vm_is_reached() -> None:
    assert running_line(_record("web")).endswith(
        "ssh on 127.0.0.1:2222. Try: vm.exec web -- uname -a   Stop: vm.stop web"
    )
    assert "with no network. Stop: vm.stop off" in running_line(_record("off", ssh_port=0))
    remote = running_line(_record("lv", libvirt={"host": "box", "uri": "qemu:///system"}))
    assert "is running on box through libvirt" in remote


def test_ps_and_stats_tables_render_their_columns() -> None:
    row = {"id": "0a1b2c3d", "name": "web", "host": "local", "image": "x" * 40, "status": "running",
           "created": "", "ssh_port": 0, "ports": []}  # fmt: skip
    lines = ps_table([row]).splitlines()
    assert lines[0].split() == ["ID", "NAME", "HOST", "IMAGE", "STATUS", "CREATED", "SSH", "PORTS"]
    assert "…" + "x" * 29 in lines[1] and lines[1].rstrip().endswith("-")
    stats = {"id": "0a1b2c3d", "name": "web", "cpu_percent": 12.34, "rss_bytes": 100 << 20,
             "memory_bytes": 512 << 20, "vcpus": 2, "uptime_seconds": 61.2, "status": "running"}  # fmt: skip
    assert stats_table(stats).splitlines()[1].split() == [
        "0a1b2c3d", "web", "12.3%", "100MiB", "/", "512MiB", "2", "61s", "running",
    ]  # fmt: skip


def test_require_running_refuses_a_vm_that_never_started_saying_its_status() -> None:
    with pytest.raises(VmError, match=r"^VM web is not running \(status: created\); its console is gone$"):
        require_running(_record("web", pid=0), then="its console is gone")

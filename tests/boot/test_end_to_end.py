"""The backbone, as a user drives it: build `minimal`, boot it, exec in it, stop it — via lkctl and via invoke."""

from __future__ import annotations

import json
import re
import socket
import textwrap
from pathlib import Path

import pytest

from tests.boot.conftest import Cli, qemu_pids_for

pytestmark = pytest.mark.boot


def listening_addresses(port: int) -> set[str]:
    """Local addresses with a TCP socket listening on `port` (from /proc/net/tcp{,6})."""
    found = set()
    for table, v6 in (("/proc/net/tcp", False), ("/proc/net/tcp6", True)):
        for line in Path(table).read_text(encoding="utf-8").splitlines()[1:]:
            fields = line.split()
            addr, hexport = fields[1].rsplit(":", 1)
            if int(hexport, 16) == port and fields[3] == "0A":
                if v6:
                    found.add(socket.inet_ntop(socket.AF_INET6, bytes.fromhex(addr)))
                else:
                    found.add(socket.inet_ntoa(bytes.fromhex(addr)[::-1]))
    return found


def test_minimal_runs_execs_and_stops_through_the_lkctl_cli(cli: Cli, lkctl_home: Path) -> None:
    run = cli("vm.run", "--image=minimal", "-d", "--name", "t1", "--port", "18080:80")
    vm_id = run.stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{8}", vm_id), run.stdout

    out = cli("vm.exec", "t1", "--", "cat", "/proc/version")
    assert out.stdout.startswith("Linux version")

    # exit codes pass through unchanged; arguments are not re-parsed by the guest's shell
    assert cli("vm.exec", "t1", "--", "sh", "-c", "exit 42", check=False).returncode == 42
    echoed = cli("vm.exec", "t1", "--", "echo", "a  b", "$(id)", ";", "c")
    assert echoed.stdout == "a  b $(id) ; c\n"
    assert cli("vm.exec", vm_id[:4], "--", "true").returncode == 0  # a unique ID prefix names the VM

    ps = json.loads(cli("vm.ps", "--json").stdout)
    (row,) = [r for r in ps if r["name"] == "t1"]
    assert row["id"] == vm_id and row["status"] == "running" and row["pid"]
    # every forward listens on loopback only
    assert listening_addresses(row["ssh_port"]) == {"127.0.0.1"}
    assert listening_addresses(18080) == {"127.0.0.1"}

    logs = cli("vm.logs", "t1").stdout
    assert "lkctl-init: ready" in logs

    stop = cli("vm.stop", "t1")
    assert "powered off" in stop.stderr  # the guest honoured ACPI shutdown; no signal was needed
    assert qemu_pids_for(lkctl_home) == []
    assert cli("vm.ps", "--json").stdout.strip() == "[]"
    (stopped,) = json.loads(cli("vm.ps", "--all", "--json").stdout)
    assert stopped["status"] == "stopped"
    cli("vm.rm", "t1")
    assert json.loads(cli("vm.ps", "--all", "--json").stdout) == []


def test_tampered_pinned_host_key_makes_exec_refuse(cli: Cli, lkctl_home: Path) -> None:
    vm_id = cli("vm.run", "--image=minimal", "-d", "--name", "pin").stdout.strip()
    known = lkctl_home / "state" / "vms" / vm_id / "known_hosts"
    host, keytype, _ = known.read_text().split()
    other = "AAAAC3NzaC1lZDI1NTE5AAAAIBbOzdKrBZnN2I1uBvl1RGq0Pl4XRwhW2o8a4SCqPOLa"  # some other ed25519 key
    known.write_text(f"{host} {keytype} {other}\n")
    try:
        res = cli("vm.exec", "pin", "--", "true", check=False)
        assert res.returncode != 0
        assert "host key" in res.stderr and "refus" in res.stderr
        assert "Traceback" not in res.stderr
    finally:
        cli("vm.stop", "pin")


def test_invoke_in_a_users_repo_behaves_like_lkctl(cli: Cli) -> None:
    (cli.cwd / "tasks.py").write_text(
        textwrap.dedent(
            """
            from invoke import Collection
            from lkctl.tasks import image, vm

            ns = Collection(vm.ns, image.ns)
            """
        )
    )
    (cli.cwd / "invoke.yaml").write_text("lkctl:\n  vm:\n    memory: 768\n")
    cli("vm.run", "--image=minimal", "-d", "--name", "inv", tool="invoke")
    try:
        out = cli("vm.exec", "inv", "--", "sh", "-c", "grep MemTotal /proc/meminfo", tool="invoke")
        total_kb = int(out.stdout.split()[1])
        assert 600_000 < total_kb < 768 * 1024  # the project's invoke.yaml set the memory
        row = json.loads(cli("vm.ps", "--json").stdout)[0]  # lkctl sees what invoke started
        assert row["name"] == "inv" and row["memory"] == 768
    finally:
        cli("vm.stop", "inv", tool="invoke")


def test_foreground_run_streams_the_console_and_ends_when_the_guest_powers_off(cli: Cli) -> None:
    import subprocess
    import time

    from tests.boot.conftest import BIN

    fg = subprocess.Popen(
        [str(BIN / "lkctl"), "vm.run", "--image=minimal", "--name", "fg"],
        env=cli.env, cwd=cli.cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            ps = json.loads(cli("vm.ps", "--json").stdout)
            if ps and "lkctl-init: ready" in cli("vm.logs", "fg").stdout:
                break
            time.sleep(0.5)
        else:
            pytest.fail("foreground VM never became ready")
        cli("vm.stop", "fg")
        out, err = fg.communicate(timeout=60)
    finally:
        if fg.poll() is None:
            fg.kill()
            fg.wait()
    assert fg.returncode == 0, err
    assert b"lkctl-init: ready" in out
    assert b"started; ssh on 127.0.0.1:" in err and b"lkctl vm.exec fg -- sh" in err  # how to reach it


def test_readiness_timeout_says_why_and_leaves_no_qemu(cli: Cli, lkctl_home: Path) -> None:
    spec = cli.cwd / "nossh.yml"
    spec.write_text(
        "kernel:\n  image: lkctl.local/kernel:latest\n  cmdline: console=ttyS0\ninit:\n  - lkctl.local/init:latest\n"
    )
    # no sshd: it never becomes ready; 45 s lets a loaded CI machine's kernel reach init (it took >25 s once)
    res = cli("vm.run", f"--image={spec}", "-d", "--name", "slow", "--timeout", "45", check=False)
    assert res.returncode != 0
    assert "did not become ready" in res.stderr
    assert "last console lines" in res.stderr and "lkctl-init" in res.stderr
    assert "Traceback" not in res.stderr
    assert qemu_pids_for(lkctl_home) == []
    (row,) = json.loads(cli("vm.ps", "--all", "--json").stdout)
    assert row["status"] == "error" and row["error"]


@pytest.mark.parametrize(("tool", "when"), [("lkctl", "booting"), ("invoke", "booting"), ("lkctl", "spawning")])
def test_sigterm_while_starting_leaves_no_qemu(cli: Cli, lkctl_home: Path, tool: str, when: str) -> None:
    import os
    import signal
    import subprocess
    import time

    from tests.boot.conftest import BIN

    if tool == "invoke":
        (cli.cwd / "tasks.py").write_text("from lkctl.tasks import ns\n")
    starter = subprocess.Popen(
        [str(BIN / tool), "vm.run", "--image=minimal", "-d", "--name", "cancelled"],
        env=cli.env, cwd=cli.cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120

        def recorded_pid() -> bool:
            return any(json.loads(p.read_text()).get("pid") for p in lkctl_home.glob("state/vms/*/vm.json"))

        while not qemu_pids_for(lkctl_home) or (when == "booting" and not recorded_pid()):
            assert starter.poll() is None, starter.communicate()
            assert time.monotonic() < deadline, "QEMU never started"
            time.sleep(0.02)
        os.kill(starter.pid, signal.SIGTERM)  # a CI runner cancelling the job
        _, err = starter.communicate(timeout=60)
    finally:
        if starter.poll() is None:
            starter.kill()
            starter.wait()
    assert starter.returncode != 0
    assert b"Traceback" not in err
    time.sleep(0.5)
    assert qemu_pids_for(lkctl_home) == []
    rows = json.loads(cli("vm.ps", "--all", "--json").stdout)
    if when == "booting":
        (row,) = rows
        assert row["status"] == "error" and "interrupted" in row["error"]
    else:
        assert [r["status"] for r in rows] in ([], ["error"])

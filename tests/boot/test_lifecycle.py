"""Lifecycle and crash safety through the real CLI: volumes, cp, exec options, inspect, restart, kill, --rm,
concurrent commands, and lkctl SIGKILLed at any point."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from lkctl.runtime.state import INDEX_FILE
from tests.boot.conftest import BIN, Cli, qemu_pids_for

pytestmark = pytest.mark.boot


def test_volumes_cp_exec_options_inspect_restart_and_rm(cli: Cli, lkctl_home: Path, tmp_path: Path) -> None:
    share = tmp_path / "share"
    share.mkdir()
    (share / "from-host.txt").write_text("hello from the host\n")
    ro = tmp_path / "ro"
    ro.mkdir()
    (ro / "x").write_text("x")
    cli("vm.run", "--image=minimal", "-d", "--name", "life", "--volume", f"{share}:/data",
        "--volume", f"{ro}:/ro:ro", "--disk", "64M")  # fmt: skip
    try:
        # a 9p volume round-trips files both ways
        assert cli("vm.exec", "life", "--", "cat", "/data/from-host.txt").stdout == "hello from the host\n"
        cli("vm.exec", "life", "--", "sh", "-c", "echo from the guest > /data/from-guest.txt")
        assert (share / "from-guest.txt").read_text() == "from the guest\n"
        assert cli("vm.exec", "life", "--", "sh", "-c", "echo no > /ro/x", check=False).returncode != 0
        assert (ro / "x").read_text() == "x"

        # exec: stdin streams, env and workdir apply, quoting survives
        out = cli("vm.exec", "life", "--env", "GREETING=a b", "--workdir", "/data", "--",
                  "sh", "-c", 'echo "$GREETING" "$(pwd)"; cat', input=b"piped\n")  # fmt: skip
        assert out.stdout == "a b /data\npiped\n"

        # cp: a directory tree with modes, host -> guest -> host
        tree = tmp_path / "tree"
        (tree / "sub").mkdir(parents=True)
        (tree / "sub" / "script.sh").write_text("#!/bin/sh\necho hi\n")
        (tree / "sub" / "script.sh").chmod(0o750)
        (tree / "secret").write_text("s")
        (tree / "secret").chmod(0o600)
        cli("vm.cp", str(tree), "life:/tmp/")
        assert cli("vm.exec", "life", "--", "/tmp/tree/sub/script.sh").stdout == "hi\n"
        back = tmp_path / "back"
        cli("vm.cp", "life:/tmp/tree", str(back))
        assert (back / "sub" / "script.sh").stat().st_mode & 0o777 == 0o750
        assert (back / "secret").stat().st_mode & 0o777 == 0o600
        assert (back / "secret").read_text() == "s"

        info = json.loads(cli("vm.inspect", "life").stdout)
        assert info["status"] == "running" and info["image_digest"].startswith("sha256:")
        assert Path(info["paths"]["client_key"]).stat().st_mode & 0o777 == 0o600
        assert info["argv"][0].endswith("qemu-system-x86_64")

        # restart: same name, keys and volumes; a new QEMU
        old_pid = info["pid"]
        cli("vm.restart", "life")
        info2 = json.loads(cli("vm.inspect", "life").stdout)
        assert info2["status"] == "running" and info2["pid"] != old_pid
        assert cli("vm.exec", "life", "--", "cat", "/data/from-host.txt").returncode == 0

        cli("vm.kill", "life")
        assert qemu_pids_for(lkctl_home) == []
        assert json.loads(cli("vm.inspect", "life").stdout)["status"] == "stopped"
    finally:
        cli("vm.rm", "--force", "life")
    assert json.loads(cli("vm.ps", "--all", "--json").stdout) == []


def test_run_with_rm_is_forgotten_once_stopped(cli: Cli) -> None:
    cli("vm.run", "--image=minimal", "-d", "--rm", "--name", "tmp1")
    cli("vm.stop", "tmp1")
    assert json.loads(cli("vm.ps", "--all", "--json").stdout) == []


def _spawn(cli: Cli, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([str(BIN / "lkctl"), *args], env=cli.env, cwd=cli.cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip


def test_fifty_concurrent_commands_lose_no_record(cli: Cli, lkctl_home: Path) -> None:
    runs = [
        _spawn(cli, "vm.run", "--image=minimal", "-d", "--no-wait", "--memory", "128", "--name", f"c{i}")
        for i in range(10)
    ]
    others = [_spawn(cli, "vm.ps", "--all", "--json") for _ in range(25)]
    others += [_spawn(cli, "vm.inspect", f"c{i % 10}") for i in range(15)]
    try:
        for p in others:
            out, err = p.communicate(timeout=300)
            assert b"Traceback" not in err, err
            if p.args[1] == "vm.ps":  # type: ignore[index]
                assert p.returncode == 0, err
                json.loads(out)  # never unparsable, whatever is being written meanwhile
        started = {}
        for i, p in enumerate(runs):
            out, err = p.communicate(timeout=300)
            assert p.returncode == 0, err
            started[f"c{i}"] = out.decode().strip()
        rows = json.loads(cli("vm.ps", "--all", "--json").stdout)
        assert {r["name"]: r["id"] for r in rows} == started
        assert len(qemu_pids_for(lkctl_home)) == 10
        kills = [_spawn(cli, "vm.kill", name) for name in started]
        for p in kills:
            p.communicate(timeout=120)
            assert p.returncode == 0
    finally:
        for p in [*runs, *others]:
            if p.poll() is None:
                p.kill()
                p.communicate()
    assert qemu_pids_for(lkctl_home) == []
    cli("vm.prune")
    assert json.loads(cli("vm.ps", "--all", "--json").stdout) == []


@pytest.mark.parametrize("delay", [0.3, 1.0, 2.0, 4.0])
def test_sigkill_of_lkctl_at_any_point_is_reconciled(cli: Cli, lkctl_home: Path, delay: float) -> None:
    p = _spawn(cli, "vm.run", "--image=minimal", "-d", "--name", "victim")
    time.sleep(delay)
    p.send_signal(signal.SIGKILL)
    p.communicate()
    time.sleep(0.5)
    rows = json.loads(cli("vm.ps", "--all", "--json").stdout)  # state parses whatever the moment of death
    alive = qemu_pids_for(lkctl_home)
    # every QEMU that survived its lkctl is visible, as running, so it can be stopped
    assert len(alive) == sum(1 for r in rows if r["status"] == "running")
    for r in rows:
        if r["status"] == "running":
            assert r["pid"] in alive
            cli("vm.kill", r["id"])
    assert qemu_pids_for(lkctl_home) == []
    cli("vm.prune")
    assert json.loads(cli("vm.ps", "--all", "--json").stdout) == []
    leftovers = [f for f in (lkctl_home / "state" / "vms").glob("*") if f.name not in (".lock", INDEX_FILE)]
    assert leftovers == [], leftovers
    assert os.path.isdir(lkctl_home / "state")


def test_virtiofs_volume_round_trips_its_daemon_comes_back_on_start_and_goes_with_the_vm(
    cli: Cli, tmp_path: Path
) -> None:
    from lkctl.runtime.disks import find_virtiofsd
    from lkctl.runtime.state import process_identity

    if find_virtiofsd() is None or os.geteuid() != 0:
        pytest.skip("virtiofsd (run as root) is not available")
    share = tmp_path / "share"
    share.mkdir()
    (share / "h").write_text("host side\n")
    cli("vm.run", "--image=minimal", "-d", "--name", "vfs", "--virtiofs", "--volume", f"{share}:/share")
    try:
        out = cli("vm.exec", "vfs", "--", "sh", "-c", "cat /share/h; grep ' /share ' /proc/mounts; echo g > /share/g")
        assert out.stdout.startswith("host side\nlkvol0 /share virtiofs ")
        assert (share / "g").read_text() == "g\n"
        first = json.loads(cli("vm.inspect", "vfs").stdout)["helpers"]
        assert first

        # stop + start and restart go through vm.run's start path: the volume's virtiofsd comes back with the VM
        cli("vm.stop", "vfs")
        time.sleep(0.5)
        assert all(process_identity(int(pid)) is None for pid, *_ in first)
        (share / "while-stopped").write_text("written while the VM was down\n")
        cli("vm.start", "vfs")
        out = cli("vm.exec", "vfs", "--", "sh", "-c", "cat /share/while-stopped; grep ' /share ' /proc/mounts")
        assert out.stdout.startswith("written while the VM was down\nlkvol0 /share virtiofs ")
        cli("vm.restart", "vfs")
        assert cli("vm.exec", "vfs", "--", "cat", "/share/g").stdout == "g\n"
        helpers = json.loads(cli("vm.inspect", "vfs").stdout)["helpers"]
        assert helpers and not {h[0] for h in helpers} & {h[0] for h in first}
    finally:
        cli("vm.rm", "--force", "vfs")
    time.sleep(0.5)
    assert all(process_identity(int(pid)) is None for pid, *_ in helpers)

"""Robustness under real boots: ps/prune racing VM starts, stopping a VM that is still booting, service output
reaching the console at once, and a SIGKILLed `vm.run` whose staged keys are reclaimed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.boot.conftest import BIN, Cli, qemu_pids_for

pytestmark = pytest.mark.boot

TALKER = """\
kernel:
  image: lkctl.local/kernel:latest
  cmdline: "console=ttyS0 quiet"
init:
  - lkctl.local/init:latest
services:
  - name: talker
    image: lkctl.local/init:latest
    command: ["/bin/sh", "-c", "echo talker-first; sleep 1; echo talker-last-line; exec sleep 100000"]
"""


TIGHT_LOOP = """
import sys, traceback
from pathlib import Path
from lkctl.runtime.launch import list_vms
from lkctl.runtime.lifecycle import prune_vms
stop = Path(sys.argv[1])
with open(f"{stop}.err", "a") as err:
    while not stop.exists():
        try:
            prune_vms()
            list_vms(include_stopped=True)
        except Exception:
            err.write("exit: " + traceback.format_exc())
"""


def _spawn(cli: Cli, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([str(BIN / "lkctl"), *args], env=cli.env, cwd=cli.cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip


def test_ps_and_prune_loops_never_sweep_a_vm_being_started(cli: Cli, lkctl_home: Path, tmp_path: Path) -> None:
    stop = tmp_path / "stop-loops"
    loop = 'while [ ! -e "$1" ]; do "$2" "$3" $4 >/dev/null 2>>"$1.err" || echo "exit $?" >>"$1.err"; done'
    loops = [
        subprocess.Popen(["sh", "-c", loop, "sh", str(stop), str(BIN / "lkctl"), cmd, extra], env=cli.env)
        for cmd, extra in (("vm.prune", ""), ("vm.ps", "--all"))
    ]
    # and a tight loop of the same library calls, so the window between a record's creation and QEMU's start
    # is hit on every run rather than by chance
    loops.append(subprocess.Popen([sys.executable, "-c", TIGHT_LOOP, str(stop)], env=cli.env))
    runs = [
        _spawn(cli, "vm.run", "--image=minimal", "-d", "--no-wait", "--rm", "--memory", "128", "--name", f"r{i}")
        for i in range(6)
    ]
    try:
        started = {}
        for i, p in enumerate(runs):
            out, err = p.communicate(timeout=600)
            assert b"Traceback" not in err, err
            assert p.returncode == 0, err
            started[f"r{i}"] = out.decode().strip()
        rows = json.loads(cli("vm.ps", "--all", "--json").stdout)
        assert {r["name"]: r["id"] for r in rows} == started  # every VM kept its record
        assert len(qemu_pids_for(lkctl_home)) == 6
    finally:
        stop.touch()
        for lp in loops:
            lp.wait(timeout=120)
        for p in runs:
            if p.poll() is None:
                p.kill()
                p.communicate()
        for pid in qemu_pids_for(lkctl_home):
            os.kill(pid, signal.SIGKILL)
    errors = Path(f"{stop}.err").read_text(encoding="utf-8") if Path(f"{stop}.err").exists() else ""
    assert "Traceback" not in errors and "exit " not in errors, errors
    cli("vm.prune")


def test_stopping_a_vm_that_is_still_booting_does_not_wait_for_acpi(cli: Cli, lkctl_home: Path) -> None:
    cli("vm.run", "--image=minimal", "-d", "--no-wait", "--name", "early")
    console = lkctl_home / "state" / "vms" / json.loads(cli("vm.inspect", "early").stdout)["id"] / "console.log"
    assert b"lkctl-init: ready" not in (console.read_bytes() if console.exists() else b"")
    began = time.monotonic()
    out = cli("vm.stop", "early")
    took = time.monotonic() - began
    assert "terminated" in out.stderr and took < 10, (out.stderr, took)  # the ACPI timeout is 30 s
    assert qemu_pids_for(lkctl_home) == []
    cli("vm.rm", "early")


def test_a_service_line_reaches_vm_logs_before_the_service_prints_another(cli: Cli, tmp_path: Path) -> None:
    yml = tmp_path / "talker.yml"
    yml.write_text(TALKER)
    cli("vm.run", f"--image={yml}", "-d", "--no-wait", "--name", "talker", timeout=900)
    try:
        deadline = time.monotonic() + 600
        logs = ""
        while time.monotonic() < deadline:
            logs = cli("vm.logs", "talker").stdout
            if "[talker] talker-last-line" in logs:
                break
            time.sleep(2)
        # the service prints nothing after this line: before the fix it stayed in init's sed until the next one
        assert "[talker] talker-first" in logs and "[talker] talker-last-line" in logs, logs[-2000:]
    finally:
        cli("vm.rm", "--force", "talker")


def _killed_run(cli: Cli, lkctl_home: Path, name: str) -> None:
    """Start a foreground `vm.run` of a template that asks for the VM's keys, and SIGKILL it once it has staged
    them (a foreground run holds state/staging/keys-* until the VM ends)."""
    staging = lkctl_home / "state" / "staging"
    p = _spawn(cli, "vm.run", "--image=keyed", "--name", name)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not list(staging.glob("keys-*/id_ed25519")):
            time.sleep(0.02)
        p.send_signal(signal.SIGKILL)
        p.communicate()
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
        for pid in qemu_pids_for(lkctl_home):
            os.kill(pid, signal.SIGKILL)


def test_staged_keys_a_sigkilled_run_left_are_reclaimed_by_prune_and_the_next_run(cli: Cli, lkctl_home: Path) -> None:
    templates = cli.cwd / ".lkctl" / "templates"
    templates.mkdir(parents=True)
    (templates / "keyed.yml").write_text(
        "kernel: {image: lkctl.local/kernel:latest, cmdline: console=ttyS0}\n"
        "init: [lkctl.local/init:latest]\n"
        "files:\n  - {path: etc/given/authorized_keys, contents: '${SSH_KEY}', mode: '0600'}\n"
    )
    staging = lkctl_home / "state" / "staging"
    _killed_run(cli, lkctl_home, "k1")
    assert len(list(staging.glob("keys-*"))) == 1, "the SIGKILL left nothing to reclaim"
    cli("vm.prune")
    assert list(staging.glob("keys-*")) == []

    _killed_run(cli, lkctl_home, "k2")
    (dead,) = staging.glob("keys-*")
    live = _spawn(cli, "vm.run", "--image=keyed", "--name", "alive")  # the next run reclaims, and keeps its own
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and (dead.exists() or not list(staging.glob("keys-*/id_ed25519"))):
            time.sleep(0.02)
        assert not dead.exists()
        (mine,) = staging.glob("keys-*")
        cli("vm.prune")  # a live run's staging is never taken
        assert mine.exists()
    finally:
        live.send_signal(signal.SIGTERM)
        live.communicate(timeout=120)
    assert list(staging.glob("keys-*")) == []
    cli("vm.prune")

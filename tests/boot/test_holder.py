"""The per-VM connection holder through the real CLI: one SSH handshake serves every plain `vm.exec`, output and
exit codes stay exact, it is identity-checked, restarted with the VM and stopped with it."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import time
from pathlib import Path

import pytest

from tests.boot.conftest import BIN, Cli

pytestmark = pytest.mark.boot


def _vm_dir(home: Path) -> Path:
    (vm_dir,) = [d for d in (home / "state" / "vms").iterdir() if d.is_dir()]
    return vm_dir


def _holder_pid(vm_dir: Path) -> int:
    helpers = json.loads((vm_dir / "vm.json").read_text())["helpers"]
    assert len(helpers) >= 1
    return int(helpers[-1][0])


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text(encoding="utf-8").split(") ", 1)[1][0] not in "ZX"
    except OSError:
        return False


def _exec(cli: Cli, *argv: str, input: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([str(BIN / "lkctl"), "vm.exec", *argv], env=cli.env, cwd=cli.cwd, input=input,
                          capture_output=True, timeout=120, check=False)  # fmt: skip


def _sshd_connections(cli: Cli) -> int:
    """Connections the guest's dropbear serves (one process per connection, plus the listener), counted by a
    command that runs over one of them."""
    r = _exec(cli, "held", "--", "sh", "-c", "cat /proc/[0-9]*/comm 2>/dev/null | grep -c '^dropbear$'")
    assert r.returncode == 0, r.stderr
    return int(r.stdout) - 1


def test_holder_serves_exec_with_one_handshake_and_follows_the_vm(cli: Cli, lkctl_home: Path) -> None:
    cli("vm.run", "--image=minimal", "-d", "--name", "held")
    try:
        vm_dir = _vm_dir(lkctl_home)
        console = (vm_dir / "console.log").read_bytes()
        assert b"lkctl-init: sshd listening" in console
        sock = vm_dir / "holder.sock"
        assert stat.S_ISSOCK(sock.stat().st_mode) and stat.S_IMODE(sock.stat().st_mode) == 0o600
        assert stat.S_IMODE(vm_dir.stat().st_mode) == 0o700
        pid = _holder_pid(vm_dir)
        assert _alive(pid)

        # byte-exact output on both streams, the exit status, and stdin streamed, all through the holder
        script = r"printf '\377\376out\000\r\n'; printf '\200err\n' >&2; exit 3"
        r = _exec(cli, "held", "--", "sh", "-c", script)
        assert (r.returncode, r.stdout, r.stderr) == (3, b"\xff\xfeout\x00\r\n", b"\x80err\n")
        data = os.urandom(1024 * 1024 + 3)
        r = _exec(cli, "held", "--", "sh", "-c", "cat; kill -TERM $$", input=data)
        assert (r.returncode, r.stdout) == (128 + signal.SIGTERM, data)
        assert _sshd_connections(cli) == 1  # vm.run's own connection (the holder's) served all of them

        # the Python API's held connection (lkctl.ssh.session) on the same VM
        env = {**os.environ, **cli.env}
        code = (
            "from lkctl import ssh; from lkctl.runtime.state import find_vm; from lkctl.runtime.vm import ssh_target\n"
            "with ssh.session(ssh_target(find_vm('held'))) as s:\n"
            "    print([s.exec(['echo', str(i)]) for i in range(3)])\n"
        )
        out = subprocess.run([str(BIN / "python"), "-c", code], env=env, capture_output=True, text=True, timeout=120)
        assert out.stdout.strip() == str([(0, f"{i}\n".encode(), b"") for i in range(3)]), out.stderr

        # a dead holder is not fatal: vm.exec connects over SSH itself
        os.kill(pid, signal.SIGKILL)
        r = _exec(cli, "held", "--", "echo", "direct")
        assert (r.returncode, r.stdout) == (0, b"direct\n")

        # restart brings a new holder; stop ends it and removes its socket
        cli("vm.restart", "held", timeout=600)
        new = _holder_pid(vm_dir)
        assert new != pid and _alive(new)
        r = _exec(cli, "held", "--", "echo", "again")
        assert (r.returncode, r.stdout) == (0, b"again\n")
        assert _sshd_connections(cli) == 1
        cli("vm.stop", "held")
        deadline = time.monotonic() + 10
        while _alive(new) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(new)
        assert not sock.exists()
    finally:
        cli("vm.rm", "--force", "held", check=False)

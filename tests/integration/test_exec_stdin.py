"""Piped and terminal stdin end cleanly: the command's exit code comes back, never Python's abort (134).

Each case runs a real `python` process that calls lkctl.ssh.exec_command with its own stdin against the dropbear
of test_ssh.py, the way `lkctl vm.exec`/`vm.shell` do, and checks how that process ends.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.test_ssh import Guest, free_port, prepare_guest, start_dropbear, stop_dropbear

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def guest(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Guest]:
    g = prepare_guest(tmp_path_factory.mktemp("guest"), free_port())
    proc = start_dropbear(g)
    try:
        yield g
    finally:
        stop_dropbear(proc)


_CLIENT = """
import json, sys
from pathlib import Path
from lkctl.ssh import SshTarget, exec_command
t = json.loads(sys.argv[1])
target = SshTarget(t["host"], t["port"], t["user"], Path(t["key"]), Path(t["known_hosts"]), label="t1")
sys.exit(exec_command(target, command=sys.argv[2], stdin=sys.stdin.buffer, pty=sys.argv[3] == "pty"))
"""


def client_argv(g: Guest, command: str, *, pty: bool = False) -> list[str]:
    t = g.target
    spec = {"host": t.host, "port": t.port, "user": t.user, "key": str(t.client_key), "known_hosts": str(t.known_hosts)}
    return [sys.executable, "-c", _CLIENT, json.dumps(spec), command, "pty" if pty else "pipe"]


@pytest.mark.parametrize("code", [0, 3])
def test_a_command_that_ignores_a_still_open_stdin_pipe_returns_its_code_promptly(guest: Guest, code: int) -> None:
    # as `(echo a; sleep 5) | lkctl vm.exec VM -- true`: the writer keeps the pipe open long after the command ends
    proc = subprocess.Popen(
        client_argv(guest, f"exit {code}"), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdin is not None
    proc.stdin.write(b"a\n")
    proc.stdin.flush()
    started = time.monotonic()
    try:
        rc = proc.wait(timeout=20)
        elapsed = time.monotonic() - started
    finally:
        proc.stdin.close()
    assert proc.stderr is not None
    err = proc.stderr.read()
    proc.stderr.close()
    assert proc.stdout is not None
    proc.stdout.close()
    assert b"Fatal Python error" not in err
    assert rc == code, err.decode(errors="replace")
    assert elapsed < 10, f"the session took {elapsed:.1f}s to end while stdin stayed open"


def test_piped_stdin_still_reaches_a_command_that_reads_it(guest: Guest) -> None:
    done = subprocess.run(client_argv(guest, "wc -c; exit 5"), input=b"x" * 100_000, capture_output=True, timeout=30)
    assert (done.returncode, done.stdout.strip()) == (5, b"100000")
    assert b"Fatal Python error" not in done.stderr


def _read_until(fd: int, needle: bytes, timeout: float) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    while needle not in seen and time.monotonic() < deadline:
        if select.select([fd], [], [], 0.2)[0]:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
    return seen


def test_an_interactive_shell_on_a_terminal_exits_with_the_shells_code(guest: Guest, tmp_path: Path) -> None:
    master, slave = os.openpty()
    try:
        proc = subprocess.Popen(
            client_argv(guest, "PS1='lk$ ' exec sh -i", pty=True),
            stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
        )  # fmt: skip
        os.close(slave)
        slave = -1
        assert b"lk$ " in _read_until(master, b"lk$ ", 20)
        os.write(master, b"exit 7\r")
        rc = proc.wait(timeout=20)
        rest = _read_until(master, b"\0", 1)
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)
    assert b"Fatal Python error" not in rest
    assert rc == 7

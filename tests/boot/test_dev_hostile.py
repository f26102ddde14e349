"""dev.* against a guest that does what an untrusted guest (or a coding agent as root) may do, in a project that
other users of the host can reach, under an odd path: one dev VM per module, shared by the tests."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.boot.conftest import BIN, Cli, qemu_pids_for, read_until
from tests.conftest import require_qemu

pytestmark = [pytest.mark.boot, pytest.mark.timeout(1200)]

# a server that ignores the signals a closed terminal and dev.serve's stop send (SIGHUP, SIGTERM)
STUBBORN = """\
import os, signal
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
signal.signal(signal.SIGTERM, signal.SIG_IGN)
signal.signal(signal.SIGHUP, signal.SIG_IGN)
ThreadingHTTPServer(("0.0.0.0", int(os.environ["PORT"])), SimpleHTTPRequestHandler).serve_forever()
"""


@dataclass
class Hostile:
    home: Path
    project: Path
    cli: Cli
    booted: str  # dev.boot's stderr


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hostile]:
    require_qemu()
    home = tmp_path_factory.mktemp("lkhome")
    # every user reaches it (0755 under /tmp), unlike pytest's 0700 tmp dirs; a comma (QEMU's option separator),
    # spaces and non-ASCII in its name
    public = Path(tempfile.mkdtemp(prefix="lkctl-hostile-"))
    public.chmod(0o755)
    project = public / "my,app ü"
    (project / "sub").mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(project)], check=True)
    (project / "sub" / "index.html").write_text("served-from-sub\n")
    (project / "stubborn.py").write_text(STUBBORN)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LKCTL_VM_MEMORY", "LKCTL_VM_CPUS", "INVOKE_"))}
    env.update(
        LKCTL_HOME=str(home),
        LKCTL_CACHE_DIR=str(Path(__file__).resolve().parents[2] / ".lkctl-test" / "cache"),
        LKCTL_DEV_MEMORY="768",
        LKCTL_VM_READY_TIMEOUT="900",
        PATH=f"{BIN}:{env.get('PATH', '/usr/bin:/bin')}",
    )
    cli = Cli(env, project / "sub")
    try:
        booted = cli("dev.boot", timeout=1200)
        yield Hostile(home, project, cli, booted.stderr)
    finally:
        cli("dev.stop", check=False)
        left = qemu_pids_for(home)
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(public, ignore_errors=True)
        assert not left, f"the hostile dev tests left QEMU processes running: {left}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_project_other_users_reach_is_shared_over_9p_so_the_guest_plants_no_setuid_file_or_device(
    hostile: Hostile,
) -> None:
    # over virtiofs (virtiofsd as root) the guest's root made /app/suid setuid-root and /app/disk the host's
    # /dev/sda (8,0) for every host user who reaches the project
    assert f"{hostile.project} at /app (9p)" in hostile.booted, hostile.booted
    st = json.loads(hostile.cli("dev.status", "--json").stdout)
    assert (st["share"], st["project"]) == ("9p", str(hostile.project))
    script = "cp /bin/sh /app/suid && chmod 4755 /app/suid && mknod /app/disk b 8 0 && ls -l /app/suid /app/disk"
    guest = hostile.cli("dev.shell", "--", "sh", "-c", script).stdout
    assert "rwsr" in guest and "8, " in guest  # the guest sees what it made (kept in xattrs)
    suid, disk = os.lstat(hostile.project / "suid"), os.lstat(hostile.project / "disk")
    assert stat.S_IMODE(suid.st_mode) & (stat.S_ISUID | stat.S_ISGID) == 0, oct(suid.st_mode)
    assert stat.S_ISREG(disk.st_mode), oct(disk.st_mode)


def _serve(hostile: Hostile, port: int, command: str) -> subprocess.Popen[bytes]:
    # env --default-signal: a Ctrl-C reaches dev.serve even from a background job (see test_dev.py)
    return subprocess.Popen(
        ["env", "--default-signal=INT", str(BIN / "lkctl"), "dev.serve", "--port", str(port), "--command", command],
        cwd=hostile.cli.cwd, env=hostile.cli.env,
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip


def _serve_until_ctrl_c(hostile: Hostile, command: str, page: str, body: bytes, port: int = 0) -> None:
    port = port or _free_port()
    url = f"http://127.0.0.1:{port}/"
    with _serve(hostile, port, command) as serve:
        try:
            assert serve.stderr is not None
            said = read_until(serve.stderr.fileno(), url.encode(), 300)
            assert f"at {url}".encode() in said, said
            with urllib.request.urlopen(url + page, timeout=30) as answer:
                assert answer.read() == body
            serve.send_signal(signal.SIGINT)
            assert serve.wait(180) == 130
        finally:
            if serve.poll() is None:
                serve.kill()
                serve.wait()


def test_dev_serve_runs_a_command_line_not_only_a_simple_command(hostile: Hostile) -> None:
    # `exec cd sub && ...` was "exec: cd: not found", exit 127
    _serve_until_ctrl_c(hostile, 'cd sub && python3 -m http.server "$PORT"', "index.html", b"served-from-sub\n")


def test_dev_serve_stop_kills_a_server_that_ignores_sigterm_and_sighup(hostile: Hostile) -> None:
    # it kept running in the guest after dev.serve ended, holding its port
    _serve_until_ctrl_c(hostile, "python3 stubborn.py", "sub/index.html", b"served-from-sub\n")
    procs = hostile.cli("dev.shell", "--", "ps", "-eo", "args").stdout
    assert "ps -eo args" in procs and "stubborn.py" not in procs, procs


def test_dev_serve_after_a_killed_dev_serve_takes_its_port_back(hostile: Hostile) -> None:
    # a dev.serve killed with SIGKILL leaves its forward on the VM: the next one said "port ... is already in use
    # on this host; choose another with --port", for as long as the VM ran
    port = _free_port()
    url = f"http://127.0.0.1:{port}/"
    with _serve(hostile, port, "cd sub && exec python3 -m http.server $PORT") as killed:
        assert killed.stderr is not None
        said = read_until(killed.stderr.fileno(), url.encode(), 300)
        assert f"at {url}".encode() in said, said
        killed.kill()
        killed.wait()
    _serve_until_ctrl_c(hostile, "python3 -m http.server $PORT", "sub/index.html", b"served-from-sub\n", port)

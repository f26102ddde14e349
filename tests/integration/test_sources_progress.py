"""What `lkctl image.pull` shows while it downloads: a bar on a pseudo-terminal, plain lines in CI, nothing quiet.

The download comes from nginx throttled to 512 KiB/s so there is time for several redraws."""

from __future__ import annotations

import errno
import os
import pty
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.integration._loopback import Nginx, nginx, publish_cdn

pytestmark = pytest.mark.integration

FILE = "core-dev-linux-amd64.raw"


@pytest.fixture
def slow_cdn(tmp_path: Path) -> Iterator[Nginx]:
    with nginx(tmp_path / "www", tmp_path / "nginx") as ng:
        publish_cdn(ng.root, "core-dev", "1.0.0", {FILE: os.urandom(3 << 19)})  # 1.5 MiB: ~3 s at 512 KiB/s
        yield ng


def env_for(home: Path, server: Nginx, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LKCTL_") and k != "CI"}
    env.update({"LKCTL_HOME": str(home), "LKCTL_SOURCES_CDN_URL": f"{server.url}/slow", **extra})
    return env


def run_on_pty(argv: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run with stdin/stdout/stderr on a pseudo-terminal; return the exit code and everything it wrote."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True)
    os.close(slave)
    chunks = []
    try:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError as e:
                if e.errno == errno.EIO:  # the child closed the terminal
                    break
                raise
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(master)
        code = proc.wait(timeout=60)
    return code, b"".join(chunks).decode(errors="replace")


def test_terminal_gets_a_redrawn_bar_with_size_rate_and_eta(slow_cdn: Nginx, lkctl_home: Path) -> None:
    env = env_for(lkctl_home, slow_cdn, TERM="xterm", COLUMNS="100")
    code, out = run_on_pty([str(REPO / ".venv/bin/lkctl"), "image.pull", "core-dev"], env)
    assert code == 0, out
    frames = [f for f in out.split("\r") if "%" in f and "[" in f]
    assert len(frames) >= 3, out  # redrawn in place, several times
    assert all("ETA" in f and "/1.50 MiB" in f and "/s" in f for f in frames)
    assert any(" 0:0" in f.split("ETA")[1] for f in frames)  # a real ETA, not dashes, once the rate is known
    assert "core-dev 1.0.0 (cdn): 1.50 MiB in 0:0" in out  # the bar line ends as a summary
    assert "pulled core-dev 1.0.0 from cdn" in out


def test_ci_gets_a_few_plain_lines_without_carriage_returns(slow_cdn: Nginx, lkctl_home: Path) -> None:
    env = env_for(lkctl_home, slow_cdn, CI="true")
    r = subprocess.run(
        [str(REPO / ".venv/bin/lkctl"), "image.pull", "core-dev"], env=env, capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    lines = r.stderr.splitlines()
    assert "\r" not in r.stderr and "\x1b" not in r.stderr
    assert lines[0] == "core-dev 1.0.0 (cdn): downloading (1.50 MiB)"
    percents = [int(line.split(": ")[1].split("%")[0]) for line in lines[1:4]]  # one line per quarter crossed
    assert [p // 25 for p in percents] == [1, 2, 3], lines
    assert lines[4].startswith("core-dev 1.0.0 (cdn): 1.50 MiB in 0:0")
    assert lines[5].startswith("lkctl: pulled core-dev 1.0.0 from cdn (1.50 MiB, sha256 ")
    assert len(lines) == 6


def test_quiet_pull_on_a_terminal_prints_only_the_path(slow_cdn: Nginx, lkctl_home: Path) -> None:
    env = env_for(lkctl_home, slow_cdn, TERM="xterm")
    code, out = run_on_pty([str(REPO / ".venv/bin/lkctl"), "image.pull", "core-dev", "--quiet"], env)
    assert code == 0, out
    assert out.strip() == str(lkctl_home / "data/images/core-dev")

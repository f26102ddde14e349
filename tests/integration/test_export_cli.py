"""`lkctl image.export` where its output cannot go: a directory, a file on the path, a path the kernel refuses, a
terminal. Each is one line and a non-zero exit, and nothing is left at or beside the output path."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
REF = "lkctl.test/export:1"


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("export")
    root = home / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "motd").write_text("hi\n")
    assert lkctl(home, "image.import", str(root), "--ref", REF).returncode == 0
    return home


def lkctl(home: Path, *args: str, stdout: int = subprocess.PIPE) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LKCTL_")}
    env["LKCTL_HOME"] = str(home / "lk")
    cmd = [str(BIN / "lkctl"), *args]
    return subprocess.run(cmd, env=env, cwd=home, text=True, timeout=120, stdout=stdout, stderr=subprocess.PIPE)


@pytest.mark.parametrize(
    ("out", "said"),
    [
        ("out", "--out {d}/out is a directory: name the file to write"),
        ("notes.txt/x.tar", "--out {d}/notes.txt/x.tar: {d}/notes.txt is not a directory"),
        ("dangling/x.tar", "{d}/dangling is not a directory (a broken symbolic link)"),
        ("/proc/lkctl-export.tar", "cannot write /proc/lkctl-export.tar: No such file or directory"),
    ],
)
def test_an_output_path_that_cannot_be_written_is_one_line(home: Path, tmp_path: Path, out: str, said: str) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "notes.txt").write_text("x\n")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    before = sorted(p.name for p in tmp_path.rglob("*"))
    done = lkctl(home, "image.export", REF, "--out", str(tmp_path / out))
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.startswith("lkctl: ") and said.format(d=tmp_path) in done.stderr
    assert len(done.stderr.splitlines()) == 1
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # no temp file beside it, nothing made


def test_an_archive_is_not_written_to_a_terminal_but_is_to_a_pipe(home: Path) -> None:
    leader, follower = pty.openpty()
    try:
        done = lkctl(home, "image.export", REF, stdout=follower)
    finally:
        os.close(follower)
    os.set_blocking(leader, False)
    try:
        on_terminal = os.read(leader, 1 << 16)
    except (BlockingIOError, OSError):  # EIO: the terminal's other end is closed and nothing was written
        on_terminal = b""
    os.close(leader)
    assert done.returncode == 1 and on_terminal == b""
    assert (
        done.stderr == "lkctl: refusing to write an image archive to a terminal: give --out FILE or redirect stdout\n"
    )
    piped = subprocess.run(
        [str(BIN / "lkctl"), "image.export", REF],
        env={**os.environ, "LKCTL_HOME": str(home / "lk")}, capture_output=True, timeout=120,
    )  # fmt: skip
    assert piped.returncode == 0 and piped.stdout[257:262] == b"ustar"  # a tar archive

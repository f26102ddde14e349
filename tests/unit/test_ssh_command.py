"""The exec string sent to the guest: argv must come out of a POSIX shell exactly as it went in."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from lkctl.errors import ConfigError
from lkctl.ssh import remote_command

HOSTILE = ["a b", "'single'", '"double"', "$(touch pwned)", "`touch pwned`", "x; touch pwned", "*", "\\", "$HOME", ""]

# The guest's shell is busybox ash; the host's sh/bash stand in for other images.
SHELLS = [s for s in (["sh"], ["bash"], ["busybox", "sh"]) if shutil.which(s[0])]


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LKCTL_HOME", str(tmp_path / "lkctl-home"))


def run_like_sshd(shell: list[str], line: str, cwd: Path) -> subprocess.CompletedProcess[bytes]:
    """What sshd does with an exec request: `<login shell> -c <line>`."""
    return subprocess.run([*shell, "-c", line], cwd=cwd, capture_output=True, env={"PATH": "/usr/bin:/bin"})


@pytest.mark.parametrize("shell", SHELLS, ids=" ".join)
def test_argv_reaches_the_program_verbatim_and_is_never_interpreted(shell: list[str], tmp_path: Path) -> None:
    line = remote_command(["printf", "%s\\0", *HOSTILE])

    done = run_like_sshd(shell, line, tmp_path)

    assert done.returncode == 0, done.stderr
    assert done.stdout.split(b"\0")[:-1] == [a.encode() for a in HOSTILE]
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("shell", SHELLS, ids=" ".join)
def test_env_and_workdir_are_quoted_too(shell: list[str], tmp_path: Path) -> None:
    workdir = tmp_path / "dir with 'quote' and $(x)"
    workdir.mkdir()
    line = remote_command(
        ["sh", "-c", 'pwd; printf "%s|%s" "$A" "$B"'], env={"A": "x y $(touch pwned)", "B": "'"}, workdir=str(workdir)
    )

    done = run_like_sshd(shell, line, tmp_path)

    assert done.stdout == f"{workdir}\nx y $(touch pwned)|'".encode()
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("shell", SHELLS, ids=" ".join)
def test_shell_command_escape_hatch_runs_the_whole_string_inside_workdir(shell: list[str], tmp_path: Path) -> None:
    line = remote_command(command="cd /; echo one # comment\nexit 7", workdir=str(tmp_path))

    done = run_like_sshd(shell, line, Path("/"))

    assert (done.stdout, done.returncode) == (b"one\n", 7)


@pytest.mark.parametrize("shell", SHELLS, ids=" ".join)
def test_a_missing_workdir_stops_the_command_from_running(shell: list[str], tmp_path: Path) -> None:
    line = remote_command(["touch", "ran"], workdir=str(tmp_path / "missing"))

    done = run_like_sshd(shell, line, tmp_path)

    assert done.returncode != 0
    assert not (tmp_path / "ran").exists()


@pytest.mark.parametrize("shell", SHELLS, ids=" ".join)
def test_a_command_killed_by_a_signal_reports_128_plus_the_signal(shell: list[str], tmp_path: Path) -> None:
    done = run_like_sshd(shell, remote_command(["sh", "-c", "kill -9 $$"]), tmp_path)

    assert done.returncode == 137


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "either an argv or a shell command"),
        ({"argv": ["true"], "command": "true"}, "either an argv or a shell command"),
        ({"argv": []}, "empty argv"),
        ({"argv": ["echo", "a\0b"]}, "NUL"),
        ({"argv": ["true"], "env": {"A-B": "1"}}, "not a valid environment variable name"),
        ({"argv": ["true"], "env": {"A=B": "1"}}, "not a valid environment variable name"),
    ],
)
def test_remote_command_rejects_what_cannot_be_sent_faithfully(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        remote_command(**kwargs)  # type: ignore[arg-type]

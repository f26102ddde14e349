"""fsutil.try_lock: a non-blocking flock, held for the block when free, told apart from one another process holds."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lkctl.fsutil import file_lock, try_lock

pytestmark = pytest.mark.integration

HOLD = "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR); fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)"  # noqa: E501


def test_a_free_lock_is_taken_and_held_for_the_block(tmp_path: Path) -> None:
    lock = tmp_path / "x.lock"
    with file_lock(lock):
        pass
    with try_lock(lock) as free:
        assert free
        with try_lock(lock) as again:  # a second descriptor, even in this process, finds it held
            assert not again
    with try_lock(lock) as free:
        assert free


def test_a_lock_another_process_holds_is_not_waited_for(tmp_path: Path) -> None:
    lock = tmp_path / "x.lock"
    lock.touch()
    with subprocess.Popen([sys.executable, "-c", HOLD, str(lock)], stdout=subprocess.PIPE, text=True) as holder:
        try:
            assert holder.stdout is not None and holder.stdout.readline() == "held\n"
            with try_lock(lock) as free:
                assert not free
        finally:
            holder.kill()


def test_a_missing_or_unopenable_lock_file(tmp_path: Path) -> None:
    with try_lock(tmp_path / "none") as free:
        assert not free
    with try_lock(tmp_path / "none", missing_is_free=True) as free:
        assert free
    assert not (tmp_path / "none").exists()  # never created
    (tmp_path / "real").touch()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with try_lock(tmp_path / "link", missing_is_free=True) as free:
        assert not free  # a symlink is not followed: counted as held

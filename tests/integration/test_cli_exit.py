"""The `lkctl` executable ends without the interpreter's teardown (launcher._exit_without_teardown) and still
exits as `sys.exit` would: same status, all output written, atexit handlers run, a closed pipe ends quietly."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

LKCTL = Path(sys.executable).with_name("lkctl")


def _run(argv: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, LKCTL_HOME=str(tmp_path / "home"))
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False)


def test_status_and_output_are_those_of_an_ordinary_exit(tmp_path: Path) -> None:
    version = _run([str(LKCTL), "--version"], tmp_path)
    assert (version.returncode, version.stderr) == (0, "")
    assert version.stdout.strip()
    listing = _run([str(LKCTL), "--list"], tmp_path)
    assert listing.returncode == 0 and "vm.run" in listing.stdout and listing.stdout.endswith("\n")
    typo = _run([str(LKCTL), "vm.runn"], tmp_path)
    assert typo.returncode == 2 and "did you mean vm.run" in typo.stderr and "Traceback" not in typo.stderr
    missing = _run([str(LKCTL), "vm.inspect", "nosuchvm"], tmp_path)
    assert missing.returncode == 1 and missing.stderr.startswith("lkctl: ")


def test_atexit_handlers_still_run(tmp_path: Path) -> None:
    code = (
        "import atexit, sys\n"
        "atexit.register(lambda: print('atexit ran', flush=True))\n"
        "sys.argv = ['lkctl', '--version']\n"
        "from lkctl.launcher import main\n"
        "main()\n"
        "print('not reached')\n"
    )
    run = _run([sys.executable, "-c", code], tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.stdout.endswith("atexit ran\n") and "not reached" not in run.stdout


def test_output_into_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    env = dict(os.environ, LKCTL_HOME=str(tmp_path / "home"))
    with subprocess.Popen([str(LKCTL), "--list"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()  # nobody reads: the first write (or the final flush) meets a closed pipe
        err = proc.stderr.read().decode()
        assert proc.wait(timeout=60) in (0, 141), err
    assert "Traceback" not in err and "Exception ignored" not in err


def test_the_exit_skips_the_teardown(tmp_path: Path) -> None:
    """What this is for: the full CLI used to spend 0.1-0.3 s tearing down its modules after its work was done."""
    code = (
        "import atexit, sys, time\n"
        "atexit.register(lambda: print(time.monotonic(), flush=True))\n"
        "import lkctl.cli, lkctl.images, lkctl.runtime.vm, lkctl.build\n"  # what `vm.run` has imported
        "sys.argv = ['lkctl', '--version']\n"
        "from lkctl.launcher import main\n"
        "main()\n"
    )
    env = dict(os.environ, LKCTL_HOME=str(tmp_path / "home"))
    with subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None
        last = proc.stdout.read().split()[-1]
        proc.wait(timeout=60)
        ended = time.monotonic()
    assert proc.returncode == 0
    assert ended - float(last) < 0.05  # an ordinary exit takes 0.1-0.3 s here after its last atexit handler

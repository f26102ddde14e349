"""The lean `lkctl vm.run -d` (lkctl.runtime.fastrun) as a process: it answers without importing invoke or paramiko,
and says what the full CLI says, with the same exit status."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def test_the_lean_run_answers_without_importing_invoke(tmp_path: Path) -> None:
    code = (
        "import sys; from lkctl.runtime.fastrun import fast_run; "
        "rc = fast_run(['vm.run', '--image=/nonexistent/image', '-d']); "
        "print(rc, 'invoke' in sys.modules, 'paramiko' in sys.modules)"
    )
    env = {**os.environ, "LKCTL_HOME": str(tmp_path / "home"), "HOME": str(tmp_path)}
    env.pop("LKCTL_RUNTIME_CONFIG", None)
    env.pop("INVOKE_RUNTIME_CONFIG", None)
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=True
    )
    assert run.stdout.split() == ["1", "False", "False"]
    assert run.stderr.splitlines()[-1] == "lkctl: image file /nonexistent/image does not exist"
    # the full CLI says the same, with the same status
    full = subprocess.run(
        [str(Path(sys.executable).parent / "lkctl"), "vm.run", "--image=/nonexistent/image", "-d", "--memory=1024"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert full.returncode == 1
    assert full.stderr.splitlines()[-1] == run.stderr.splitlines()[-1]

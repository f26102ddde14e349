"""Two `dev.boot`s of one project at once (two terminals, or dev.claude beside dev.boot): one VM, both succeed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from tests.boot.conftest import BIN, qemu_pids_for
from tests.conftest import require_qemu

pytestmark = [pytest.mark.boot, pytest.mark.timeout(1200)]


def test_two_dev_boots_of_one_project_at_once_make_one_vm_and_both_succeed(tmp_path: Path) -> None:
    # the second took the VM the first was creating for a stopped one: "VM ... has no recorded command line to
    # restart with", exit 1, and then stopped that VM (the first's QEMU) on its way out
    require_qemu()
    home, project = tmp_path / "lkhome", tmp_path / "proj"
    project.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LKCTL_VM_MEMORY", "LKCTL_VM_CPUS", "INVOKE_"))}
    env.update(LKCTL_HOME=str(home), LKCTL_DEV_MEMORY="768", LKCTL_VM_READY_TIMEOUT="900",
               LKCTL_CACHE_DIR=str(Path(__file__).resolve().parents[2] / ".lkctl-test" / "cache"))  # fmt: skip
    lkctl = str(BIN / "lkctl")
    # the dev image first, so that both boots race for the VM and not for the install
    subprocess.run([lkctl, "dev.install"], cwd=project, env=env, check=True, capture_output=True, timeout=1200)
    try:
        boots = [subprocess.Popen([lkctl, "dev.boot"], cwd=project, env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True) for _ in range(2)]  # fmt: skip
        results = []
        for b in boots:
            _, err = b.communicate(timeout=1200)
            results.append((b.returncode, err))
        assert [code for code, _ in results] == [0, 0], results
        said = sorted("booted" if " booted: " in err else "running" if "already running" in err else err
                      for _, err in results)  # fmt: skip
        assert said == ["booted", "running"], results
        rows = json.loads(subprocess.run([lkctl, "vm.ps", "--all", "--json"], cwd=project, env=env, check=True,
                                         capture_output=True, text=True).stdout)  # fmt: skip
        assert [r["status"] for r in rows] == ["running"], rows
        assert len(qemu_pids_for(home)) == 1
        shell = subprocess.run([lkctl, "dev.shell", "--", "true"], cwd=project, env=env, timeout=300, check=False)
        assert shell.returncode == 0
    finally:
        subprocess.run([lkctl, "dev.stop"], cwd=project, env=env, capture_output=True, timeout=300, check=False)
        left = qemu_pids_for(home)
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        assert not left, f"left QEMU processes running: {left}"

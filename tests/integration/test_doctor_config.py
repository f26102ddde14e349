"""`lkctl doctor` and config precedence, through the real `lkctl` and `invoke` binaries in a user's repository."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
TASKS_PY = (
    "from invoke import Collection\nfrom lkctl.tasks import doctor, vm\n\nns = Collection(vm.ns, doctor.doctor)\n"
)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    (root / ".git").mkdir(parents=True)
    (root / "sub").mkdir()
    (root / "tasks.py").write_text(TASKS_PY)
    (root / "lkctl.yaml").write_text("lkctl:\n  vm:\n    memory: 1536\n")
    (root / "invoke.yaml").write_text("lkctl:\n  vm:\n    cpus: 3\n")
    return root


def run(tool: str, cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    home = cwd.parent / "home" if cwd.name == "repo" else cwd.parent.parent / "home"
    home.mkdir(exist_ok=True)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("LKCTL_VM_", "INVOKE_"))}
    full = {**base, "HOME": str(home), "LKCTL_HOME": str(home / "lk"), **(env or {})}
    return subprocess.run([str(BIN / tool), *args], cwd=cwd, env=full, capture_output=True, text=True, timeout=120)


def doctor(tool: str, cwd: Path, *args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    done = run(tool, cwd, *args, "doctor", "--json", "--no-probe", env=env)
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    return report


@pytest.mark.parametrize("tool", ["lkctl", "invoke"])
def test_lkctl_and_invoke_read_the_same_files_in_a_repo(repo: Path, tool: str) -> None:
    cfg = doctor(tool, repo / "sub")["config"]
    assert cfg["files"] == [str(repo / "invoke.yaml"), str(repo / "lkctl.yaml")]
    assert cfg["vm"]["memory"] == {"value": 1536, "source": "config"}
    assert cfg["vm"]["cpus"] == {"value": 3, "source": "config"}


@pytest.mark.parametrize("tool", ["lkctl", "invoke"])
def test_environment_beats_config_files_and_f_file_beats_project_files(repo: Path, tool: str) -> None:
    vm = doctor(tool, repo, env={"LKCTL_VM_MEMORY": "700"})["config"]["vm"]
    assert vm["memory"] == {"value": 700, "source": "environment LKCTL_VM_MEMORY"}
    extra = repo / "extra.yaml"
    extra.write_text("lkctl:\n  vm:\n    memory: 900\n")
    vm = doctor(tool, repo, "-f", str(extra))["config"]["vm"]
    assert vm["memory"] == {"value": 900, "source": "config"}


@pytest.mark.parametrize("tool", ["lkctl", "invoke"])
def test_a_missing_f_file_is_an_error_under_both(repo: Path, tool: str) -> None:
    done = run(tool, repo, "-f", "nope.yaml", "doctor", "--no-probe")
    assert done.returncode == 2
    assert "nope.yaml does not exist" in done.stderr and "Traceback" not in done.stderr


def test_a_config_file_outside_the_repository_does_not_count(repo: Path) -> None:
    (repo.parent / "lkctl.yaml").write_text("lkctl:\n  vm:\n    memory: 4000\n")
    assert doctor("lkctl", repo)["config"]["vm"]["memory"]["value"] == 1536


def test_doctor_reports_qemu_accelerator_and_packages(repo: Path) -> None:
    done = run("lkctl", repo, "doctor", "--json")
    report = json.loads(done.stdout)
    assert report["qemu"]["path"], report["qemu"]
    assert report["accelerator"]["chosen"] in ("kvm", "tcg")
    assert report["accelerator"]["reason"].startswith(report["accelerator"]["chosen"] + ": ")
    assert report["packages"]["missing_for_demo"] == []  # what the suite itself runs on
    assert done.returncode == 0
    assert report["ports"]["loopback_free_port"]
    text = run("lkctl", repo, "doctor", "--no-probe").stdout
    assert "accelerator  not probed" in text and "qemu         /" in text and "config files " in text

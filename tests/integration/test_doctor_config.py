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


def test_an_f_file_that_is_a_directory_is_named_so(repo: Path) -> None:
    done = run("lkctl", repo, "-f", str(repo / "sub"), "doctor", "--no-probe")
    assert done.returncode == 2 and "sub is not a regular file" in done.stderr and "Traceback" not in done.stderr


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


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("run: 3\n", "`run:` must be a mapping"),
        ("lkctl:\n  vm: 3\n", "`lkctl.vm:` must be a mapping"),
        ("- a list\n", "expected a mapping at the top, got list"),
        ("lkctl:\n  vm:\n    memory: [1]\n", "lkctl.vm.memory must be a whole number, got [1]"),
    ],
)
def test_an_f_file_invoke_cannot_merge_is_one_line(repo: Path, text: str, said: str) -> None:
    bad = repo / "bad.yaml"
    bad.write_text(text)
    done = run("lkctl", repo, "-f", str(bad), "doctor", "--no-probe")
    assert (done.returncode, done.stdout) == (2, "")
    assert said in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.splitlines()) == 1
    # vm.exec keeps its own failures apart from the command's statuses: 125
    assert run("lkctl", repo, "-f", str(bad), "vm.exec", "x", "--", "true").returncode == 125


def test_an_f_file_in_json_is_checked_too(repo: Path) -> None:
    bad = repo / "bad.json"
    bad.write_text('{"tasks": 3}')
    done = run("lkctl", repo, "-f", str(bad), "vm.ps")
    assert done.returncode == 2 and "`tasks:` must be a mapping" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("value", "said"),
    [
        ("7", "must name a class as module.Class"),
        ("nosuchmodule.Executor", "cannot load it (ModuleNotFoundError: No module named 'nosuchmodule')"),
        ("os.nothere", "cannot load it (AttributeError"),
        ("os.path", "is not a subclass of invoke.Executor"),
    ],
)
@pytest.mark.parametrize("where", ["-f", "home"])
def test_a_bad_executor_class_in_config_is_one_line(repo: Path, value: str, said: str, where: str) -> None:
    text = f"tasks:\n  executor_class: {value}\n"
    if where == "home":
        (repo.parent / "home").mkdir(exist_ok=True)
        (repo.parent / "home" / ".lkctl.yaml").write_text(text)
        args: tuple[str, ...] = ()
    else:
        (repo / "extra.yaml").write_text(text)
        args = ("-f", str(repo / "extra.yaml"))
    done = run("lkctl", repo, *args, "vm.ps")
    assert (done.returncode, done.stdout) == (2, "")
    assert said in done.stderr and "tasks.executor_class" in done.stderr and "Traceback" not in done.stderr


def test_an_executor_class_that_is_one_runs_the_task(repo: Path) -> None:
    (repo / "extra.yaml").write_text("tasks:\n  executor_class: invoke.Executor\n")
    done = run("lkctl", repo, "-f", str(repo / "extra.yaml"), "vm.ps")
    assert done.returncode == 0 and "no running VMs" in done.stderr, done.stderr

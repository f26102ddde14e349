"""User errors: one clear line, a non-zero exit, no traceback, nothing half-written, no QEMU left running."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from tests.boot.conftest import Cli, qemu_pids_for


def assert_clean_failure(res: object, needle: str) -> None:
    stderr = res.stderr  # type: ignore[attr-defined]
    assert res.returncode != 0, stderr  # type: ignore[attr-defined]
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.startswith("lkctl: ") and needle in line]
    assert lines, stderr


def test_unknown_image(cli: Cli) -> None:
    res = cli("vm.run", "--image=no-such-image", "-d", check=False)
    assert_clean_failure(res, "unknown image 'no-such-image'")
    assert "minimal" in res.stderr  # it lists what is available


def test_malformed_yaml(cli: Cli, lkctl_home: Path) -> None:
    bad = cli.cwd / "bad.yml"
    bad.write_text("kernel:\n  image: [unclosed\n")
    res = cli("vm.run", f"--image={bad}", "-d", check=False)
    assert_clean_failure(res, "bad.yml")
    assert not (lkctl_home / "state" / "vms").exists() or not any((lkctl_home / "state" / "vms").iterdir())


def test_unknown_key_in_yaml_names_its_path(cli: Cli) -> None:
    bad = cli.cwd / "typo.yml"
    bad.write_text("kernel:\n  image: lkctl.local/kernel:latest\nservices:\n  - name: s\n    image: x\n    bindz: []\n")
    res = cli("image.build", str(bad), check=False)
    assert_clean_failure(res, "services[0].bindz")


def test_port_in_use_is_refused_before_qemu_starts(cli: Cli, lkctl_home: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        res = cli("vm.run", "--image=minimal", "-d", "--port", f"{port}:80", check=False)
    assert_clean_failure(res, f"127.0.0.1:{port}/tcp is already in use")
    assert qemu_pids_for(lkctl_home) == []
    assert json.loads(cli("vm.ps", "--all", "--json").stdout) == []


def test_unknown_and_ambiguous_vm(cli: Cli) -> None:
    assert_clean_failure(cli("vm.stop", "nope", check=False), "no VM matches 'nope'")
    assert_clean_failure(cli("vm.exec", "nope", "--", "true", check=False), "no VM matches 'nope'")


def test_missing_qemu_is_one_line_with_the_package_to_install(cli: Cli, lkctl_home: Path) -> None:
    env = dict(cli.env, LKCTL_VM_QEMU="", PATH=str(Path(cli.env["PATH"].split(":")[0])))
    res = Cli(env, cli.cwd)("vm.run", "--image=minimal", "-d", check=False)
    if "qemu-system-x86_64 not found" not in res.stderr:
        pytest.fail(res.stderr)
    assert_clean_failure(res, "apt-get install qemu-system-x86")

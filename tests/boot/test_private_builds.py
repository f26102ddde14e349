"""A template given the VM's private host key (`${SSH_HOST_KEY}`) is never built into the shared cache: its build
lives in the VM's own state dir (0700, files 0600) and goes with `vm.rm`; lkctl's cache and image store are 0700.

The VM is started with `-d --no-wait` (what is checked here is decided before the guest boots; that the key
reaches the guest is tests/boot/test_dev_template.py's job)."""

from __future__ import annotations

import gzip
import json
import stat
from pathlib import Path

import pytest

from tests.boot.conftest import Cli

pytestmark = pytest.mark.boot

KEYED = (
    "kernel: {image: lkctl.local/kernel:latest, cmdline: console=ttyS0}\n"
    "init: [lkctl.local/init:latest]\n"
    "services: [{name: sshd, image: lkctl.local/sshd:latest}]\n"
    "files:\n"
    "  - {path: etc/given/host_key, contents: ${SSH_HOST_KEY}, mode: '0600'}\n"
)


def _modes(root: Path) -> set[tuple[str, int]]:
    return {("dir" if p.is_dir() else "file", stat.S_IMODE(p.lstat().st_mode)) for p in [root, *root.rglob("*")]}


def test_a_build_holding_the_vms_host_key_is_private_and_removed_with_the_vm(
    cli: Cli, lkctl_home: Path, shared_cache: Path
) -> None:
    templates = cli.cwd / ".lkctl" / "templates"
    templates.mkdir(parents=True)
    (templates / "keyedpriv.yml").write_text(KEYED)
    vm_id = cli("vm.run", "--image=keyedpriv", "-d", "--no-wait", "--name", "kp", "--memory", "256").stdout.strip()
    vm_dir = lkctl_home / "state" / "vms" / vm_id
    try:
        build = vm_dir / "build"
        initrd = next(build.glob("*-initrd.img"))
        host_key = (vm_dir / "ssh_host_ed25519_key").read_bytes()
        assert host_key in gzip.decompress(initrd.read_bytes())  # this really is the build holding the secret
        assert _modes(build) <= {("dir", 0o700), ("file", 0o600)}
        assert stat.S_IMODE(vm_dir.stat().st_mode) == 0o700
        assert str(initrd) in json.loads(cli("vm.inspect", "kp").stdout)["argv"]  # booted from there
        assert not (shared_cache / "builds" / "template-keyedpriv").exists()
        assert not list((lkctl_home / "state" / "staging").iterdir())
        assert stat.S_IMODE(shared_cache.stat().st_mode) == 0o700
        assert stat.S_IMODE((shared_cache / "oci").stat().st_mode) == 0o700
    finally:
        cli("vm.kill", "kp", check=False)
        cli("vm.rm", "--force", "kp")
    assert not vm_dir.exists()


def test_a_template_without_keys_still_uses_the_shared_build_cache(cli: Cli, shared_cache: Path) -> None:
    templates = cli.cwd / ".lkctl" / "templates"
    templates.mkdir(parents=True)
    (templates / "plainpriv.yml").write_text(KEYED.replace("${SSH_HOST_KEY}", "'not a secret'"))
    cli("vm.run", "--image=plainpriv", "-d", "--no-wait", "--name", "pp", "--memory", "256")
    try:
        assert list((shared_cache / "builds" / "template-plainpriv").glob("*/plainpriv-initrd.img"))
    finally:
        cli("vm.kill", "pp", check=False)
        cli("vm.rm", "--force", "pp")

"""The `dev` template as the issue's check runs it: `invoke vm.run --image=dev` in this repository, then vm.exec."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.boot.conftest import REPO, Cli

pytestmark = pytest.mark.boot


def test_image_dev_boots_the_dev_template_with_git_python_and_its_size(cli: Cli) -> None:
    in_repo = Cli(cli.env, REPO)  # this repository's tasks.py, as `invoke vm.run --image=dev` uses it
    in_repo("vm.run", "--image=dev", "-d", "--name", "dev", "--var", "HOSTNAME=box", tool="invoke", timeout=600)
    try:
        assert cli("vm.exec", "dev", "--", "git", "--version").stdout.startswith("git version 2.")
        assert cli("vm.exec", "dev", "--", "python3", "--version").stdout.startswith("Python 3.")
        which = "for p in make curl vim bash; do command -v $p; done; hostname; nproc"
        tools = cli("vm.exec", "dev", "--", "sh", "-c", which).stdout
        assert tools.split() == ["/usr/bin/make", "/usr/bin/curl", "/usr/bin/vim", "/usr/bin/bash", "box", "2"]
        script = "import json, sqlite3, ssl; print(json.dumps({'ok': ssl.OPENSSL_VERSION.startswith('OpenSSL')}))"
        assert json.loads(cli("vm.exec", "dev", "--", "python3", "-c", script).stdout) == {"ok": True}
        (row,) = json.loads(cli("vm.ps", "--json").stdout)
        assert (row["memory"], row["cpus"]) == (2048, 2)  # the template's `# lkctl: memory=... cpus=...`
        logs = cli("vm.logs", "dev").stdout
        assert "lkctl-init: ready" in logs and "lkctl-init: error" not in logs
    finally:
        cli("vm.stop", "dev")


def test_a_template_is_rendered_with_the_new_vms_own_ssh_keys(cli: Cli, lkctl_home: Path) -> None:
    templates = cli.cwd / ".lkctl" / "templates"
    templates.mkdir(parents=True)
    (templates / "keyed.yml").write_text(
        "# lkctl: memory=${MEMORY:-384}\n"
        "kernel: {image: lkctl.local/kernel:latest, cmdline: console=ttyS0}\n"
        "init: [lkctl.local/init:latest]\n"
        "services: [{name: sshd, image: lkctl.local/sshd:latest}]\n"
        "files:\n"
        "  - {path: etc/given/authorized_keys, contents: '${SSH_KEY}', mode: '0600'}\n"
        "  - {path: etc/given/host_key, contents: ${SSH_HOST_KEY}, mode: '0600'}\n"
    )
    vm_id = cli("vm.run", "--image=keyed", "-d", "--name", "keyed").stdout.strip()
    try:
        state = lkctl_home / "state" / "vms" / vm_id
        given = cli("vm.exec", "keyed", "--", "cat", "/etc/given/authorized_keys").stdout
        assert given.split() == (state / "id_ed25519.pub").read_text().split()[:2]
        host_key = cli("vm.exec", "keyed", "--", "cat", "/etc/given/host_key").stdout
        assert host_key == (state / "ssh_host_ed25519_key").read_text()  # the key lkctl pinned, multi-line intact
        (row,) = json.loads(cli("vm.ps", "--json").stdout)
        assert row["memory"] == 384
    finally:
        cli("vm.stop", "keyed")
    assert not list((lkctl_home / "state" / "staging").iterdir())  # the staged keys are gone

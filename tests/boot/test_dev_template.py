"""The `dev` template as the issue's check runs it: `invoke vm.run --image=dev` in this repository, then vm.exec."""

from __future__ import annotations

import json

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

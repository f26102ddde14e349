"""The template.* tasks through the real `lkctl` command, in a throwaway repository with a workspace template."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.integration

LKCTL = str(Path(sys.executable).parent / "lkctl")


@pytest.fixture
def project(tmp_path: Path, lkctl_home: Path) -> Path:
    root = tmp_path / "project"
    (root / ".git").mkdir(parents=True)
    templates = root / ".lkctl" / "templates"
    templates.mkdir(parents=True)
    (templates / "dev.yml").write_text(
        textwrap.dedent(
            """
            # The team's dev VM
            # lkctl: memory=${MEMORY:-1536}
            kernel:
              image: lkctl.local/kernel:latest
              cmdline: "console=ttyS0 ${EXTRA:-quiet}"
            init:
              - lkctl.local/init:latest
            services:
              - name: sshd
                image: lkctl.local/sshd:latest
                env:
                  - MOTD=${MOTD}
            files:
              - path: etc/motd
                contents: ${MOTD}
              - path: etc/owner
                contents: ${OWNER}
            """
        ).lstrip()
    )
    (root / "sub").mkdir()
    return root


def lk(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INVOKE_")}
    return subprocess.run([LKCTL, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60, check=False)


def test_workspace_template_shadows_the_builtin_and_ls_says_so(project: Path) -> None:
    out = lk(project / "sub", "template.ls", "--json")
    assert out.returncode == 0, out.stderr
    dev = [r for r in json.loads(out.stdout) if r["name"] == "dev"]
    assert [(r["source"], r["shadowed_by"]) for r in dev] == [
        ("workspace", None),
        ("builtin", str(project / ".lkctl" / "templates" / "dev.yml")),
    ]
    assert dev[0]["description"] == "The team's dev VM"
    table = lk(project / "sub", "template.ls").stdout
    assert any(line.startswith("dev") and "builtin (shadowed)" in line for line in table.splitlines())


def test_render_with_tricky_values_writes_valid_yaml(project: Path, tmp_path: Path) -> None:
    motd = 'Welcome: "dev" # box\n- not a list\n  indented\n'
    out = tmp_path / "out.yml"
    proc = lk(project, "template.render", "dev", "--var", f"MOTD={motd}", "--var", "OWNER=a: b", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    doc = yaml.safe_load(out.read_text())
    assert doc["files"] == [{"path": "etc/motd", "contents": motd}, {"path": "etc/owner", "contents": "a: b"}]
    assert doc["services"][0]["env"] == ["MOTD=" + motd]
    assert doc["kernel"]["cmdline"] == "console=ttyS0 quiet"


def test_vars_lists_required_and_optional_with_defaults(project: Path) -> None:
    out = json.loads(lk(project, "template.vars", "dev", "--json").stdout)
    assert [v["name"] for v in out["required"]] == ["MOTD", "OWNER"]
    assert {v["name"]: v["default"] for v in out["optional"]} == {"MEMORY": "1536", "EXTRA": "quiet"}
    builtin = json.loads(lk(project.parent, "template.vars", "linuxkit-sshd", "--json").stdout)
    assert builtin["filled_by_lkctl"] == ["SSH_KEY", "SSH_HOST_KEY", "SSH_HOST_KEY_PUB"]


def test_errors_name_every_missing_variable_unknown_templates_and_bad_vars(project: Path) -> None:
    missing = lk(project, "template.render", "dev")
    assert missing.returncode == 2
    assert "MOTD (lines 12, 15), OWNER (line 17)" in missing.stderr and "Traceback" not in missing.stderr
    unknown = lk(project, "template.show", "dve")
    assert unknown.returncode == 1 and "did you mean dev?" in unknown.stderr
    bad = lk(project, "template.render", "dev", "--var", "MOTD")
    assert bad.returncode == 2 and "--var 'MOTD': expected NAME=VALUE" in bad.stderr
    typo = lk(project, "template.render", "dev", "--var", "MOTDD=x")
    assert typo.returncode == 2 and "did you mean MOTD?" in typo.stderr
    traversal = lk(project, "template.show", "../../etc/passwd")
    assert traversal.returncode == 2 and "invalid template name" in traversal.stderr


@pytest.mark.parametrize("task", ["template.show", "template.vars", "template.render", "image.build"])
def test_a_template_that_is_not_utf8_is_one_line_for_every_task(project: Path, task: str) -> None:
    (project / ".lkctl" / "templates" / "latin.yml").write_bytes(b"# caf\xe9\nkernel: {}\n")
    done = lk(project, task, "latin")
    assert done.returncode == 2 and done.stdout == "" and "Traceback" not in done.stderr
    assert done.stderr.startswith("lkctl: cannot read template latin") and "can't decode byte 0xe9" in done.stderr


def test_config_and_environment_supply_values_when_asked(project: Path) -> None:
    (project / "lkctl.yaml").write_text("lkctl:\n  templates:\n    variables:\n      OWNER: from-config\n")
    env = {**os.environ, "MOTD": "from-env"}
    proc = subprocess.run(
        [LKCTL, "template.render", "dev", "--env-vars"], cwd=project, env=env, capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    files = {f["path"]: f["contents"] for f in yaml.safe_load(proc.stdout)["files"]}
    assert files == {"etc/motd": "from-env", "etc/owner": "from-config"}
    without = subprocess.run([LKCTL, "template.render", "dev"], cwd=project, env=env, capture_output=True,
                             text=True, timeout=60, check=False)  # fmt: skip
    assert without.returncode == 2 and "MOTD (lines" in without.stderr  # the environment only when asked

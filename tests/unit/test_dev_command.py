"""What dev.test / dev.shell -- CMD / dev.serve send to the dev VM, and which command lines take the lean path."""

from __future__ import annotations

import pytest
import yaml

from lkctl import paths
from lkctl.dev.command import DEV_PATH, AppCommand, app_command
from lkctl.dev.fastcli import lean_form
from lkctl.errors import ConfigError
from lkctl.ssh import remote_command


def test_words_run_as_given_in_app_with_the_images_path() -> None:
    cmd = app_command(["printf", "%s|", "a b", "$HOME"])
    assert cmd == AppCommand(("printf", "%s|", "a b", "$HOME"), "/app", {"PATH": DEV_PATH})
    # the one line the holder and a direct SSH connection both send: no login shell, nothing re-parsed
    line = remote_command(list(cmd.argv), env=cmd.env, workdir=cmd.workdir)
    assert line == f"cd -- /app && export PATH={DEV_PATH} && printf '%s|' 'a b' '$HOME'; exit $?"
    assert " -l" not in line


def test_a_command_line_runs_under_bin_sh_with_env_after_path_so_it_can_override_it() -> None:
    cmd = app_command(line="make test", env={"A": "x y", "PATH": "/opt/bin:/usr/bin"}, subdir="web")
    assert cmd.argv == ("/bin/sh", "-c", "make test") and cmd.workdir == "/app/web"
    assert cmd.env == {"PATH": "/opt/bin:/usr/bin", "A": "x y"}
    line = remote_command(list(cmd.argv), env=cmd.env, workdir=cmd.workdir)
    assert line == "cd -- /app/web && export PATH=/opt/bin:/usr/bin A='x y' && /bin/sh -c 'make test'; exit $?"


@pytest.mark.parametrize(
    ("argv", "line", "env", "subdir"),
    [([], "", None, ""), (["true"], "true", None, ""), (["true"], "", {"A;reboot": "1"}, ""), (["t"], "", None, "..")],
)
def test_bad_commands_are_config_errors(argv: list[str], line: str, env: dict[str, str] | None, subdir: str) -> None:
    with pytest.raises(ConfigError):
        app_command(argv, line=line, env=env, subdir=subdir)


def test_dev_path_is_the_dev_images_path() -> None:
    recipe = yaml.safe_load((paths.resource_dir("images") / "devdisk" / "recipe.yml").read_text())
    assert f'PATH="{DEV_PATH}"' in recipe["files"]["etc/environment"].splitlines()
    assert f'  PATH="{DEV_PATH}"' in recipe["files"]["etc/profile"].splitlines()  # root's, in a login shell


@pytest.mark.parametrize(
    ("args", "form"),
    [
        (["dev.test"], ("dev.test", "", [])),
        (["dev.test", "--", "sh", "-c", "exit 3"], ("dev.test", "", ["sh", "-c", "exit 3"])),
        (["dev.test", "--name", "unit"], ("dev.test", "unit", [])),
        (["dev.test", "--name=unit", "--", "-h"], ("dev.test", "unit", ["-h"])),
        (["dev.shell", "--", "ls", "--help"], ("dev.shell", "", ["ls", "--help"])),
        (["dev.shell"], None),  # interactive: the full CLI
        (["dev.shell", "--console"], None),
        (["dev.shell", "--"], None),
        (["dev.test", "--help"], None),
        (["dev.test", "-n", "unit"], None),
        (["dev.test", "--name"], None),
        (["dev.test", "--name", "--", "x"], None),
        (["dev.test", "x"], None),
        (["dev.serve"], None),
        (["vm.exec", "x", "--", "true"], None),
        ([], None),
    ],
)
def test_only_plain_dev_test_and_dev_shell_take_the_lean_path(
    args: list[str], form: tuple[str, str, list[str]] | None
) -> None:
    assert lean_form(args) == form

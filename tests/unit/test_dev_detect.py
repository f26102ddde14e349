"""dev.*'s pure parts: project naming, serve/test detection tables, test.yaml, auth names, forwards, guest argv."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from lkctl.dev.agent import collect_credentials, parse_auth
from lkctl.dev.command import app_path, resolve_test_command
from lkctl.dev.detect import detect_serve_command, detect_test_command, load_test_config
from lkctl.dev.environment import guest_shell_argv
from lkctl.dev.forward import parse_usernet
from lkctl.dev.project import dev_vm_name, find_project
from lkctl.errors import ConfigError
from lkctl.runtime.model import PortForward

PROJECTS = Path(__file__).resolve().parent.parent / "data" / "projects"


def _files(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


# --- project and VM name -------------------------------------------------------------------------------------


def test_project_is_the_git_root_from_any_subdirectory(tmp_path: Path) -> None:
    (tmp_path / "repo" / ".git").mkdir(parents=True)
    deep = tmp_path / "repo" / "src" / "pkg"
    deep.mkdir(parents=True)
    assert find_project(deep) == find_project(tmp_path / "repo")
    assert find_project(deep).root == tmp_path / "repo"


def test_outside_a_repository_the_working_directory_is_the_project(tmp_path: Path) -> None:
    assert find_project(tmp_path).root == tmp_path


def test_vm_name_is_stable_valid_and_differs_between_same_named_projects(tmp_path: Path) -> None:
    a, b = tmp_path / "one" / "My App!", tmp_path / "two" / "My App!"
    name = dev_vm_name(a)
    assert name == dev_vm_name(a) == dev_vm_name(Path(str(a) + "/."))
    assert name != dev_vm_name(b)
    assert name.startswith("dev-my-app-") and len(name.rsplit("-", 1)[1]) == 8
    assert all(c.isalnum() or c in "-_." for c in name)
    assert dev_vm_name(Path("/")).startswith("dev-root-")


# --- serve detection ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("files", "command", "env"),
    [
        ({"artisan": "", "composer.json": "{}"}, "php artisan octane:start --host=0.0.0.0 --port=9000", {}),
        (
            {"package.json": json.dumps({"scripts": {"dev": "vite", "start": "node s"}})},
            "npm run dev -- --host 0.0.0.0 --port 9000",
            {},
        ),
        ({"package.json": json.dumps({"scripts": {"start": "node s"}})}, "npm start", {"PORT": "9000"}),
        ({"composer.json": "{}", "public/index.php": ""}, "php -S 0.0.0.0:9000 -t public", {}),
        ({"composer.json": "{}"}, "php -S 0.0.0.0:9000 -t .", {}),
        ({"go.mod": "module x", "main.go": ""}, "go run .", {"PORT": "9000"}),
        ({"go.mod": "module x"}, "python3 -m http.server 9000", {}),  # a library, not a server
        ({"manage.py": ""}, "python3 manage.py runserver 0.0.0.0:9000", {}),
        ({"package.json": "not json", "index.html": ""}, "python3 -m http.server 9000", {}),
        ({}, "python3 -m http.server 9000", {}),
    ],
)
def test_serve_detection_table_first_match_wins(
    tmp_path: Path, files: dict[str, str], command: str, env: dict[str, str]
) -> None:
    found = detect_serve_command(_files(tmp_path, files), 9000)
    assert (found.command, dict(found.env)) == (command, env)


def test_serve_detection_ignores_directories_named_like_marker_files(tmp_path: Path) -> None:
    (tmp_path / "artisan").mkdir()
    assert detect_serve_command(tmp_path, 8000).command == "python3 -m http.server 8000"


# --- test detection -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("files", "command"),
    [
        ({"composer.json": json.dumps({"scripts": {"test": "phpunit"}}), "go.mod": ""}, "composer test"),
        ({"package.json": json.dumps({"scripts": {"test": "jest"}})}, "npm test"),
        ({"go.mod": "module x"}, "go test ./..."),
        ({"pytest.ini": "[pytest]\n"}, "python3 -m pytest"),
        ({"pyproject.toml": "[tool.pytest.ini_options]\n"}, "python3 -m pytest"),
        ({"setup.cfg": "[metadata]\n[tool:pytest]\n"}, "python3 -m pytest"),
        ({"tox.ini": "[pytest]\naddopts = -q\n"}, "python3 -m pytest"),
        ({"Taskfile.yml": "version: '3'\n"}, "task test"),
        ({"Makefile": "all:\n\ttrue\ntest: all\n\ttrue\n"}, "make test"),
    ],
)
def test_test_detection_table(tmp_path: Path, files: dict[str, str], command: str) -> None:
    found = detect_test_command(_files(tmp_path, files))
    assert found is not None and found.command == command


@pytest.mark.parametrize(
    "files",
    [
        {},
        {"composer.json": json.dumps({"scripts": {"build": "x"}})},
        {"package.json": json.dumps({"scripts": {"start": "x"}})},
        {"pyproject.toml": "[project]\nname = 'x'\n"},  # no pytest configuration
        {"setup.cfg": "[metadata]\n"},
        {"Makefile": "testing:\n\ttrue\nTEST := 1\n"},
    ],
)
def test_nothing_detected_gives_none_and_dev_test_says_how_to_write_test_yaml(
    tmp_path: Path, files: dict[str, str]
) -> None:
    root = _files(tmp_path, files)
    assert detect_test_command(root) is None
    with pytest.raises(ConfigError, match=r"\.lkctl/test\.yaml") as e:
        resolve_test_command(find_project(root))
    assert "\n" not in e.value.message


def test_sample_projects_are_detected_as_the_issue_lists() -> None:
    expected = {"make": "make test", "python": "python3 -m pytest", "node": "npm test", "php": "composer test",
                "go": "go test ./..."}  # fmt: skip
    for name, command in expected.items():
        found = detect_test_command(PROJECTS / name)
        assert found is not None and found.command == command, name
    assert detect_serve_command(PROJECTS / "node", 8000).env == {"PORT": "8000"}
    assert detect_serve_command(PROJECTS / "php", 8000).command == "php -S 0.0.0.0:8000 -t public"
    assert detect_serve_command(PROJECTS / "go", 8000).command == "go run ."


# --- test.yaml ------------------------------------------------------------------------------------------------


def test_test_yaml_full_file_and_its_precedence(tmp_path: Path) -> None:
    _files(tmp_path, {
        "go.mod": "module x",
        ".lkctl/test.yaml": "version: 1\ncommand: ./all\ncommands:\n  - {name: unit, run: ./unit}\n"
                            "  - {name: lint, run: ./lint}\nenv:\n  CI: true\n  N: 3\n  S: 'a b'\n",
    })  # fmt: skip
    config = load_test_config(tmp_path)
    assert config is not None
    assert (config.command, config.commands) == ("./all", (("unit", "./unit"), ("lint", "./lint")))
    assert dict(config.env) == {"CI": "true", "N": "3", "S": "a b"}
    project = find_project(tmp_path)
    assert resolve_test_command(project).command == "./all"  # beats go.mod
    assert resolve_test_command(project, name="lint").command == "./lint"
    cmd = resolve_test_command(project, argv=["pytest", "-k", "a b"])
    assert cmd.command == "pytest -k 'a b'" and dict(cmd.env)["S"] == "a b"  # env applies to every choice
    with pytest.raises(ConfigError, match=r"no test command named 'nope' \(commands: unit, lint\)"):
        resolve_test_command(project, name="nope")


def test_minimal_test_yaml_falls_back_to_detection(tmp_path: Path) -> None:
    _files(tmp_path, {"go.mod": "", ".lkctl/test.yaml": "version: 1\n"})
    assert resolve_test_command(find_project(tmp_path)).command == "go test ./..."


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("command: [a\n", "not valid YAML"),
        ("- a\n", "expected a mapping"),
        ("version: 2\n", "version 2 is not supported"),
        ("comand: x\n", "unknown key 'comand'"),
        ("command: 3\n", "`command` must be a string"),
        ("commands: [{name: a}]\n", "commands\\[0\\] must be a mapping with exactly `name` and `run`"),
        ("commands: x\n", "`commands` must be a list"),
        ("env: [A]\n", "`env` must be a mapping"),
        ("env: {1A: x}\n", "'1A' is not a valid environment variable name"),
        ("env: {A: {b: c}}\n", "env: A must be a string"),
    ],
)
def test_invalid_test_yaml_is_one_line_naming_the_file(tmp_path: Path, text: str, problem: str) -> None:
    _files(tmp_path, {".lkctl/test.yaml": text})
    with pytest.raises(ConfigError, match=problem) as e:
        load_test_config(tmp_path)
    assert e.value.message.startswith(str(tmp_path / ".lkctl" / "test.yaml") + ": ")
    assert "\n" not in e.value.message


def test_name_without_test_yaml_says_the_file_is_missing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"test\.yaml does not exist"):
        resolve_test_command(find_project(tmp_path), name="unit")


# --- guest command lines --------------------------------------------------------------------------------------


def test_guest_commands_run_in_app_in_a_login_shell_with_env_quoted() -> None:
    argv = guest_shell_argv("make test", env={"A": "x y", "B": "$(reboot)"}, subdir="web")
    assert argv == ["/bin/sh", "-lc", "export A='x y' && export B='$(reboot)' && cd -- /app/web && make test"]
    with pytest.raises(ConfigError, match="not a valid environment variable name"):
        guest_shell_argv("true", env={"A;reboot": "1"})


@pytest.mark.parametrize("bad", ["../x", "/etc", "..", "a/../../b"])
def test_serve_path_must_stay_inside_the_project(bad: str) -> None:
    with pytest.raises(ConfigError, match="inside the project"):
        app_path(bad)


def test_app_path_normalises() -> None:
    assert (app_path(""), app_path("."), app_path("a/./b/")) == ("/app", "/app", "/app/a/b")


# --- forwards and auth ----------------------------------------------------------------------------------------

USERNET = (
    "Hub -1 (net0):\r\n  Protocol[State]    FD  Source Address  Port   Dest. Address  Port RecvQ SendQ\r\n"
    "  TCP[HOST_FORWARD]  18       127.0.0.1 18123       10.0.2.15  8000     0     0\r\n"
    "  TCP[HOST_FORWARD]  13       127.0.0.1 39391       10.0.2.15    22     0     0\r\n"
    "  UDP[HOST_FORWARD]  14       127.0.0.1  5353       10.0.2.15    53     0     0\r\n"
    "  TCP[ESTABLISHED]   20        10.0.2.15 41000     127.0.0.1  8000     0     0\r\n"
)


def test_live_forwards_are_parsed_from_qemus_usernet_table_without_ssh() -> None:
    assert parse_usernet(USERNET) == [PortForward(18123, 8000), PortForward(5353, 53, proto="udp")]


def test_auth_names_are_checked() -> None:
    assert parse_auth("gh, anthropic,gh") == ("gh", "anthropic")
    with pytest.raises(ConfigError, match="unknown; choose from anthropic, git, gh, ssh"):
        parse_auth("gh,aws")


def test_credentials_hold_exactly_what_was_asked_and_describe_names_only(tmp_path: Path) -> None:
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    subprocess.run(["git", "-C", str(tmp_path), "config", "user.name", "Ada L"], check=True)
    subprocess.run(["git", "-C", str(tmp_path), "config", "user.email", "ada@example.org"], check=True)
    (tmp_path / "cfg" / "gh").mkdir(parents=True)
    env = {"ANTHROPIC_API_KEY": "sk-secret", "XDG_CONFIG_HOME": str(tmp_path / "cfg"), "HOME": str(tmp_path)}
    creds = collect_credentials(("anthropic", "git", "gh", "ssh"), tmp_path, env)
    assert dict(creds.env) == {
        "ANTHROPIC_API_KEY": "sk-secret",
        "GIT_AUTHOR_NAME": "Ada L", "GIT_COMMITTER_NAME": "Ada L",
        "GIT_AUTHOR_EMAIL": "ada@example.org", "GIT_COMMITTER_EMAIL": "ada@example.org",
    }  # fmt: skip
    assert creds.gh_config == tmp_path / "cfg" / "gh" and not creds.ssh_agent
    text = "\n".join(creds.describe())
    assert "sk-secret" not in text and "Ada" not in text and "ANTHROPIC_API_KEY" in text
    assert "not forwarded: ssh (no ssh-agent" in text
    assert collect_credentials(("git",), tmp_path, env).env.keys() == {
        "GIT_AUTHOR_NAME", "GIT_COMMITTER_NAME", "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_EMAIL"}  # fmt: skip
    assert collect_credentials((), tmp_path, env).describe() == ["forwarded to the agent: nothing"]


def test_serve_command_override_path_and_port_checks(tmp_path: Path) -> None:
    from lkctl.dev.serve import ServeOptions, serve_command

    (tmp_path / "web").mkdir()
    (tmp_path / "web" / "manage.py").touch()
    project = find_project(tmp_path)
    assert serve_command(project, ServeOptions(port=9001, path="web")).command == (
        "python3 manage.py runserver 0.0.0.0:9001"
    )  # detection reads the sub-directory
    custom = serve_command(project, ServeOptions(port=9001, command="./run --fast"))
    assert (custom.command, dict(custom.env)) == ("./run --fast", {"PORT": "9001"})
    with pytest.raises(ConfigError, match="is not a directory"):
        serve_command(project, ServeOptions(path="missing"))
    with pytest.raises(ConfigError, match="not a port number"):
        serve_command(project, ServeOptions(port=70000))

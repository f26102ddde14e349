"""What `dev.serve` and `dev.test` run: detection tables over the project's files, and `.lkctl/test.yaml`.

Pure functions of a directory's contents; the first matching rule wins. Commands are shell command lines run in
the guest (they come from these tables or from the project's own files, never from host-side user input).

The project is shared read-write with the guest, so every file read here may have been planted by it: a FIFO, a
link to /dev/zero, a huge or deeply nested file. `_small_file` opens without blocking, reads only regular files
and at most `_MAX_FILE` bytes; detection skips what it cannot read, `.lkctl/test.yaml` says what is wrong with it.
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lkctl.errors import ConfigError

__all__ = [
    "TEST_YAML",
    "DetectedCommand",
    "TestConfig",
    "detect_serve_command",
    "detect_test_command",
    "load_test_config",
    "missing_test_command_help",
]

TEST_YAML = Path(".lkctl") / "test.yaml"
_MAX_FILE = 1 << 20  # bytes: far above any real package.json, Makefile or test.yaml


class _Unreadable(Exception):
    """Why a project file cannot be read as a small text file (one phrase)."""


def _small_file(path: Path) -> bytes:
    """The file's bytes; FileNotFoundError when it is missing, _Unreadable when it is no small regular file.

    O_NONBLOCK: opening a FIFO does not wait for a writer; the type is checked on the open descriptor."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise
    except OSError as e:
        raise _Unreadable(f"cannot read it: {e.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise _Unreadable("is not a regular file")
        chunks, size = [], 0
        while size <= _MAX_FILE:
            chunk = os.read(fd, _MAX_FILE + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > _MAX_FILE:
            raise _Unreadable(f"is larger than {_MAX_FILE >> 20} MiB")
    except OSError as e:
        raise _Unreadable(f"cannot read it: {e.strerror}") from None
    finally:
        os.close(fd)
    return b"".join(chunks)


@dataclass(frozen=True)
class DetectedCommand:
    """A shell command line for the guest, the environment it needs, and which rule chose it."""

    command: str
    reason: str
    env: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class TestConfig:
    """`.lkctl/test.yaml`: `version: 1`, `command`, `commands: [{name, run}]`, `env: {NAME: VALUE}`."""

    __test__ = False  # not a pytest class, whatever its name

    path: Path
    version: int = 1
    command: str = ""
    commands: tuple[tuple[str, str], ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)

    def named(self, name: str) -> str:
        for n, run in self.commands:
            if n == name:
                return run
        known = ", ".join(n for n, _ in self.commands) or "none"
        raise ConfigError(f"{self.path}: no test command named {name!r} (commands: {known})")


def _file(root: Path, name: str) -> bool:
    return (root / name).is_file()


def _read(path: Path) -> str:
    """The file's text, or "" when it is missing or no small text file (detection skips it)."""
    try:
        return _small_file(path).decode("utf-8", errors="replace")
    except (OSError, _Unreadable):
        return ""


def _json_scripts(path: Path) -> Mapping[str, Any]:
    """The `scripts` object of package.json/composer.json, or {} when the file is missing or not that shape."""
    try:
        data = json.loads(_read(path))
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than the parser's stack
        return {}
    scripts = data.get("scripts") if isinstance(data, dict) else None
    return scripts if isinstance(scripts, dict) else {}


def detect_serve_command(root: Path, port: int) -> DetectedCommand:
    """The server for the project in `root`, listening on 0.0.0.0:`port` in the guest."""
    p = str(port)
    if _file(root, "artisan"):
        return DetectedCommand(f"php artisan octane:start --host=0.0.0.0 --port={p}", "artisan (Laravel Octane)")
    scripts = _json_scripts(root / "package.json")
    if "dev" in scripts:
        return DetectedCommand(f"npm run dev -- --host 0.0.0.0 --port {p}", "package.json scripts.dev")
    if "start" in scripts:
        return DetectedCommand("npm start", "package.json scripts.start", {"PORT": p})
    if _file(root, "composer.json"):
        docroot = "public" if (root / "public").is_dir() else "."
        return DetectedCommand(f"php -S 0.0.0.0:{p} -t {docroot}", "composer.json (PHP's built-in server)")
    if _file(root, "go.mod") and _file(root, "main.go"):
        return DetectedCommand("go run .", "go.mod and main.go", {"PORT": p})
    if _file(root, "manage.py"):
        return DetectedCommand(f"python3 manage.py runserver 0.0.0.0:{p}", "manage.py (Django)")
    return DetectedCommand(f"python3 -m http.server {p}", "no server detected: static files")


_MAKE_TEST = re.compile(r"^test\s*:(?!=)", re.MULTILINE)


def _ini_has(path: Path, section: str) -> bool:
    return re.search(rf"^\[{re.escape(section)}\]", _read(path), re.MULTILINE) is not None


def detect_test_command(root: Path) -> DetectedCommand | None:
    """The project's test command from its files, or None (then `.lkctl/test.yaml` is the way to say it)."""
    if "test" in _json_scripts(root / "composer.json"):
        return DetectedCommand("composer test", "composer.json scripts.test")
    if "test" in _json_scripts(root / "package.json"):
        return DetectedCommand("npm test", "package.json scripts.test")
    if _file(root, "go.mod"):
        return DetectedCommand("go test ./...", "go.mod")
    if (
        _file(root, "pytest.ini")
        or re.search(r"^\[tool\.pytest", _read(root / "pyproject.toml"), re.MULTILINE)
        or _ini_has(root / "setup.cfg", "tool:pytest")
        or _ini_has(root / "tox.ini", "pytest")
    ):
        return DetectedCommand("python3 -m pytest", "pytest configuration")
    for name in ("Taskfile.yml", "Taskfile.yaml", "taskfile.yml", "taskfile.yaml"):
        if _file(root, name):
            return DetectedCommand("task test", name)
    for name in ("GNUmakefile", "makefile", "Makefile"):
        if _MAKE_TEST.search(_read(root / name)):
            return DetectedCommand("make test", f"{name} with a test target")
    return None


def missing_test_command_help(root: Path) -> str:
    """One line telling the user how to say what their tests are."""
    return (
        f"no test command found in {root}: give one (dev.test -- make check) or write {root / TEST_YAML} "
        "with e.g. `version: 1` and `command: ./run-tests`"
    )


def _str_field(path: Path, data: Mapping[str, Any], key: str) -> str:
    value = data.get(key, "")
    if not isinstance(value, str):
        raise ConfigError(f"{path}: `{key}` must be a string (a shell command line)")
    return value


def load_test_config(root: Path) -> TestConfig | None:
    """`.lkctl/test.yaml` of the project, None if there is none; an invalid file is a ConfigError naming it."""
    path = root / TEST_YAML
    try:
        text = _small_file(path).decode("utf-8")
    except FileNotFoundError:
        return None
    except _Unreadable as e:
        raise ConfigError(f"{path}: {e}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: is not UTF-8 text") from None
    import yaml  # only when there is a file to read: dev.test's lean path has no other use for it

    from lkctl.yamlio import safe_load

    try:
        data = safe_load(text)
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        line = f" (line {where.line + 1})" if where is not None else ""
        raise ConfigError(f"{path}: not valid YAML{line}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping with version, command, commands and env")
    unknown = sorted(set(data) - {"version", "command", "commands", "env"})
    if unknown:
        raise ConfigError(f"{path}: unknown key {unknown[0]!r} (known: version, command, commands, env)")
    version = data.get("version", 1)
    if version != 1:
        raise ConfigError(f"{path}: version {version!r} is not supported (write `version: 1`)")
    if not isinstance(data.get("commands") or [], list):
        raise ConfigError(f"{path}: `commands` must be a list of {{name, run}}")
    commands = []
    for i, item in enumerate(data.get("commands") or []):
        if not isinstance(item, dict) or set(item) != {"name", "run"}:
            raise ConfigError(f"{path}: commands[{i}] must be a mapping with exactly `name` and `run`")
        name, run = item["name"], item["run"]
        if not isinstance(name, str) or not name or not isinstance(run, str) or not run:
            raise ConfigError(f"{path}: commands[{i}]: `name` and `run` must be non-empty strings")
        commands.append((name, run))
    env_data = data.get("env") or {}
    if not isinstance(env_data, dict):
        raise ConfigError(f"{path}: `env` must be a mapping of NAME: VALUE")
    env: dict[str, str] = {}
    for k, v in env_data.items():
        if not isinstance(k, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k):
            raise ConfigError(f"{path}: env: {k!r} is not a valid environment variable name")
        if isinstance(v, dict | list) or v is None:
            raise ConfigError(f"{path}: env: {k} must be a string, number or boolean")
        env[k] = ("true" if v else "false") if isinstance(v, bool) else str(v)
    return TestConfig(
        path=path,
        version=1,
        command=_str_field(path, data, "command"),
        commands=tuple(commands),
        env=env,
    )

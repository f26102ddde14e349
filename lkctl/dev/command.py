"""Commands in the dev VM's /app: what `dev.test`, `dev.shell -- CMD` and `dev.serve` run, and how they get there.

A command runs in the guest's shell for SSH commands (`lkctl-vmshell`: bash on the dev image's root disk, not a
login shell) in /app or a sub-directory, with the image's PATH (`DEV_PATH`, its /etc/environment) and the
project's environment exported. A login shell would read /etc/profile and profile.d, which under TCG costs forks
and sets nothing else a command needs. The line sent is the one `lkctl.ssh.remote_command` renders, whether it
goes through the VM's connection holder (no handshake, as the lean `vm.exec`) or over a direct SSH connection, so
output, stdin and exit codes do not depend on which one ran it.

Import-light (no invoke, no paramiko, no settings): the `lkctl` executable's lean path (`lkctl.dev.fastcli`) runs
`run_tests` and `shell_dev` from here without starting the full CLI.
"""

from __future__ import annotations

import os
import posixpath
import re
import shlex
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO

from lkctl.dev.detect import (
    TEST_YAML,
    DetectedCommand,
    detect_test_command,
    load_test_config,
    missing_test_command_help,
)
from lkctl.dev.project import GUEST_APP, Project
from lkctl.errors import ConfigError, VmError
from lkctl.runtime import state
from lkctl.runtime.state import VmRecord

__all__ = [
    "DEV_PATH",
    "AppCommand",
    "app_command",
    "app_path",
    "find_dev_vm",
    "require_running",
    "resolve_test_command",
    "run_app_command",
    "run_tests",
    "shell_dev",
]

DEV_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
"""The dev image's PATH (its /etc/environment and /etc/profile for root; `tests/unit` checks the recipe says so):
/usr/local first, where `pip install` and `npm install -g` put what the user adds."""

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class AppCommand:
    """argv run in `workdir` of the dev VM with `env` exported (PATH among it) by the guest's SSH shell."""

    argv: tuple[str, ...]
    workdir: str = GUEST_APP
    env: Mapping[str, str] = field(default_factory=dict)


def app_path(subdir: str = "") -> str:
    """/app or /app/SUBDIR; SUBDIR must stay inside the project."""
    if not subdir:
        return GUEST_APP
    norm = posixpath.normpath(subdir)
    if posixpath.isabs(norm) or norm == ".." or norm.startswith("../"):
        raise ConfigError(f"--path {subdir}: give a directory inside the project, relative to its root")
    return GUEST_APP if norm == "." else f"{GUEST_APP}/{norm}"


def app_command(
    argv: Sequence[str] = (), *, line: str = "", env: Mapping[str, str] | None = None, subdir: str = ""
) -> AppCommand:
    """`argv` (run as given, never re-parsed) or the shell command line `line` (run by /bin/sh -c, as a login
    shell ran it before), in /app[/subdir] with the image's PATH and `env` (which may override PATH). Pure."""
    if bool(argv) == bool(line):
        raise ConfigError("give either a command's words or a shell command line to run in the dev VM")
    for k in env or {}:
        if not _ENV_NAME.fullmatch(k):
            raise ConfigError(f"not a valid environment variable name: {k!r}")
    words = tuple(argv) if argv else ("/bin/sh", "-c", line)
    return AppCommand(words, app_path(subdir), {"PATH": DEV_PATH, **(env or {})})


def find_dev_vm(project: Project) -> VmRecord | None:
    """The project's dev VM record (running or not), or None."""
    return next((r for r in state.all_records() if r.name == project.vm_name), None)


def require_running(project: Project) -> VmRecord:
    record = find_dev_vm(project)
    if record is None or state.vm_status(record) != "running":
        raise VmError(f"the dev VM of {project.root} is not running; start it with dev.boot")
    return record


def _fd(stream: IO[bytes] | None) -> int | None:
    try:
        return stream.fileno() if stream is not None else None
    except (AttributeError, OSError, ValueError):  # in-memory streams
        return None


def _is_tty(stream: IO[bytes] | None) -> bool:
    fd = _fd(stream)
    return fd is not None and os.isatty(fd)


def run_app_command(
    record: VmRecord,
    cmd: AppCommand,
    *,
    stdin: IO[bytes] | None,
    stdout: IO[bytes],
    stderr: IO[bytes],
    pty: bool = False,
) -> int:
    """Run `cmd` in the dev VM and return its exit status unchanged: through the VM's connection holder when it
    answers (no pty there), else over a new SSH connection. `stdin` (None: the command sees EOF) is streamed."""
    out_fd, err_fd, in_fd = _fd(stdout), _fd(stderr), _fd(stdin)
    if not pty and out_fd is not None and err_fd is not None and (stdin is None or in_fd is not None):
        from lkctl.runtime.holder import HolderUnavailable, exec_via_holder

        stdout.flush()
        stderr.flush()
        try:
            return exec_via_holder(record, cmd.argv, stdin_fd=in_fd, stdout_fd=out_fd, stderr_fd=err_fd,
                                   env=cmd.env, workdir=cmd.workdir)  # fmt: skip
        except HolderUnavailable:
            pass  # nothing ran yet: the same command over SSH
    from lkctl import ssh
    from lkctl.runtime.exec import ssh_target

    return int(ssh.exec_command(ssh_target(record), list(cmd.argv), stdin=stdin, stdout=stdout, stderr=stderr,
                                pty=pty, env=cmd.env, workdir=cmd.workdir))  # fmt: skip


def shell_dev(
    project: Project,
    argv: Sequence[str] | None,
    *,
    stdin: IO[bytes] | None,
    stdout: IO[bytes],
    stderr: IO[bytes],
) -> int:
    """A login shell in /app on a pseudo-terminal, or `argv` run there; returns the exit status unchanged.

    `argv` gets a pseudo-terminal when stdin and stdout are terminals (as `docker exec -it`), else its stdin is
    streamed unless it is a terminal."""
    record = require_running(project)
    if not argv:  # interactive: a login shell, as a terminal session expects
        login = app_command(line='exec "${SHELL:-/bin/sh}" -l')
        return run_app_command(record, login, stdin=stdin, stdout=stdout, stderr=stderr, pty=True)
    tty = _is_tty(stdin) and _is_tty(stdout)
    feed = stdin if (tty or not _is_tty(stdin)) else None
    return run_app_command(record, app_command(argv), stdin=feed, stdout=stdout, stderr=stderr, pty=tty)


def resolve_test_command(project: Project, *, name: str = "", argv: Sequence[str] = ()) -> DetectedCommand:
    """What dev.test runs: `argv`, else test.yaml's command `name`, else its `command`, else detection.

    `.lkctl/test.yaml`'s `env` comes with whichever command is chosen."""
    config = load_test_config(project.root)
    env = dict(config.env) if config else {}
    if argv:
        return DetectedCommand(shlex.join(argv), "command line", env)
    if name:
        if config is None:
            raise ConfigError(f"--name {name}: {project.root / TEST_YAML} does not exist (its `commands` name tests)")
        return DetectedCommand(config.named(name), f"{TEST_YAML} commands[{name}]", env)
    if config is not None and config.command:
        return DetectedCommand(config.command, f"{TEST_YAML} command", env)
    detected = detect_test_command(project.root)
    if detected is None:
        raise ConfigError(missing_test_command_help(project.root))
    return DetectedCommand(detected.command, detected.reason, env)


def run_tests(
    project: Project,
    *,
    name: str = "",
    argv: Sequence[str] = (),
    stdout: IO[bytes],
    stderr: IO[bytes],
    say: Callable[[str], None] = lambda _: None,
) -> int:
    """Run the project's tests in /app in its dev VM, output streamed (no stdin); returns their exit status."""
    test = resolve_test_command(project, name=name, argv=argv)
    # words from the command line run as they are; a detected or configured command line through /bin/sh
    cmd = app_command(argv, env=test.env) if argv else app_command(line=test.command, env=test.env)
    record = require_running(project)
    say(f"running {test.command!r} ({test.reason}) in {GUEST_APP}")
    started = time.monotonic()
    code = run_app_command(record, cmd, stdin=None, stdout=stdout, stderr=stderr)
    say(f"exit status {code} after {time.monotonic() - started:.1f}s")
    return code

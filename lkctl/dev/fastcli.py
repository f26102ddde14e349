"""The `lkctl` executable's lean path for `dev.test [--name N] [-- CMD...]` and `dev.shell -- CMD...`.

These tasks read no settings and run one command in the project's running dev VM, which its connection holder
answers without an SSH handshake; importing and starting invoke would be most of their cost. So
`lkctl.launcher.main` hands their plain forms here: the same library calls as the tasks in lkctl/tasks/dev.py
(`run_tests`, `shell_dev`), the same `lkctl: ...` lines and exit codes (an LkError's own code, 130 for Ctrl-C,
141 for a closed stdout). Any other form (another option, `--help`, no command for `dev.shell`) goes to the full
CLI. Nothing here imports invoke, and paramiko only when the holder cannot take the command.
"""

from __future__ import annotations

import signal
import sys

__all__ = ["fast_dev", "lean_form"]


def lean_form(args: list[str]) -> tuple[str, str, list[str]] | None:
    """(task, --name value, command words) when `args` is a form this path answers, else None. Pure."""
    if not args or args[0] not in ("dev.test", "dev.shell"):
        return None
    task, rest, name = args[0], args[1:], ""
    if task == "dev.test" and rest[:1] == ["--name"] and len(rest) >= 2 and not rest[1].startswith("-"):
        name, rest = rest[1], rest[2:]
    elif task == "dev.test" and rest[:1] and rest[0].startswith("--name=") and len(rest[0]) > 7:
        name, rest = rest[0][7:], rest[1:]
    if not rest:
        return (task, name, []) if task == "dev.test" else None  # a bare dev.shell is an interactive session
    if rest[0] != "--" or len(rest) < 2:
        return None
    return task, name, rest[1:]


def _say(message: str) -> None:
    print(f"lkctl: {message}", file=sys.stderr, flush=True)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def fast_dev(args: list[str]) -> int | None:
    """The exit status of a plain `dev.test`/`dev.shell -- CMD` run here; None to use the full CLI instead."""
    form = lean_form(args)
    if form is None:
        return None
    task, name, words = form
    from lkctl.dev.command import run_tests, shell_dev
    from lkctl.dev.project import find_project
    from lkctl.errors import LkError

    # SIGTERM/SIGHUP unwind like Ctrl-C, as in the full CLI (lkctl.cli.LkProgram.run)
    for s in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, _interrupt)
    out, err = sys.stdout.buffer, sys.stderr.buffer
    try:
        try:
            project = find_project()
            if task == "dev.test":
                code = run_tests(project, name=name, argv=words, stdout=out, stderr=err, say=_say)
            else:
                code = shell_dev(project, words, stdin=sys.stdin.buffer, stdout=out, stderr=err)
            return code
        except LkError as e:
            _say(e.message)
            return e.exit_code
        except KeyboardInterrupt:
            _say("interrupted")
            return 130
        finally:
            out.flush()  # what an SSH fallback wrote before failing, too: the launcher ends with os._exit
    except BrokenPipeError:
        return 141  # our stdout was closed (`| head`): end quietly, as a shell pipeline member killed by SIGPIPE

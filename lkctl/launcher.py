"""The `lkctl` executable's entry point: lean paths for a few plain commands, else the invoke Program.

Importing invoke, lkctl's Program and its task collections is most of a short command's cost, so the plain forms
of a few commands are answered without it (LEAN_PATHS: `vm.exec VM -- CMD...` through the VM's connection holder,
`vm.run -d --image X`, `dev.test`/`dev.shell -- CMD`, an unchanged `image.build SOURCE`). A lean path answers
exactly as the full CLI would (same output, exit status, state) or returns None having done nothing, and the full
CLI runs. Before any of them, anything only the full CLI understands (lkctl.invokeconfig.full_cli_needed: an
unknown `LKCTL_*`/`INVOKE_*` variable such as `LKCTL_BENCH_FULL_CLI=1`, a runtime or .json/.py config file, a
config file invoke cannot merge) sends the command to the full CLI.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from typing import NamedTuple

__all__ = ["LEAN_PATHS", "LeanPath", "fast_exec", "main"]


class LeanPath(NamedTuple):
    """Where a command's lean path lives (imported only when that command is typed) and how the process ends."""

    module: str
    function: str
    teardown: bool  # end through _exit_without_teardown (flush, atexit), else os._exit (output went to fds 1/2)
    gated: bool = True  # ask lkctl.invokeconfig.full_cli_needed first (image.build's own check is stricter)


LEAN_PATHS: dict[str, LeanPath] = {
    "vm.exec": LeanPath("lkctl.launcher", "fast_exec", teardown=False),
    "dev.test": LeanPath("lkctl.dev.fastcli", "fast_dev", teardown=False),
    "dev.shell": LeanPath("lkctl.dev.fastcli", "fast_dev", teardown=False),
    "image.build": LeanPath("lkctl.fastbuild", "fast_build", teardown=False, gated=False),
    "vm.run": LeanPath("lkctl.runtime.fastrun", "fast_run", teardown=True),
}
"""Command word → its lean path: a function of argv (after the program name) → exit status, or None to hand over."""


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def fast_exec(args: list[str]) -> int | None:
    """The exit status of `vm.exec VM -- CMD...` run through the VM's holder; None to use the full CLI instead."""
    if len(args) < 4 or args[0] != "vm.exec" or args[2] != "--" or args[1].startswith("-"):
        return None
    from lkctl.errors import LkError
    from lkctl.runtime import holder, state

    # as the full CLI (lkctl.cli.LkProgram.run): SIGTERM/SIGHUP end the command like Ctrl-C, "lkctl: interrupted"
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    try:
        try:
            record = state.find_vm(args[1])
        except LkError:
            return None  # the full CLI says it in its own words
        if not state.is_our_process(record):
            return None
        stdin = None if sys.stdin is None or sys.stdin.isatty() else sys.stdin.fileno()
        return holder.exec_via_holder(record, args[3:], stdin_fd=stdin)
    except holder.HolderUnavailable:
        return None
    except LkError as e:  # after the command started: it cannot be retried over another connection
        print(f"lkctl: {e.message}", file=sys.stderr)
        return 125  # lkctl's own failure, told apart from the command's status as the full vm.exec does
    except BrokenPipeError:
        return 141  # our stdout was closed (`| head`): end quietly, as a shell pipeline member killed by SIGPIPE
    except KeyboardInterrupt:
        print("lkctl: interrupted", file=sys.stderr)
        return 130


def _lean_path(args: list[str]) -> tuple[Callable[[list[str]], int | None], bool] | None:
    """The lean path for `args` and whether it ends through the teardown-free exit, or None for the full CLI."""
    lean = LEAN_PATHS.get(args[0]) if args else None
    if lean is None:
        return None
    if lean.gated:
        from lkctl.invokeconfig import full_cli_needed

        if full_cli_needed(os.environ):
            return None
    import importlib

    return getattr(importlib.import_module(lean.module), lean.function), lean.teardown


def _open_closed_std_fds() -> None:
    """A closed stdin/stdout/stderr (`lkctl ... >&-`) becomes /dev/null, for the lean paths and the full CLI alike:
    otherwise the next file lkctl opens (a VM record, a log) would take fd 1 and receive what is printed."""
    for fd, name in ((0, "stdin"), (1, "stdout"), (2, "stderr")):
        try:
            os.fstat(fd)
            continue
        except OSError:
            pass
        null = os.open(os.devnull, os.O_RDWR)
        if null != fd:
            os.dup2(null, fd)
            os.close(null)
        if getattr(sys, name) is None:
            mode, errors = ("r", None) if fd == 0 else ("w", "backslashreplace" if fd == 2 else None)
            setattr(sys, name, open(fd, mode, errors=errors, closefd=False))  # noqa: SIM115 - lives as sys.<name>


def main() -> None:
    _open_closed_std_fds()
    try:  # every path reads config files relative to it: one line, not a FileNotFoundError traceback
        os.getcwd()
    except FileNotFoundError:
        print("lkctl: the working directory no longer exists (removed, or its file system unmounted): "
              "cd into an existing directory", file=sys.stderr)  # fmt: skip
        os._exit(2)
    lean = _lean_path(sys.argv[1:])
    if lean is not None:
        handler, teardown = lean
        code = handler(sys.argv[1:])
        if code is not None:
            if teardown:
                _exit_without_teardown(code)
            sys.stderr.flush()
            os._exit(code)  # stdout went to fd 1 directly, nothing is buffered; skip the interpreter teardown
    from lkctl.cli import program

    status: object = 0
    try:
        program.run()
    except SystemExit as e:
        status = e.code
    _exit_without_teardown(status)


def _exit_without_teardown(code: object) -> None:
    """Exit like `sys.exit(code)` but skip the interpreter's teardown of every module the CLI imported (0.1-0.3 s
    of CPU here, after `vm.run -d` already had its answer). atexit handlers still run; whenever skipping could
    change what happens (other threads still running, a message as the exit status, output that cannot be
    flushed), the ordinary exit is taken instead."""
    import threading

    if code is None:
        code = 0
    if not isinstance(code, int) or threading.active_count() > 1:
        raise SystemExit(code)
    try:
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()
    except (OSError, ValueError):
        raise SystemExit(code) from None
    import atexit

    atexit._run_exitfuncs()
    os._exit(code)

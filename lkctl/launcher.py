"""The `lkctl` executable's entry point: a lean path for `lkctl vm.exec VM -- CMD...`, else the invoke Program.

`vm.exec` through a running VM's connection holder needs neither invoke nor paramiko, and importing them is most
of the command's cost; so the plain form `vm.exec VM -- CMD...` (no options) is answered here when the VM is
running and its holder answers. Every other case, and every error before the command started, goes to the full
CLI, which gives the usual messages and connects over SSH itself.
"""

from __future__ import annotations

import os
import sys

__all__ = ["fast_exec", "main"]


def fast_exec(args: list[str]) -> int | None:
    """The exit status of `vm.exec VM -- CMD...` run through the VM's holder; None to use the full CLI instead."""
    if len(args) < 4 or args[0] != "vm.exec" or args[2] != "--" or args[1].startswith("-"):
        return None
    from lkctl.errors import LkError
    from lkctl.runtime import holder, state

    try:
        record = state.find_vm(args[1])
    except LkError:
        return None  # the full CLI says it in its own words
    if not state.is_our_process(record):
        return None
    try:
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


def main() -> None:
    code = fast_exec(sys.argv[1:])
    if code is None and sys.argv[1:2] in (["dev.test"], ["dev.shell"]):
        from lkctl.dev.fastcli import fast_dev  # dev.test / dev.shell -- CMD: the same lean path

        code = fast_dev(sys.argv[1:])
    if code is None and sys.argv[1:2] == ["image.build"]:
        from lkctl.fastbuild import fast_build  # an unchanged `image.build SOURCE`: answered from its receipt

        code = fast_build(sys.argv[1:])
    if code is not None:
        sys.stderr.flush()
        os._exit(code)  # stdout went to fd 1 directly, nothing is buffered; skip the interpreter teardown
    if sys.argv[1:2] == ["vm.run"]:
        from lkctl.runtime.fastrun import fast_run  # plain `vm.run -d`: QEMU starts without invoke imported

        code = fast_run(sys.argv[1:])
        if code is not None:
            _exit_without_teardown(code)
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

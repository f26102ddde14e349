"""Running commands on the guest: exact argv quoting, streamed bytes, exit codes unchanged."""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import IO, TYPE_CHECKING, Protocol

from lkctl.errors import ConfigError, SshError
from lkctl.ssh._connect import CONNECT_TIMEOUT, SshTarget, _connect, _session, _translated_errors

if TYPE_CHECKING:
    import paramiko


_CHUNK = 64 * 1024
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


class ByteSink(Protocol):
    """Where remote output goes: any binary stream (a file, sys.stdout.buffer, BytesIO, a pipe)."""

    def write(self, data: bytes, /) -> int | None: ...

    def flush(self) -> None: ...


def remote_command(
    argv: Sequence[str] | None = None,
    *,
    command: str | None = None,
    env: Mapping[str, str] | None = None,
    workdir: str | None = None,
) -> str:
    """The exact string sent as the SSH exec request: argv quoted so the remote shell never re-parses it.

    `command` is the explicit escape hatch for a shell string; it goes through `eval` so env/workdir and the
    trailing `exit $?` wrap it as a whole. The trailing `exit $?` keeps the login shell from exec'ing the
    command, so a command killed by a signal reports 128+N (as in a local shell) instead of no status at all.
    """
    if (argv is None) == (command is None):
        raise ConfigError("give either an argv or a shell command to run on the guest, not both or neither")
    words = [*(argv or ()), *(env or {}).values(), command or "", workdir or ""]
    if any("\0" in w for w in words):
        raise ConfigError("a NUL byte cannot be passed to a remote command")
    parts: list[str] = []
    if workdir is not None:
        parts.append(f"cd -- {shlex.quote(workdir)}")
    if env:
        bad = [k for k in env if not _ENV_NAME.match(k)]
        if bad:
            raise ConfigError(f"not a valid environment variable name: {bad[0]!r}")
        parts.append("export " + " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items()))
    if argv is not None:
        if not argv:
            raise ConfigError("an empty argv cannot be run on the guest")
        parts.append(shlex.join(argv))
    else:
        parts.append(f"eval {shlex.quote(command or '')}")
    return " && ".join(parts) + "; exit $?"


def exec_command(
    target: SshTarget,
    argv: Sequence[str] | None = None,
    *,
    command: str | None = None,
    stdin: IO[bytes] | None = None,
    stdout: ByteSink | None = None,
    stderr: ByteSink | None = None,
    pty: bool = False,
    env: Mapping[str, str] | None = None,
    workdir: str | None = None,
    timeout: float | None = None,
    forward_agent: bool = False,
) -> int:
    """Run argv (or a shell `command`) on the guest and return its exit status unchanged.

    Output is copied byte for byte to `stdout`/`stderr` (default: this process's) as it arrives; `stdin`, when
    given, is streamed until EOF, otherwise the command sees EOF at once. A command killed by a signal gives
    128+N; a session that ends without any status gives 255, like OpenSSH. With `pty=True` the guest merges
    stderr into stdout, and a terminal on `stdin` is put in raw mode for the duration. `forward_agent=True`
    forwards the host's ssh-agent (SSH_AUTH_SOCK) to this one command; nothing else ever does.
    """
    line = remote_command(argv, command=command, env=env, workdir=workdir)
    out = stdout if stdout is not None else sys.stdout.buffer
    err = stderr if stderr is not None else sys.stderr.buffer
    deadline = None if timeout is None else time.monotonic() + timeout
    client = _connect(target, CONNECT_TIMEOUT if timeout is None else min(CONNECT_TIMEOUT, timeout))
    agent = None
    try:
        with _translated_errors(target, CONNECT_TIMEOUT):
            channel = _session(client, CONNECT_TIMEOUT)
            if forward_agent:
                import paramiko.agent

                if not os.environ.get("SSH_AUTH_SOCK"):
                    raise SshError("cannot forward the ssh-agent: SSH_AUTH_SOCK is not set (start ssh-agent first)")
                agent = paramiko.agent.AgentRequestHandler(channel)
            if pty:
                fd = _tty_fd(out)
                size = os.get_terminal_size(fd) if fd is not None else os.terminal_size((80, 24))
                channel.get_pty(term=os.environ.get("TERM", "vt100"), width=size.columns, height=size.lines)
            channel.exec_command(line)
        return _pump(channel, target, stdin, out, err, deadline, raw=pty and _tty_fd(stdin) is not None)
    finally:
        if agent is not None:
            agent.close()
        client.close()


def _tty_fd(stream: object) -> int | None:
    """The stream's file descriptor if it is a terminal, else None (BytesIO, pipes, files)."""
    fileno = getattr(stream, "fileno", None)
    if fileno is None:
        return None
    try:
        fd = fileno()
    except (OSError, ValueError):  # io.UnsupportedOperation is both
        return None
    return fd if isinstance(fd, int) and os.isatty(fd) else None


@contextlib.contextmanager
def _raw_terminal(stream: IO[bytes] | None, enabled: bool) -> Iterator[None]:
    if not enabled or stream is None:
        yield
        return
    import termios
    import tty

    fd = stream.fileno()
    saved = termios.tcgetattr(fd)
    tty.setraw(fd, termios.TCSANOW)  # not the default TCSAFLUSH: keep what the user typed ahead
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _pump(
    channel: paramiko.Channel,
    target: SshTarget,
    stdin: IO[bytes] | None,
    out: ByteSink,
    err: ByteSink,
    deadline: float | None,
    *,
    raw: bool,
) -> int:
    """Copy stdin to the channel and its stdout/stderr back, each in its own thread, then return the status."""
    failures: list[BaseException] = []

    def copy_out(recv: Callable[[int], bytes], sink: ByteSink) -> None:
        try:
            while data := recv(_CHUNK):
                sink.write(data)
                sink.flush()
        except BaseException as e:  # surfaced in the calling thread below
            failures.append(e)
            channel.close()

    def copy_in(source: IO[bytes], stop_fd: int) -> None:
        try:
            for data in _read_until_stopped(source, stop_fd):
                channel.sendall(data)
        except OSError:
            return  # the command exited (or the channel closed) before reading all of its input
        with contextlib.suppress(OSError):
            channel.shutdown_write()

    readers = [
        threading.Thread(target=copy_out, args=(channel.recv, out), daemon=True, name="lkctl-ssh-stdout"),
        threading.Thread(target=copy_out, args=(channel.recv_stderr, err), daemon=True, name="lkctl-ssh-stderr"),
    ]
    # stdin is read from its file descriptor by a non-daemon thread that a self-pipe stops: a daemon thread
    # blocked in sys.stdin.buffer.read() at interpreter exit aborts Python (exit 134, _enter_buffered_busy).
    stop_r, stop_w = os.pipe()
    feeder: threading.Thread | None = None
    try:
        with _raw_terminal(stdin, raw):
            if stdin is None:
                channel.shutdown_write()
            else:
                feeder = threading.Thread(target=copy_in, args=(stdin, stop_r), name="lkctl-ssh-stdin")
                feeder.start()
            for t in readers:
                t.start()
            for t in readers:
                t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
                if t.is_alive():
                    channel.close()
                    raise SshError(f"command on VM {target.label} did not finish in time; it was cut off")
    finally:
        os.write(stop_w, b"x")
        if feeder is not None:
            feeder.join()
        os.close(stop_r)
        os.close(stop_w)
    if failures:
        raise failures[0]
    status = channel.recv_exit_status()
    return 255 if status < 0 else status


def _read_until_stopped(source: IO[bytes], stop_fd: int) -> Iterator[bytes]:
    """Chunks of `source` until EOF or until `stop_fd` becomes readable (the command ended).

    A stream with a file descriptor is read with os.read after select() on it and on the stop pipe, never through
    its buffer, so stopping never leaves a thread inside a buffered read. A stream without one (BytesIO) cannot
    block and is read directly.
    """
    import select

    try:
        fd = source.fileno()
    except (OSError, ValueError, AttributeError):  # io.UnsupportedOperation is both
        read = getattr(source, "read1", source.read)
        while True:
            if select.select([stop_fd], [], [], 0)[0]:
                return
            data = read(_CHUNK)
            if not data:
                return
            yield data
    while True:
        ready, _, _ = select.select([fd, stop_fd], [], [])
        if stop_fd in ready:
            return
        try:
            data = os.read(fd, _CHUNK)
        except BlockingIOError:
            continue
        if not data:
            return
        yield data

"""A held SSH connection: one handshake, then each command is a new channel on it (like OpenSSH ControlMaster).

The pinned host key and the VM's client key are checked once, when the session connects. Every `exec`/`run` then
costs one channel open and one exec request, which is what makes `Session.exec(["true"])` as fast as `ssh true`
through a ControlMaster socket. A session is safe to share between threads (paramiko multiplexes channels).
"""

from __future__ import annotations

import os
import select
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING

from lkctl.errors import SshError
from lkctl.ssh._connect import CONNECT_TIMEOUT, SshTarget, _connect, _NotYet
from lkctl.ssh._exec import ByteSink, _pump, remote_command

if TYPE_CHECKING:
    import paramiko

_CHUNK = 256 * 1024


class Session:
    """Authenticated connections to one guest, kept: `exec` and `run` open a channel per command.

    One command at a time per connection: dropbear 2022.83 drops a whole connection when channels on it open and
    close concurrently (`Failed assertion ... !channel->sent_close`). So sequential commands share the first
    connection (one handshake in all), and a command started while others run gets another kept connection.
    """

    _KEEP = 4  # idle connections kept for concurrent use

    def __init__(self, target: SshTarget, client: paramiko.SSHClient) -> None:
        self.target = target
        self._idle: list[paramiko.SSHClient] = [client]
        self._busy: dict[int, paramiko.SSHClient] = {}  # id(channel) -> its connection
        self._lock = threading.Lock()

    @property
    def alive(self) -> bool:
        with self._lock:
            return any(_active(c) for c in [*self._idle, *self._busy.values()])

    def _acquire(self, timeout: float) -> paramiko.SSHClient:
        with self._lock:
            while self._idle:
                client = self._idle.pop()
                if _active(client):
                    return client
                client.close()
        # all busy (or the link dropped): one more handshake. dropbear resets unauthenticated connections beyond
        # 5 per address, so a burst of concurrent commands retries briefly
        for attempt in range(6):
            try:
                return _connect(self.target, timeout)
            except _NotYet:
                if attempt == 5:
                    raise
                time.sleep(0.1 * 2**attempt)
        raise AssertionError("unreachable")

    def _release(self, client: paramiko.SSHClient) -> None:
        with self._lock:
            if _active(client) and len(self._idle) < self._KEEP:
                self._idle.append(client)
                return
        client.close()

    def _check_pin(self, transport: paramiko.Transport) -> None:
        """The held connection's host key is still the one pinned in known_hosts (re-read for every command, so
        a changed pin is honoured at once, as a new connection would)."""
        import paramiko

        try:
            pins = paramiko.HostKeys(os.fspath(self.target.known_hosts))
        except (OSError, paramiko.SSHException) as e:
            raise SshError(f"cannot read the pinned host key of VM {self.target.label}: {e}") from None
        host = self.target.host if self.target.port == 22 else f"[{self.target.host}]:{self.target.port}"
        if not pins.check(host, transport.get_remote_server_key()):
            raise SshError(
                f"host key of {self.target.describe()} does not match the key lkctl pinned for it; refusing to "
                "run the command"
            )

    def channel(self, line: str, *, timeout: float = CONNECT_TIMEOUT) -> paramiko.Channel:
        """A channel on which `line` (see remote_command) has been started, on a connection of its own until
        `finish(channel)` gives the connection back."""
        import paramiko

        for attempt in range(2):
            client = self._acquire(timeout)
            try:
                transport = client.get_transport()
                if transport is None:
                    raise SshError(f"the SSH connection to {self.target.describe()} is closed")
                self._check_pin(transport)
                try:
                    channel = transport.open_session(timeout=timeout)
                    channel.exec_command(line)
                except (paramiko.ChannelException, paramiko.SSHException) as e:
                    # dropbear now and then refuses a channel, or closes it instead of answering the exec
                    # request, on a connection whose last channel just closed; the command did not start, so
                    # try once more on a new connection
                    client.close()
                    if attempt == 0:
                        continue
                    raise SshError(f"{self.target.describe()} did not start the command: {e}") from None
                break
            except BaseException:
                self._release(client)
                raise
        with self._lock:
            self._busy[id(channel)] = client
        return channel

    def finish(self, channel: paramiko.Channel, wait: float = 5.0) -> None:
        """Close a command's channel (after the server closed it, when the command ended) and keep its connection.

        Closing first while the server is closing too is what trips dropbear's assertion; a channel still
        running (an error or a timeout cut it off) is closed at once."""
        if channel.exit_status_ready():
            deadline = time.monotonic() + wait
            while not channel.closed and time.monotonic() < deadline:
                time.sleep(0.001)
        channel.close()
        with self._lock:
            client = self._busy.pop(id(channel), None)
        if client is not None:
            self._release(client)

    def exec(
        self,
        argv: Sequence[str] | None = None,
        *,
        command: str | None = None,
        input: bytes | None = None,
        env: Mapping[str, str] | None = None,
        workdir: str | None = None,
        timeout: float | None = None,
    ) -> tuple[int, bytes, bytes]:
        """Run argv (or a shell `command`) with `input` as its stdin; returns (exit status, stdout, stderr) exactly.

        A command killed by a signal gives 128+N; a channel that closes without a status gives 255, like OpenSSH.
        """
        line = remote_command(argv, command=command, env=env, workdir=workdir)
        deadline = None if timeout is None else time.monotonic() + timeout
        channel = self.channel(line)
        try:
            if input:
                writer = threading.Thread(target=_feed, args=(channel, input), daemon=True, name="lkctl-ssh-stdin")
                writer.start()
            else:
                channel.shutdown_write()
            out, err = _collect(channel, deadline, self.target)
            status = channel.recv_exit_status()
        finally:
            self.finish(channel)
        return (255 if status < 0 else status), out, err

    def run(
        self,
        argv: Sequence[str] | None = None,
        *,
        command: str | None = None,
        stdin: IO[bytes] | None = None,
        stdout: ByteSink,
        stderr: ByteSink,
        env: Mapping[str, str] | None = None,
        workdir: str | None = None,
        timeout: float | None = None,
    ) -> int:
        """Like exec_command, on this session: stream stdin/stdout/stderr, return the exit status unchanged."""
        line = remote_command(argv, command=command, env=env, workdir=workdir)
        deadline = None if timeout is None else time.monotonic() + timeout
        channel = self.channel(line)
        try:
            return _pump(channel, self.target, stdin, stdout, stderr, deadline, raw=False)
        finally:
            self.finish(channel)

    def close(self) -> None:
        with self._lock:
            clients = [*self._idle, *self._busy.values()]
            self._idle, self._busy = [], {}
        for c in clients:
            c.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _active(client: paramiko.SSHClient) -> bool:
    transport = client.get_transport()
    return transport is not None and transport.is_active()


def _feed(channel: paramiko.Channel, data: bytes) -> None:
    try:
        channel.sendall(data)
    except OSError:
        return  # the command exited before reading all of its input
    try:
        channel.shutdown_write()
    except OSError:
        return


def _collect(channel: paramiko.Channel, deadline: float | None, target: SshTarget) -> tuple[bytes, bytes]:
    """Read stdout and stderr until EOF and exit status, in this thread (channel.fileno() signals either)."""
    out: list[bytes] = []
    err: list[bytes] = []
    while True:
        while channel.recv_ready():
            out.append(channel.recv(_CHUNK))
        while channel.recv_stderr_ready():
            err.append(channel.recv_stderr(_CHUNK))
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            raise SshError(f"command on VM {target.label} did not finish in time; it was cut off")
        if channel.exit_status_ready() and (channel.eof_received or channel.closed):
            if not channel.recv_ready() and not channel.recv_stderr_ready():
                return b"".join(out), b"".join(err)
            continue
        if channel.eof_received or channel.closed:
            channel.status_event.wait(remaining)  # the pipe stays readable after EOF: wait for the status instead
        else:
            select.select([channel], [], [], remaining)


def session(target: SshTarget, *, connect_timeout: float = CONNECT_TIMEOUT) -> Session:
    """Connect once (host key pinned) and keep the connection: `with session(t) as s: s.exec(["true"])`."""
    return Session(target, _connect(target, connect_timeout))


def session_when_listening(
    target: SshTarget,
    *,
    console: Path,
    timeout: float,
    alive: Callable[[], bool],
    listening: bytes = b"lkctl-init: sshd listening",
    init_started: bytes = b"lkctl-init:",
    init_ready: bytes = b"lkctl-init: ready",
    init_wait: float = 5.0,
) -> Session:
    """Wait for the guest to print `listening` on its console, then make the one handshake and keep it.

    No handshake is attempted while the guest boots (each one costs the guest a key exchange, and under TCG that
    slows the boot it is waiting for). Guests that never print the marker (an init other than lkctl's, or an
    image whose sshd is not on port 22 when lkctl's init gave up) are probed with handshakes and backoff: when no
    `init_started` line appeared within `init_wait` seconds, or `init_ready` appeared 3 s ago without `listening`.
    """
    start = time.monotonic()
    deadline = start + timeout
    prewarm()  # while the guest boots, not once its sshd listens
    offset, tail = 0, b""
    seen_init = seen_ready_at = None
    next_probe, delay = 0.0, 0.2
    # A probe waits for the server's first line briefly, and longer each time. Under QEMU user networking the host
    # side of the forward accepts at once, and while the guest's network is not up slirp holds the connection,
    # resending its SYN with backoff (1, 2, 4 s...): a probe waiting the full timeout kept the holder from seeing
    # the "sshd listening" line, and the one handshake then waited for slirp's next resend (up to seconds after
    # sshd listened; a TCG kernel alone takes more than the 5 s after which probing starts). A guest whose sshd
    # listens sends its first line at once, even under TCG.
    probe_banner = 1.0
    last = "the guest did not say that its sshd listens"
    while True:
        if not alive():
            raise SshError(f"VM {target.label} stopped before SSH was ready (last error: {last})")
        now = time.monotonic()
        try:
            with open(console, "rb") as f:
                f.seek(offset)
                new = f.read()
        except FileNotFoundError:
            new = b""
        offset += len(new)
        window, tail = tail + new, (tail + new)[-256:]
        if seen_init is None and init_started in window:
            seen_init = now
        if seen_ready_at is None and init_ready in window:
            seen_ready_at = now
        marker = listening in window
        no_init = seen_init is None and now - start > init_wait
        probing = no_init or (seen_ready_at is not None and now - seen_ready_at > 3)
        if marker or (probing and now >= next_probe):
            attempts = 20 if marker else 1
            for _ in range(attempts):
                remaining = deadline - time.monotonic()
                limit = min(CONNECT_TIMEOUT, max(remaining, 0.1))
                try:
                    banner = None if marker else min(limit, probe_banner)
                    return Session(target, _connect(target, limit, banner_timeout=banner))
                except _NotYet as e:
                    last = e.message
                if not marker:  # at most 4 s: a probe slirp holds must not hide the marker long either
                    probe_banner = min(probe_banner * 1.6, 4.0)
                if time.monotonic() >= deadline:
                    break
                if marker:
                    time.sleep(0.05)  # listening, but the accept raced the marker: try again soon
            next_probe, delay = time.monotonic() + delay, min(delay * 1.6, 2.0)
        if time.monotonic() >= deadline:
            raise SshError(f"gave up waiting for SSH on {target.describe()} after {timeout:g} s: {last}")
        time.sleep(0.02)


def prewarm() -> None:
    """Import what the handshake needs (paramiko, its curve25519 kex and ed25519 code: ~0.4 s of CPU here)."""
    import paramiko.ed25519key  # noqa: F401
    import paramiko.kex_curve25519  # noqa: F401

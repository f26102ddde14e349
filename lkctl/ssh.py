"""SSH to a guest: per-VM keys made before boot, a pinned host key, byte-exact remote commands.

This is the only module that imports paramiko/fabric/cryptography, and it does so inside functions so that
`import lkctl.ssh` (and so `invoke --list` in a user's repo) stays cheap.

Trust model: lkctl generates the guest's host key on the host before the VM boots and writes a known_hosts line
for it. A connection is only made when the server proves it holds that key; there is no trust on first use and
no ~/.ssh/config, agent or default identity can leak into these loopback connections.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import posixpath
import re
import shlex
import sys
import tarfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol

from lkctl.errors import ConfigError, SshError, StateError
from lkctl.fsutil import atomic_write, file_lock, private_dir

if TYPE_CHECKING:
    import paramiko

__all__ = [
    "CONNECT_TIMEOUT",
    "ByteSink",
    "SshTarget",
    "VmKeys",
    "copy_from",
    "copy_to",
    "exec_command",
    "fabric_connection",
    "generate_keys",
    "known_hosts_line",
    "remote_command",
    "wait_ready",
    "write_known_hosts",
]

CONNECT_TIMEOUT = 10.0
"""Seconds one connection attempt (TCP + banner + key exchange + auth) may take."""

_CHUNK = 64 * 1024
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


# --- keys ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VmKeys:
    """The key files of one VM: the client identity lkctl logs in with, and the guest's own host key."""

    client_key: Path
    client_pub: Path
    host_key: Path
    host_pub: Path


def generate_keys(directory: Path) -> VmKeys:
    """Make (or keep) a VM's ed25519 client and host keys in OpenSSH format; private files are 0600.

    Idempotent: a private key that exists is kept and its `.pub` is re-derived from it, so a VM that is restarted
    keeps the identity its known_hosts line pins.
    """
    private_dir(directory)
    keys = VmKeys(
        client_key=directory / "id_ed25519",
        client_pub=directory / "id_ed25519.pub",
        host_key=directory / "ssh_host_ed25519_key",
        host_pub=directory / "ssh_host_ed25519_key.pub",
    )
    with file_lock(directory / ".ssh-keys.lock"):
        _ensure_key(keys.client_key, keys.client_pub, f"lkctl-client@{directory.name}")
        _ensure_key(keys.host_key, keys.host_pub, f"lkctl-host@{directory.name}")
    return keys


def _ensure_key(private: Path, public: Path, comment: str) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    if private.exists():
        try:
            key = serialization.load_ssh_private_key(private.read_bytes(), password=None)
        except (ValueError, TypeError, OSError) as e:
            raise StateError(f"cannot read SSH key {private}: {e}; delete it to make a new one") from e
        if not isinstance(key, Ed25519PrivateKey):
            raise StateError(f"SSH key {private} is not an ed25519 key; delete it to make a new one")
        if private.stat().st_mode & 0o077:
            private.chmod(0o600)
    else:
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
        )
        atomic_write(private, pem, 0o600)
    pub = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    line = pub + b" " + comment.encode() + b"\n"
    if not public.exists() or public.read_bytes().split()[:2] != line.split()[:2]:
        atomic_write(public, line, 0o644)


def known_hosts_line(host: str, port: int, host_pub: Path) -> str:
    """The known_hosts line pinning `host_pub` for host:port (`[host]:port` unless port is 22, as OpenSSH does)."""
    if not host or any(c.isspace() or c in ",#[]" for c in host) or not 0 < port < 65536:
        raise ConfigError(f"cannot pin a host key for {host!r} port {port}")
    try:
        fields = host_pub.read_text().split()
    except (OSError, UnicodeDecodeError) as e:
        raise StateError(f"cannot read host public key {host_pub}: {e}") from e
    if len(fields) < 2 or not re.fullmatch(r"(ssh|ecdsa|sk)-[A-Za-z0-9@.-]+", fields[0]):
        raise StateError(f"{host_pub} is not an OpenSSH public key")
    pattern = host if port == 22 else f"[{host}]:{port}"
    return f"{pattern} {fields[0]} {fields[1]}"


def write_known_hosts(path: Path, host: str, port: int, host_pub: Path) -> None:
    """Write a known_hosts file (0600) holding exactly the pinned line for host:port."""
    atomic_write(path, known_hosts_line(host, port, host_pub) + "\n", 0o600)


# --- connecting ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SshTarget:
    """Everything needed to reach one guest: address, login, identity and the pinned known_hosts file."""

    host: str
    port: int
    user: str
    client_key: Path
    known_hosts: Path
    label: str  # the VM's name, for messages

    def describe(self) -> str:
        """`VM t1 at 127.0.0.1:2222`, the subject of every message about this connection."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"VM {self.label} at {host}:{self.port}"


class _NotYet(SshError):
    """A failure that may go away once the guest has finished booting (refused, reset, auth while booting)."""


def _pinned_policy(target: SshTarget) -> paramiko.MissingHostKeyPolicy:
    import paramiko

    class Pinned(paramiko.MissingHostKeyPolicy):
        def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
            raise SshError(
                f"no pinned host key for {target.describe()} in {target.known_hosts}; refusing to connect "
                "(lkctl never trusts a host key on first use)"
            )

    return Pinned()


@contextlib.contextmanager
def _translated_errors(target: SshTarget, timeout: float) -> Iterator[None]:
    """Turn paramiko/socket failures during connect into one-line SshErrors (transient ones as _NotYet)."""
    import paramiko
    from paramiko.ssh_exception import NoValidConnectionsError

    where = target.describe()
    try:
        yield
    except SshError:
        raise
    except paramiko.BadHostKeyException as e:
        raise SshError(
            f"host key of {where} does not match the key lkctl pinned for it; refusing to connect "
            "(someone else may be listening on that port)"
        ) from e
    except paramiko.AuthenticationException as e:
        raise _NotYet(f"{where} rejected the client key {target.client_key} for user {target.user}") from e
    except NoValidConnectionsError as e:
        raise _NotYet(f"cannot connect to {where}: connection refused (is the VM running?)") from e
    except TimeoutError as e:
        raise _NotYet(f"cannot connect to {where}: no answer within {timeout:g} s") from e
    except (EOFError, ConnectionResetError, ConnectionAbortedError, BrokenPipeError) as e:
        raise _NotYet(f"{where} closed the connection before SSH was ready (its sshd may still be starting)") from e
    except paramiko.SSHException as e:
        # Banner and key-exchange failures: what QEMU's forward gives while the guest's sshd is not up yet.
        detail = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise _NotYet(f"SSH handshake with {where} failed: {detail}") from e
    except OSError as e:
        raise _NotYet(f"cannot connect to {where}: {e.strerror or e}") from e


def _load_pins(client: paramiko.SSHClient, target: SshTarget) -> None:
    try:
        client.load_host_keys(os.fspath(target.known_hosts))
    except OSError as e:
        raise SshError(f"cannot read the pinned host key of VM {target.label}: {e.strerror}: {e.filename}") from e
    client.set_missing_host_key_policy(_pinned_policy(target))


def _load_client_key(target: SshTarget) -> paramiko.PKey:
    import paramiko

    try:
        return paramiko.PKey.from_path(target.client_key)
    except (OSError, paramiko.SSHException, ValueError) as e:
        raise SshError(f"cannot read the client key of VM {target.label}: {target.client_key}: {e}") from e


def _session(client: paramiko.SSHClient, timeout: float) -> paramiko.Channel:
    transport = client.get_transport()
    if transport is None:  # connect() returned, so this is paramiko breaking its own contract
        raise SshError("SSH connection closed unexpectedly")
    return transport.open_session(timeout=timeout)


def _quiet_paramiko() -> None:
    # paramiko's transport thread logs every failed banner read at ERROR, with a traceback; while a guest boots
    # those are expected and we report the outcome ourselves. Without a handler, Python's last-resort handler
    # would print them to the user's terminal.
    log = logging.getLogger("paramiko")
    if not log.handlers:
        log.addHandler(logging.NullHandler())
        log.propagate = False


def _connect(target: SshTarget, timeout: float) -> paramiko.SSHClient:
    """An authenticated client for `target`, or an SshError saying in one line why not."""
    import paramiko

    _quiet_paramiko()
    pkey = _load_client_key(target)
    client = paramiko.SSHClient()
    try:
        _load_pins(client, target)
        with _translated_errors(target, timeout):
            client.connect(
                target.host,
                port=target.port,
                username=target.user,
                pkey=pkey,
                look_for_keys=False,
                allow_agent=False,
                timeout=timeout,
                banner_timeout=timeout,
                auth_timeout=timeout,
                channel_timeout=timeout,
            )
    except BaseException:
        client.close()
        raise
    return client


@contextlib.contextmanager
def fabric_connection(target: SshTarget, *, connect_timeout: float = CONNECT_TIMEOUT) -> Iterator[Any]:
    """An open `fabric.Connection` to the guest with the host key pinned, for code that wants fabric's API.

    Fabric hard-codes AutoAddPolicy and reads ~/.ssh/config; both are overridden before the first open().
    Remember that the guest has no sftp subsystem (`put`/`get` fail): use copy_to/copy_from instead.
    """
    import fabric
    import paramiko

    config = fabric.Config(ssh_config=paramiko.SSHConfig(), overrides={"run": {"in_stream": False}})
    cxn = fabric.Connection(
        target.host,
        port=target.port,
        user=target.user,
        config=config,
        gateway=False,
        forward_agent=False,
        connect_timeout=connect_timeout,
        connect_kwargs={
            "pkey": _load_client_key(target),
            "look_for_keys": False,
            "allow_agent": False,
            "banner_timeout": connect_timeout,
            "auth_timeout": connect_timeout,
        },
    )
    try:
        _load_pins(cxn.client, target)
        with _translated_errors(target, connect_timeout):
            cxn.open()
        yield cxn
    finally:
        cxn.close()


def wait_ready(
    target: SshTarget,
    *,
    timeout: float,
    alive: Callable[[], bool],
    on_tick: Callable[[], None] | None = None,
) -> None:
    """Wait until the guest's sshd accepts our key and runs `true`, retrying with backoff while it boots.

    QEMU's user-mode forward accepts TCP before anything listens in the guest, so a TCP connect proves nothing.
    A host key that does not match the pin is never retried. `alive()` is asked between attempts so a VM that
    died during boot is reported at once instead of after the whole timeout.
    """
    deadline = time.monotonic() + timeout
    delay = 0.1
    last = "no attempt was made"
    while True:
        if not alive():
            raise SshError(f"VM {target.label} stopped before SSH was ready (last error: {last})")
        if on_tick is not None:
            on_tick()
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise SshError(f"gave up waiting for SSH on {target.describe()} after {timeout:g} s: {last}")
        attempt = min(CONNECT_TIMEOUT, max(remaining, 0.1))
        try:
            client = _connect(target, attempt)
            try:
                with _translated_errors(target, attempt):  # the session may still drop while the guest boots
                    channel = _session(client, attempt)
                    channel.exec_command("true")
                    if not channel.status_event.wait(attempt):
                        raise _NotYet(f"{target.describe()} did not run `true` within {attempt:g} s")
                    if channel.recv_exit_status() == 0:
                        return
                last = "`true` failed on the guest"
            finally:
                client.close()
        except _NotYet as e:
            last = e.message
        time.sleep(max(0.0, min(delay, deadline - time.monotonic())))
        delay = min(delay * 1.6, 2.0)


# --- running commands ----------------------------------------------------------------------------------------


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
) -> int:
    """Run argv (or a shell `command`) on the guest and return its exit status unchanged.

    Output is copied byte for byte to `stdout`/`stderr` (default: this process's) as it arrives; `stdin`, when
    given, is streamed until EOF, otherwise the command sees EOF at once. A command killed by a signal gives
    128+N; a session that ends without any status gives 255, like OpenSSH. With `pty=True` the guest merges
    stderr into stdout, and a terminal on `stdin` is put in raw mode for the duration.
    """
    line = remote_command(argv, command=command, env=env, workdir=workdir)
    out = stdout if stdout is not None else sys.stdout.buffer
    err = stderr if stderr is not None else sys.stderr.buffer
    deadline = None if timeout is None else time.monotonic() + timeout
    client = _connect(target, CONNECT_TIMEOUT if timeout is None else min(CONNECT_TIMEOUT, timeout))
    try:
        with _translated_errors(target, CONNECT_TIMEOUT):
            channel = _session(client, CONNECT_TIMEOUT)
            if pty:
                fd = _tty_fd(out)
                size = os.get_terminal_size(fd) if fd is not None else os.terminal_size((80, 24))
                channel.get_pty(term=os.environ.get("TERM", "vt100"), width=size.columns, height=size.lines)
            channel.exec_command(line)
        return _pump(channel, target, stdin, out, err, deadline, raw=pty and _tty_fd(stdin) is not None)
    finally:
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

    def copy_in(source: IO[bytes]) -> None:
        read = getattr(source, "read1", source.read)
        try:
            while data := read(_CHUNK):
                channel.sendall(data)
        except OSError:
            return  # the command exited (or the channel closed) before reading all of its input
        with contextlib.suppress(OSError):
            channel.shutdown_write()

    readers = [
        threading.Thread(target=copy_out, args=(channel.recv, out), daemon=True, name="lkctl-ssh-stdout"),
        threading.Thread(target=copy_out, args=(channel.recv_stderr, err), daemon=True, name="lkctl-ssh-stderr"),
    ]
    with _raw_terminal(stdin, raw):
        if stdin is None:
            channel.shutdown_write()
        else:
            # Daemon: a read from a terminal cannot be interrupted, and must not keep the process alive.
            threading.Thread(target=copy_in, args=(stdin,), daemon=True, name="lkctl-ssh-stdin").start()
        for t in readers:
            t.start()
        for t in readers:
            t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if t.is_alive():
                channel.close()
                raise SshError(f"command on VM {target.label} did not finish in time; it was cut off")
    if failures:
        raise failures[0]
    status = channel.recv_exit_status()
    return 255 if status < 0 else status


# --- copying -------------------------------------------------------------------------------------------------


def copy_to(target: SshTarget, local: Path, remote: str, *, timeout: float | None = None) -> None:
    """Copy a file or directory tree to `remote` on the guest (tar over the SSH channel; no sftp needed).

    `remote` names the copy; a trailing `/` copies into that directory instead. Files arrive owned by root.
    """
    if not local.exists() or not remote:
        raise ConfigError(f"cannot copy {local} to VM {target.label}:{remote!r}: no such file, or no destination")
    if remote.endswith("/"):  # into that directory, keeping the local name
        directory, name = remote.rstrip("/") or "/", local.name
    else:
        directory, name = posixpath.dirname(remote) or ".", posixpath.basename(remote)
    read_fd, write_fd = os.pipe()
    failures: list[BaseException] = []

    def as_root(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        return info

    def produce() -> None:
        try:
            with os.fdopen(write_fd, "wb") as pipe, tarfile.open(fileobj=pipe, mode="w|") as tar:
                tar.add(local, arcname=name, filter=as_root)
        except BrokenPipeError:
            pass  # the guest's tar quit early; its status says why
        except BaseException as e:
            failures.append(e)

    producer = threading.Thread(target=produce, daemon=True, name="lkctl-ssh-tar")
    producer.start()
    errors = io.BytesIO()
    with os.fdopen(read_fd, "rb") as source:
        status = exec_command(
            target,
            command=f"mkdir -p -- {shlex.quote(directory)} && tar -x -f - -C {shlex.quote(directory)}",
            stdin=source,
            stdout=errors,
            stderr=errors,
            timeout=timeout,
        )
    producer.join()
    if failures:
        raise failures[0]
    if status != 0:
        raise SshError(f"copying {local} to VM {target.label}:{remote} failed (status {status}){_last_line(errors)}")


def copy_from(target: SshTarget, remote: str, local: Path, *, timeout: float | None = None) -> None:
    """Copy a file or directory tree from the guest to `local` (tar over the SSH channel; no sftp needed).

    Entries are checked with tarfile's "data" filter, so the guest cannot write outside `local`.
    """
    path = remote.rstrip("/")
    directory, name = posixpath.dirname(path) or ".", posixpath.basename(path)
    if name in ("", ".", ".."):
        raise ConfigError(f"cannot copy {remote!r} from VM {target.label}: name a file or directory")
    local.parent.mkdir(parents=True, exist_ok=True)
    read_fd, write_fd = os.pipe()
    failures: list[BaseException] = []

    def rename(info: tarfile.TarInfo, dest: str) -> tarfile.TarInfo | None:
        first, _, rest = info.name.removeprefix("./").partition("/")
        if first != name:
            raise SshError(f"the guest's tar sent an unexpected entry {info.name!r}")
        renamed = info.replace(name=posixpath.join(local.name, rest) if rest else local.name, deep=False)
        return tarfile.data_filter(renamed, dest)

    def consume() -> None:
        with os.fdopen(read_fd, "rb") as pipe:
            try:
                with tarfile.open(fileobj=pipe, mode="r|") as tar:
                    for member in tar:
                        tar.extract(member, local.parent, filter=rename)
            except tarfile.ReadError as e:
                if "empty file" not in str(e):  # guest tar failed before writing anything: its status says why
                    failures.append(e)
            except BaseException as e:
                failures.append(e)
            while pipe.read(_CHUNK):  # after a refused entry, keep the guest's tar from blocking on a full pipe
                pass

    consumer = threading.Thread(target=consume, daemon=True, name="lkctl-ssh-untar")
    consumer.start()
    errors = io.BytesIO()
    with os.fdopen(write_fd, "wb") as sink:
        status = exec_command(
            target,
            command=f"tar -c -f - -C {shlex.quote(directory)} {shlex.quote('./' + name)}",
            stdout=sink,
            stderr=errors,
            timeout=timeout,
        )
    consumer.join()
    if status != 0:
        raise SshError(f"copying VM {target.label}:{remote} to {local} failed (status {status}){_last_line(errors)}")
    if failures:
        e = failures[0]
        if isinstance(e, SshError):
            raise e
        raise SshError(f"copying VM {target.label}:{remote} to {local} failed: {e}") from e


def _last_line(captured: io.BytesIO) -> str:
    """The last thing a helper command said, for an error message."""
    lines = captured.getvalue().decode(errors="replace").strip().splitlines()
    return f": {lines[-1]}" if lines else ""

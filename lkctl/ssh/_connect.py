"""Connecting with the pinned host key: one-line errors, readiness waiting, a fabric Connection."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lkctl.errors import SshError

if TYPE_CHECKING:
    import paramiko


CONNECT_TIMEOUT = 10.0
"""Seconds one connection attempt (TCP + banner + key exchange + auth) may take."""


@dataclass(frozen=True)
class JumpHost:
    """An SSH server through which a guest is reached (a remote hypervisor host whose loopback has the forward).

    Its host key must already be in `known_hosts` (the user's, or an explicit pin): it is never accepted on first
    use. `key_file` None means the user's default keys (~/.ssh/id_*); the agent is never used or forwarded.
    """

    host: str
    port: int
    user: str
    key_file: Path | None
    known_hosts: Path

    def describe(self) -> str:
        return f"hypervisor host {self.user}@{self.host}:{self.port}"


@dataclass(frozen=True)
class SshTarget:
    """Everything needed to reach one guest: address, login, identity and the pinned known_hosts file."""

    host: str
    port: int
    user: str
    client_key: Path
    known_hosts: Path
    label: str  # the VM's name, for messages
    jump: JumpHost | None = None  # reach host:port from this SSH server (its loopback), not from here

    def describe(self) -> str:
        """`VM t1 at 127.0.0.1:2222`, the subject of every message about this connection."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"VM {self.label} at {host}:{self.port}"


def vm_target(directory: Path, port: int, label: str, *, jump: JumpHost | None = None) -> SshTarget:
    """The target of a VM whose keys `generate_keys` wrote into `directory`: root at its forwarded port on the
    loopback of this host, or of `jump`'s host when it runs there."""
    return SshTarget(
        host="127.0.0.1",
        port=port,
        user="root",
        client_key=directory / "id_ed25519",
        known_hosts=directory / "known_hosts",
        label=label,
        jump=jump,
    )


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


def _connect_jump(jump: JumpHost, timeout: float) -> paramiko.SSHClient:
    """An authenticated client for the jump host; its host key must be known (never trusted on first use)."""
    import paramiko

    client = paramiko.SSHClient()
    try:
        try:
            client.load_host_keys(os.fspath(jump.known_hosts))
        except OSError as e:
            raise SshError(f"no known_hosts for {jump.describe()}: {e.strerror}: {jump.known_hosts}") from None

        class Refuse(paramiko.MissingHostKeyPolicy):
            def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
                raise SshError(
                    f"{jump.describe()} is not in {jump.known_hosts}; add its host key there (ssh-keyscan, checked) "
                    "or pin it with known_hosts in lkctl.hosts; lkctl never trusts a host key on first use"
                )

        client.set_missing_host_key_policy(Refuse())
        client.connect(
            jump.host, port=jump.port, username=jump.user, key_filename=os.fspath(jump.key_file) if jump.key_file
            else None, look_for_keys=jump.key_file is None, allow_agent=False, timeout=timeout,
            banner_timeout=timeout, auth_timeout=timeout, channel_timeout=timeout,
        )  # fmt: skip
    except SshError:
        client.close()
        raise
    except paramiko.BadHostKeyException:
        client.close()
        raise SshError(
            f"host key of {jump.describe()} does not match {jump.known_hosts}; refusing to connect"
        ) from None
    except (paramiko.SSHException, OSError) as e:
        client.close()
        raise SshError(f"cannot reach {jump.describe()}: {str(e).splitlines()[0] if str(e) else e!r}") from None
    return client


def _connect(target: SshTarget, timeout: float, *, banner_timeout: float | None = None) -> paramiko.SSHClient:
    """An authenticated client for `target`, or an SshError saying in one line why not. `banner_timeout` (default
    `timeout`) bounds the wait for the server's first line alone."""
    import paramiko

    _quiet_paramiko()
    pkey = _load_client_key(target)
    jump = _connect_jump(target.jump, timeout) if target.jump is not None else None

    class Client(paramiko.SSHClient):
        def close(self) -> None:  # the tunnel's own connection goes with it, once this one has shut down
            transport = self.get_transport()
            super().close()
            if jump is not None:
                if transport is not None and transport.is_alive():
                    transport.join(5)
                jump.close()

    client = Client()
    try:
        _load_pins(client, target)
        with _translated_errors(target, timeout):
            sock = None
            if jump is not None:
                transport = jump.get_transport()
                if transport is None:
                    raise SshError(f"the connection to {target.jump.describe() if target.jump else ''} closed")
                try:
                    sock = transport.open_channel(
                        "direct-tcpip", (target.host, target.port), ("127.0.0.1", 0), timeout=timeout
                    )
                except paramiko.ChannelException as e:
                    raise _NotYet(f"cannot connect to {target.describe()} through the jump host: {e}") from e
            client.connect(
                target.host,
                port=target.port,
                username=target.user,
                pkey=pkey,
                look_for_keys=False,
                allow_agent=False,
                timeout=timeout,
                banner_timeout=timeout if banner_timeout is None else banner_timeout,
                auth_timeout=timeout,
                channel_timeout=timeout,
                sock=sock,
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

    if target.jump is not None:
        raise SshError(f"{target.describe()} is reached through {target.jump.describe()}: use exec_command/copy_to")
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

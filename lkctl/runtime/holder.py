"""The per-VM connection holder: one process per running VM that keeps its SSH connection open.

`vm.run -d` starts it (`python -m lkctl.runtime.holderd VMDIR`); it waits for the guest's "sshd listening"
console marker, makes the one SSH handshake (host key pinned) and listens on `holder.sock`, a 0600 unix socket in
the VM's 0700 state dir. `vm.exec` then sends argv/env/workdir and streams stdin/stdout/stderr over that socket
and gets the exit status back, with no SSH handshake and no paramiko import in the CLI. It is recorded in the VM's
`helpers` (pid, start time, boot id, command line), so it is stopped with the VM, and a client only talks to
the process whose pid (SO_PEERCRED) and start time match that record. Anything unusual (no socket, other peer,
old VM) makes the caller fall back to a direct SSH connection, which pins the host key itself.

This module stays import-light (no paramiko, no invoke): it is on the CLI's fast path. Wire format: frames of
1 type byte + 4-byte big-endian length + payload. Client → holder: `R` (JSON request), `I` (stdin bytes), `E`
(stdin EOF). Holder → client: `O`/`X` (stdout/stderr bytes), `S` (exit status, 4-byte signed), `F` (failure).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import struct
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

from lkctl.errors import SshError
from lkctl.fsutil import connect_unix
from lkctl.runtime.state import VmRecord, process_identity

__all__ = [
    "HOLDER_SOCKET",
    "HolderUnavailable",
    "exec_via_holder",
    "read_frame",
    "request_json",
    "send_frame",
    "socket_path",
]

HOLDER_SOCKET = "holder.sock"
_HEADER = struct.Struct(">cI")
_CHUNK = 256 * 1024


class HolderUnavailable(Exception):
    """No trustworthy holder answers for this VM; use a direct SSH connection instead."""


def socket_path(vm_dir: Path) -> Path:
    return vm_dir / HOLDER_SOCKET


def send_frame(sock: socket.socket, kind: bytes, payload: bytes = b"") -> None:
    sock.sendall(_HEADER.pack(kind, len(payload)) + payload)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    chunks: list[bytes] = []
    while n:
        data = sock.recv(min(n, _CHUNK))
        if not data:
            raise EOFError
        chunks.append(data)
        n -= len(data)
    return b"".join(chunks)


def read_frame(sock: socket.socket) -> tuple[bytes, bytes]:
    """(type, payload) of the next frame; EOFError when the peer closed the socket between frames."""
    kind, length = _HEADER.unpack(_recv_exact(sock, _HEADER.size))
    return kind, _recv_exact(sock, length) if length else b""


def request_json(argv: Sequence[str], env: Mapping[str, str] | None, workdir: str | None, stdin: bool) -> bytes:
    return json.dumps({"argv": list(argv), "env": dict(env or {}), "workdir": workdir, "stdin": stdin}).encode()


def _peer_is_holder(sock: socket.socket, record: VmRecord) -> bool:
    """The process at the other end is the holder recorded for this VM (pid and start time), not a stranger."""
    peercred = getattr(socket, "SO_PEERCRED", None)
    if peercred is None:
        return False
    pid, uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, peercred, struct.calcsize("3i")))
    if uid != os.geteuid():
        return False
    ident = process_identity(pid)
    return ident is not None and any(list(h[:2]) == [str(pid), ident.start] for h in record.helpers)


def _connect(record: VmRecord) -> socket.socket:
    path = socket_path(record.dir)
    try:
        sock = connect_unix(path)
    except OSError as e:
        raise HolderUnavailable(str(e)) from None
    if not _peer_is_holder(sock, record):
        sock.close()
        raise HolderUnavailable(f"{path} is not served by VM {record.name}'s recorded holder")
    return sock


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _pump_stdin(sock: socket.socket, fd: int) -> None:
    try:
        while data := os.read(fd, _CHUNK):
            send_frame(sock, b"I", data)
        send_frame(sock, b"E")
    except OSError:
        return  # the command finished (socket closed) before reading all of its input


def exec_via_holder(
    record: VmRecord,
    argv: Sequence[str],
    *,
    stdin_fd: int | None,
    stdout_fd: int = 1,
    stderr_fd: int = 2,
    env: Mapping[str, str] | None = None,
    workdir: str | None = None,
) -> int:
    """Run argv in the VM through its holder, streaming file descriptors; returns the remote exit status.

    Raises HolderUnavailable before anything ran (the caller may use SSH directly), SshError after.
    """
    sock = _connect(record)
    with contextlib.closing(sock):
        try:
            send_frame(sock, b"R", request_json(argv, env, workdir, stdin_fd is not None))
        except OSError as e:
            raise HolderUnavailable(str(e)) from None
        if stdin_fd is not None:
            threading.Thread(target=_pump_stdin, args=(sock, stdin_fd), daemon=True, name="lkctl-stdin").start()
        started = False
        while True:
            try:
                kind, payload = read_frame(sock)
            except (EOFError, OSError):
                if not started:
                    raise HolderUnavailable("the holder closed the connection") from None
                raise SshError(f"lost the connection to VM {record.name}'s holder while the command ran") from None
            if kind == b"O":
                started = True
                _write_all(stdout_fd, payload)
            elif kind == b"X":
                started = True
                _write_all(stderr_fd, payload)
            elif kind == b"S":
                return int(struct.unpack(">i", payload)[0])
            elif kind == b"F":
                raise SshError(payload.decode(errors="replace"))
            elif kind == b"U":
                raise HolderUnavailable(payload.decode(errors="replace"))
            else:
                raise SshError(f"VM {record.name}'s holder sent an unknown frame {kind!r}")

"""A response body onto a file descriptor as fast as the machine allows: the one place bytes go from an HTTP
connection to disk (used by lkctl.http.client's download).

A plain Content-Length body on a real socket is moved by the kernel, socket → pipe → file with `splice(2)`: no
copy through Python, so the downloading thread mostly waits on the network while another thread hashes the file
(lkctl.http._partial.FollowHash). Anything else (chunked bodies, injected test transports, a platform without
splice) is written chunk by chunk as httpx yields it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import socket
from collections.abc import Iterator

import httpx

__all__ = ["write_body"]

_PIPE_SIZES = (1 << 20, 256 << 10)  # bytes per splice (and per progress report), the first the kernel allows
_MIN_STEP = 256 << 10
_READ_SIZE = 256 << 10  # per recv when splice is not available


def write_body(r: httpx.Response, fd: int, timeout: float) -> Iterator[int]:
    """Write `r`'s body to `fd` at its current offset as it arrives; yields how many bytes each step wrote.

    A plain Content-Length body is taken straight from the socket after the first chunk (what h11 had buffered
    with the headers); the connection is then not reusable (h11 never saw the end of the body) and httpx closes it.
    Raises httpx.ReadTimeout after `timeout` seconds without data, httpx.ReadError / RemoteProtocolError when the
    connection fails or ends early; a failing write (a full disk) raises its OSError."""
    raw = r.iter_raw()  # as received: a chunker would lose its buffer on a drop
    length = r.headers.get("content-length", "")
    sock = _plain_socket(r)
    if sock is None or not length.isdigit() or "chunked" in r.headers.get("transfer-encoding", "").lower():
        for chunk in raw:
            _write_all(fd, chunk)
            yield len(chunk)
        return
    left = int(length)
    first = next(raw, b"")
    if first:
        _write_all(fd, first)
        left -= len(first)
        yield len(first)
    if left <= 0:
        return
    yield from _from_socket(sock, fd, left, timeout)


def _plain_socket(r: httpx.Response) -> socket.socket | None:
    """The connection's socket when httpcore exposes it (a real network connection, not an injected transport)."""
    stream = r.extensions.get("network_stream")
    get = getattr(stream, "get_extra_info", None)
    sock = get("socket") if get is not None else None
    return sock if isinstance(sock, socket.socket) and sock.type == socket.SOCK_STREAM else None


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _from_socket(sock: socket.socket, fd: int, left: int, timeout: float) -> Iterator[int]:
    sock.setblocking(False)  # waits happen in poll, with the read timeout
    poller = select.poll()
    poller.register(sock, select.POLLIN)

    def wait() -> None:
        if not poller.poll(timeout * 1000):
            raise httpx.ReadTimeout(f"no data for {timeout:g} s")

    pipe = _pipe() if hasattr(os, "splice") else None
    step = max(_MIN_STEP, left // 16)  # a small body still reports its progress in several steps
    try:
        while pipe is not None and left > 0:
            rp, wp, size = pipe
            try:
                n = os.splice(sock.fileno(), wp, min(left, size, step), flags=os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK)
            except BlockingIOError:
                wait()
                continue
            except OSError as e:
                if e.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                    raise httpx.ReadError(str(e)) from e
                _close_pipe(pipe)
                pipe = None  # this socket cannot be spliced: copy through Python below
                break
            if n == 0:
                raise httpx.RemoteProtocolError(f"peer closed the connection with {left} bytes of the body unsent")
            _drain(rp, fd, n)
            left -= n
            yield n
        buf = memoryview(bytearray(_READ_SIZE))
        while left > 0:
            try:
                n = sock.recv_into(buf, min(left, len(buf)))
            except BlockingIOError:
                wait()
                continue
            except OSError as e:
                raise httpx.ReadError(str(e)) from e
            if n == 0:
                raise httpx.RemoteProtocolError(f"peer closed the connection with {left} bytes of the body unsent")
            _write_all(fd, buf[:n])
            left -= n
            yield n
    finally:
        if pipe is not None:
            _close_pipe(pipe)


def _pipe() -> tuple[int, int, int] | None:
    try:
        rp, wp = os.pipe()
    except OSError:
        return None
    size = 64 << 10
    with contextlib.suppress(OSError, AttributeError):
        import fcntl

        for want in _PIPE_SIZES:  # 1 MiB (Linux's default pipe-max-size for users): a quarter of the splices
            with contextlib.suppress(OSError):
                fcntl.fcntl(wp, fcntl.F_SETPIPE_SZ, want)
                break
        size = fcntl.fcntl(wp, fcntl.F_GETPIPE_SZ)
    return rp, wp, size


def _close_pipe(pipe: tuple[int, int, int]) -> None:
    os.close(pipe[0])
    os.close(pipe[1])


def _drain(rp: int, fd: int, n: int) -> None:
    """Move `n` bytes from the pipe to the file: splice, or read + write where the file system cannot splice."""
    while n > 0:
        try:
            moved = os.splice(rp, fd, n, flags=os.SPLICE_F_MOVE)
        except OSError as e:
            if e.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                raise
            data = os.read(rp, n)
            _write_all(fd, data)
            moved = len(data)
        n -= moved

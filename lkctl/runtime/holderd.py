"""The holder process of one VM: `python -m lkctl.runtime.holderd VMDIR TIMEOUT [--after-go]` (started by
lkctl.runtime.readiness).

With `--after-go` it is started before its VM (a warm start, whose guest answers within a second or two of
QEMU's start): it daemonizes and imports what the handshake needs while QEMU restores the guest, then waits for
the line `go` on stdin (the VM's record then names its QEMU); end-of-file instead (the start failed, or the
process that started it died) ends it.

It makes the VM's one SSH handshake as soon as the guest says its sshd listens, writes `ready` (or `error: WHY`)
as one line on stdout for the process that started it, then serves `holder.sock` (see lkctl.runtime.holder for
the wire format) until QEMU is gone or it gets SIGTERM. Each request is one channel on the held connection.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from lkctl.errors import LkError, SshError
from lkctl.fsutil import unix_address
from lkctl.runtime import state
from lkctl.runtime.holder import read_frame, send_frame, socket_path
from lkctl.runtime.state import VmRecord

if TYPE_CHECKING:
    import paramiko

    from lkctl.ssh import Session

__all__ = ["main", "serve"]

_CHUNK = 256 * 1024


def _handle(conn: socket.socket, sess: Session) -> None:
    from lkctl import ssh

    with contextlib.closing(conn):
        try:
            kind, payload = read_frame(conn)
            req = json.loads(payload) if kind == b"R" else None
        except (EOFError, OSError, ValueError):
            return
        if not isinstance(req, dict):
            return
        try:
            line = ssh.remote_command(req.get("argv") or None, env=req.get("env") or None, workdir=req.get("workdir"))
            channel = sess.channel(line)
        except LkError as e:
            with contextlib.suppress(OSError):
                send_frame(conn, b"U", e.message.encode())
            return
        try:
            _relay(conn, channel, bool(req.get("stdin")))
        finally:
            sess.finish(channel)


def _relay(conn: socket.socket, channel: paramiko.Channel, has_stdin: bool) -> None:
    lock = threading.Lock()
    finished = threading.Event()

    def copy_out(recv: Callable[[int], bytes], kind: bytes) -> None:
        try:
            while data := recv(_CHUNK):
                with lock:
                    send_frame(conn, kind, data)
        except OSError:
            channel.close()  # the client went away: end the command's channel

    def copy_in() -> None:
        # stdin frames into the channel; the client closing its socket early (Ctrl-C) closes the channel
        try:
            while True:
                kind, data = read_frame(conn)
                if kind == b"I":
                    channel.sendall(data)
                elif kind == b"E":
                    channel.shutdown_write()
        except (EOFError, OSError):
            if not finished.is_set():
                channel.close()

    if not has_stdin:
        channel.shutdown_write()
    threading.Thread(target=copy_in, daemon=True, name="lkctl-holder-stdin").start()
    readers = [
        threading.Thread(target=copy_out, args=(channel.recv, b"O"), daemon=True),
        threading.Thread(target=copy_out, args=(channel.recv_stderr, b"X"), daemon=True),
    ]
    for t in readers:
        t.start()
    for t in readers:
        t.join()
    status = channel.recv_exit_status()
    finished.set()
    with contextlib.suppress(OSError), lock:
        send_frame(conn, b"S", struct.pack(">i", 255 if status < 0 else status))


def _listen(path: Path) -> socket.socket:
    path.unlink(missing_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        with unix_address(path) as address:
            listener.bind(address)
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    listener.listen(16)
    listener.settimeout(1.0)
    return listener


def serve(record: VmRecord, sess: Session, listener: socket.socket) -> None:
    """Answer requests until the VM's QEMU is gone (checked every second)."""
    while state.is_our_process(record):
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            continue
        conn.settimeout(None)
        threading.Thread(target=_handle, args=(conn, sess), daemon=True, name="lkctl-holder-exec").start()


def _init_wait(record: VmRecord) -> float:
    """Seconds without a line from lkctl's init before the holder takes the guest for one without it and probes.

    Under TCG a kernel takes 4-10 s to reach init on a 2-core machine (more under load). A probe sent before the
    guest's network is up is held by QEMU's slirp and reaches sshd only when it listens: a connection the guest
    forks for and serves next to the one handshake that matters (`Exit before auth` in the console), and a probe
    in flight keeps the holder from seeing `sshd listening`. A guest without lkctl's init takes longer than
    that to start its sshd under TCG anyway.
    """
    return 20.0 if record.accel == "tcg" else 5.0


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(0)


def main(argv: list[str] | None = None) -> int:
    from lkctl import ssh
    from lkctl.runtime.qemu import CONSOLE_LOG
    from lkctl.runtime.vm import ssh_target

    args = sys.argv[1:] if argv is None else argv
    after_go = "--after-go" in args[2:]
    vm_dir, timeout = Path(args[0]), float(args[1])
    if os.fork() > 0:  # daemonize: the starter reaps this parent at once and reads our pid from the pipe
        os._exit(0)
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    out = sys.stdout
    out.write(f"pid {os.getpid()}\n")
    out.flush()
    if after_go:
        ssh.prewarm()
        if sys.stdin.readline().strip() != "go":
            return 0  # the VM did not start (or its starter is gone): nothing to hold
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)  # the starter's pipe is not ours to keep
        os.close(devnull)
    try:
        record = state.load_record(vm_dir)
        if record is None:
            raise SshError(f"no VM record in {vm_dir}")
        sess = ssh.session_when_listening(
            ssh_target(record),
            console=vm_dir / CONSOLE_LOG,
            timeout=timeout,
            alive=lambda: state.is_our_process(record),
            init_wait=_init_wait(record),
        )
        path = socket_path(vm_dir)
        listener = _listen(path)
        bound = path.stat().st_ino
    except LkError as e:
        out.write(f"error: {e.message}\n")
        out.flush()
        return 1
    started = time.monotonic()
    print(f"connected to {record.name}'s sshd; serving {path}", file=sys.stderr, flush=True)
    out.write("ready\n")
    out.flush()
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)  # the starter reads one line; never block on (or die of) its closed pipe later
    os.close(devnull)
    try:
        serve(record, sess, listener)
    finally:
        with contextlib.suppress(OSError):
            if path.stat().st_ino == bound:  # not a socket a newer holder made
                path.unlink()
        listener.close()
        sess.close()
        print(f"holder for VM {record.name} ends after {time.monotonic() - started:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

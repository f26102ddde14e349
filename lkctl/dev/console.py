"""Attaching a terminal to a VM's serial console (QEMU's console socket), without SSH.

QEMU serves the console on `console.sock` in the VM's state dir and logs it to `console.log` at the same time,
so `vm.logs` keeps working whether or not someone is attached. One client at a time; Ctrl-] detaches.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import time
from collections.abc import Callable, Iterator
from typing import IO

from lkctl.dev.project import Project
from lkctl.errors import VmError
from lkctl.fsutil import connect_unix
from lkctl.runtime import state
from lkctl.runtime.qemu import CONSOLE_SOCKET
from lkctl.runtime.state import VmRecord

__all__ = ["DETACH_KEY", "attach_console", "attach_dev_console"]

DETACH_KEY = b"\x1d"  # Ctrl-], as telnet and virsh console
_QUIET_AFTER_EOF = 2.0  # seconds of console silence after stdin ends (a script piped in) before detaching


def _connect(record: VmRecord) -> socket.socket:
    path = record.dir / CONSOLE_SOCKET
    try:
        sock = connect_unix(path)
    except OSError as e:
        raise VmError(
            f"cannot attach to the console of VM {record.name} ({path}): {e.strerror or e}; "
            "VMs started before lkctl had console sockets need a restart"
        ) from None
    return sock


@contextlib.contextmanager
def _raw(stream: IO[bytes] | None) -> Iterator[bool]:
    """Raw mode on a terminal (keys go to the guest as typed, Ctrl-C included); no-op otherwise."""
    fd = stream.fileno() if stream is not None and hasattr(stream, "fileno") else -1
    if fd < 0 or not os.isatty(fd):
        yield False
        return
    import termios
    import tty

    saved = termios.tcgetattr(fd)
    tty.setraw(fd, termios.TCSANOW)
    try:
        yield True
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def attach_console(record: VmRecord, stdin: IO[bytes] | None, stdout: IO[bytes]) -> str:
    """Copy stdin to the VM's serial console and the console to stdout until Ctrl-] (or the VM stops).

    Returns why it ended: "detached" or "the VM stopped". Piped input that ends detaches once the console has
    been quiet for a moment, so `printf 'cmd\\n' | ... --console` prints what the command answered."""
    state.require_running(record, then="its console is gone")
    sock = _connect(record)
    in_fd = stdin.fileno() if stdin is not None else -1
    eof_at: float | None = None if in_fd >= 0 else time.monotonic()
    with contextlib.closing(sock), _raw(stdin):
        while True:
            watch = [sock] + ([in_fd] if eof_at is None else [])
            ready, _, _ = select.select(watch, [], [], 0.2)
            if sock in ready:
                data = sock.recv(65536)
                if not data:
                    return "the VM stopped"
                stdout.write(data)
                stdout.flush()
                if eof_at is not None:
                    eof_at = time.monotonic()
            if in_fd in ready:
                data = os.read(in_fd, 4096)
                if not data:
                    eof_at = time.monotonic()
                    continue
                head, key, _ = data.partition(DETACH_KEY)
                if head:
                    sock.sendall(head)
                if key:
                    return "detached"
            if eof_at is not None and time.monotonic() - eof_at > _QUIET_AFTER_EOF:
                return "detached"
            if not ready and not state.is_our_process(record):
                return "the VM stopped"


def attach_dev_console(
    project: Project, stdin: IO[bytes] | None, stdout: IO[bytes], *, say: Callable[[str], None] = lambda _: None
) -> str:
    """`dev.shell --console`: attach to the project's dev VM's serial console (running or not: its socket is
    QEMU's); returns why it ended. `say` hears the detach key first."""
    from lkctl.dev.environment import find_dev_vm

    record = find_dev_vm(project)
    if record is None:
        raise VmError(f"{project.root} has no dev VM (dev.boot makes one)")
    say(f"attached to the console of {record.name}; Ctrl-] detaches")
    return attach_console(record, stdin, stdout)

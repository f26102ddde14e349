"""A VM's serial console as the host sees it: tail, follow, and what the console says about a stalled boot."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from lkctl.runtime import state
from lkctl.runtime.hyperkit import CONSOLE_RING, console_file, read_console, read_console_ring
from lkctl.runtime.state import VmRecord
from lkctl.runtime.untrusted import printable

__all__ = [
    "PANIC_MARKERS",
    "READY_MARKER",
    "ConsoleView",
    "console_bytes",
    "console_markers",
    "console_tail",
    "diagnose_not_ready",
    "follow_console",
]

READY_MARKER = b"lkctl-init: ready"
PANIC_MARKERS = (b"Kernel panic", b"lkctl-init: fatal:")


def console_bytes(record: VmRecord) -> bytes:
    """Everything the VM's console has printed so far (QEMU's log or hyperkit's ring)."""
    return read_console(record.dir)


def console_markers(record: VmRecord, markers: tuple[bytes, ...], chunk: int = 1 << 20) -> set[bytes]:
    """Which of `markers` the console holds anywhere, read in chunks (never whole: the guest decides its size)."""
    path = console_file(record.dir)
    if path.name == CONSOLE_RING:
        ring = read_console_ring(path)
        return {m for m in markers if m in ring}
    found: set[bytes] = set()
    keep = max(map(len, markers), default=1) - 1  # a marker may straddle two chunks
    try:
        with open(path, "rb") as f:
            window = b""
            while len(found) < len(markers) and (data := f.read(chunk)):
                window = window[-keep:] + data if keep else data
                found |= {m for m in markers if m not in found and m in window}
    except FileNotFoundError:
        pass
    return found


class ConsoleView:
    """The console of a booting VM as progress reporting needs it: its first and its last `limit` bytes, read
    incrementally (a guest may print hundreds of MB while it boots; this is called five times a second). Bytes in
    between are skipped, so the two parts need not join up. A console that shrank (a restart) is read afresh."""

    def __init__(self, path: Path, limit: int = 64 << 10) -> None:
        self.path, self.limit = path, limit
        self.head = self.tail = b""
        self.end = 0  # where the tail's last read stopped

    def __call__(self) -> bytes:
        try:
            f = open(self.path, "rb")  # noqa: SIM115 (closed below; a missing file is the common early case)
        except FileNotFoundError:
            return b""
        with f:
            size = os.fstat(f.fileno()).st_size
            if size < self.end or size < len(self.head):
                self.head, self.tail, self.end = b"", b"", 0
            if len(self.head) < self.limit:
                f.seek(len(self.head))
                self.head += f.read(self.limit - len(self.head))
            start = max(self.limit, self.end, size - self.limit)
            if start > self.end:
                self.tail = b""  # nothing read yet there, or the middle was skipped
            f.seek(start)
            new = f.read(max(0, size - start))
            self.tail, self.end = (self.tail + new)[-self.limit :], start + len(new)
        return self.head + self.tail


def console_tail(record: VmRecord, lines: int = 20) -> str:
    """The console's last `lines` lines, as text for a terminal (no control characters but tabs)."""
    path = console_file(record.dir)
    if path.name == CONSOLE_RING:
        text = read_console_ring(path).decode(errors="replace").replace("\r", "")
        return printable("\n".join(text.splitlines()[-lines:]))
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16384))
            data = f.read()
    except FileNotFoundError:
        return ""
    text = data.decode(errors="replace").replace("\r", "")
    return printable("\n".join(text.splitlines()[-lines:]))


def diagnose_not_ready(record: VmRecord, why: str) -> str:
    """Which boot stage stalled, read from the console, with its last lines: the message of a readiness failure."""
    tail = console_tail(record)
    seen = console_markers(record, (b"Kernel panic", b"lkctl-init:", READY_MARKER))
    if not tail.strip() and not seen:
        reason = "the guest printed nothing on its console (no kernel output)"
    elif b"Kernel panic" in seen:
        reason = "the guest kernel panicked"
    elif b"lkctl-init:" not in seen:
        reason = "the kernel started but lkctl's init never ran (is the init image in the YAML?)"
    elif READY_MARKER not in seen:
        reason = "init started but did not finish starting services"
    else:
        reason = "init reported ready but sshd did not answer (is an sshd service in the YAML?)"
    msg = f"VM {record.name} did not become ready: {why}; {reason}."
    if tail:
        msg += f"\nlast console lines ({console_file(record.dir)}):\n{tail}"
    return printable(msg)  # `why` may quote the guest too (its SSH banner in the holder's error)


def follow_console(
    record: VmRecord, *, from_start: bool = True, alive: Callable[[], bool] | None = None, poll: float = 0.1
) -> Iterator[bytes]:
    """Yield console output as it arrives, until the VM is gone and everything has been read."""
    if record.libvirt:
        from lkctl.runtime.libvirt.vms import console_chunks

        yield from console_chunks(record, follow=alive is None)
        return
    is_alive = alive or (lambda: state.is_our_process(record))
    while not (path := console_file(record.dir)).exists():
        if not is_alive():
            return
        time.sleep(poll)
    if path.name == CONSOLE_RING:
        yield from _follow_ring(path, from_start=from_start, is_alive=is_alive, poll=poll)
        return
    with open(path, "rb") as f:
        if not from_start:
            f.seek(0, os.SEEK_END)
        while True:
            chunk = f.read(65536)
            if chunk:
                yield chunk
                continue
            if not is_alive():
                rest = f.read()
                if rest:
                    yield rest
                return
            time.sleep(poll)


def _follow_ring(path: Path, *, from_start: bool, is_alive: Callable[[], bool], poll: float) -> Iterator[bytes]:
    """follow_console over hyperkit's console ring: yields what was appended since the last look. Once the ring has
    wrapped (64 KiB of output), the end of the output cannot be found any more, and following stops there."""
    seen = b"" if from_start else read_console_ring(path)
    while True:
        alive = is_alive()
        now = read_console_ring(path)
        if now.startswith(seen) and len(now) > len(seen):
            yield now[len(seen) :]
            seen = now
        elif not now.startswith(seen):
            return  # wrapped (or truncated by a restart): the order of what follows is unknown
        if not alive:
            return
        time.sleep(poll)

"""A VM's serial console as the host sees it: tail, follow, and what the console says about a stalled boot."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from lkctl.runtime import state
from lkctl.runtime.hyperkit import CONSOLE_RING, console_file, read_console, read_console_ring
from lkctl.runtime.state import VmRecord

__all__ = [
    "PANIC_MARKERS",
    "READY_MARKER",
    "console_bytes",
    "console_tail",
    "diagnose_not_ready",
    "follow_console",
]

READY_MARKER = b"lkctl-init: ready"
PANIC_MARKERS = (b"Kernel panic", b"lkctl-init: fatal:")


def console_bytes(record: VmRecord) -> bytes:
    """Everything the VM's console has printed so far (QEMU's log or hyperkit's ring)."""
    return read_console(record.dir)


def _shown(text: str) -> str:
    """Control characters (terminal escape sequences: the guest writes its console) as visible \\xNN."""
    return re.sub(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]", lambda m: f"\\x{ord(m.group()):02x}", text)


def console_tail(record: VmRecord, lines: int = 20) -> str:
    """The console's last `lines` lines, as text for a terminal (no control characters but tabs)."""
    path = console_file(record.dir)
    if path.name == CONSOLE_RING:
        text = read_console_ring(path).decode(errors="replace").replace("\r", "")
        return _shown("\n".join(text.splitlines()[-lines:]))
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16384))
            data = f.read()
    except FileNotFoundError:
        return ""
    text = data.decode(errors="replace").replace("\r", "")
    return _shown("\n".join(text.splitlines()[-lines:]))


def diagnose_not_ready(record: VmRecord, why: str) -> str:
    """Which boot stage stalled, read from the console, with its last lines: the message of a readiness failure."""
    console = console_bytes(record)
    if not console.strip():
        reason = "the guest printed nothing on its console (no kernel output)"
    elif b"Kernel panic" in console:
        reason = "the guest kernel panicked"
    elif b"lkctl-init:" not in console:
        reason = "the kernel started but lkctl's init never ran (is the init image in the YAML?)"
    elif READY_MARKER not in console:
        reason = "init started but did not finish starting services"
    else:
        reason = "init reported ready but sshd did not answer (is an sshd service in the YAML?)"
    tail = console_tail(record)
    msg = f"VM {record.name} did not become ready: {why}; {reason}."
    if tail:
        msg += f"\nlast console lines ({console_file(record.dir)}):\n{tail}"
    return msg


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

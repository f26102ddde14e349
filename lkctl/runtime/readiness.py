"""Waiting for a booting VM: start its connection holder (lkctl.runtime.holderd) and wait until it holds an SSH
connection, watching the console and QEMU meanwhile. Used by vm.run -d and vm.restart."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from lkctl import proc
from lkctl.errors import VmError
from lkctl.runtime import state
from lkctl.runtime.qemu import CONSOLE_LOG
from lkctl.runtime.state import VmRecord

__all__ = ["abandon_holder", "spawn_holder", "wait_for_holder"]


def spawn_holder(vm_dir: Path, timeout: float, *, after_go: bool = False) -> subprocess.Popen[bytes]:
    """Start the VM's connection holder (it daemonizes; this is the process that does so). `after_go`: started
    before the VM, it prepares its handshake and waits; `wait_for_holder(..., starter=)` sends it `go`, and
    `abandon_holder` ends it if the VM never started."""
    with open(vm_dir / "holder.log", "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "lkctl.runtime.holderd", str(vm_dir), str(timeout), *(["--after-go"] * after_go)],
            cwd=vm_dir, stdin=subprocess.PIPE if after_go else subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=log, start_new_session=True,
        )  # fmt: skip


def abandon_holder(starter: subprocess.Popen[bytes]) -> None:
    """End a holder started with `after_go` that will not get `go`: end-of-file on its stdin ends it."""
    for pipe in (starter.stdin, starter.stdout):
        if pipe is not None:
            with contextlib.suppress(OSError):
                pipe.close()
    if starter.poll() is None:
        proc.shutdown_process(starter)
    starter.wait()


def wait_for_holder(
    record: VmRecord,
    timeout: float,
    *,
    panic_markers: Sequence[bytes],
    diagnose: Callable[[VmRecord, str], str],
    on_tick: Callable[[], None] | None = None,
    starter: subprocess.Popen[bytes] | None = None,
) -> VmRecord:
    """Start the VM's connection holder and wait until it holds an SSH connection (see lkctl.runtime.holder).

    The holder makes the one handshake when the guest prints that its sshd listens; meanwhile this process only
    watches the console (a line with one of `panic_markers` fails at once) and QEMU. A failure raises VmError
    with `diagnose(record, why)`. Returns the record with the holder in its helpers (so it stops with the VM).
    """
    if starter is None:
        starter = spawn_holder(record.dir, timeout)
    elif starter.stdin is not None:  # started before the VM (spawn_holder(after_go=True)): the record names QEMU now
        try:
            starter.stdin.write(b"go\n")
            starter.stdin.close()
        except OSError:  # it is gone already: its lines (or their absence) say why below
            pass
    assert starter.stdout is not None
    lines = _HolderLines(starter.stdout.fileno())
    holder: state.ProcessIdentity | None = None
    try:
        deadline = time.monotonic() + timeout + 10  # the holder enforces `timeout`; this is for a stuck holder
        console = _ConsoleTail(record.dir / CONSOLE_LOG)
        while True:
            if console.saw(panic_markers):
                raise VmError(diagnose(record, "the guest failed while booting"))
            if not state.is_our_process(record):
                raise VmError(diagnose(record, "QEMU exited while the guest was booting"))
            if time.monotonic() > deadline:
                raise VmError(diagnose(record, f"no SSH connection after {timeout:g} s"))
            if on_tick is not None:
                on_tick()
            text = lines.next(0.2)  # wakes at once when the holder writes; the console is checked in between
            if text is None:
                continue
            if text.startswith("pid "):  # the daemonized holder's own pid: record it before anything else
                # recorded like every helper (start time, boot id, command line), so it is signalled only if it is
                # still this holder (see state.is_our_helper); the daemon keeps the starter's command line
                holder = state.process_identity(int(text[4:]))
                entry = state.helper_entry(int(text[4:]), [str(a) for a in starter.args])  # type: ignore[union-attr]
                if entry is not None:
                    live = [h for h in record.helpers if state.is_our_helper(h)]
                    record = dataclasses.replace(record, helpers=[*live, entry])
                    state.save_record(record)
            elif text == "ready":
                return record
            else:
                why = text.removeprefix("error: ") or _last_line(record.dir / "holder.log") or "it exited"
                raise VmError(diagnose(record, f"the connection holder failed: {why}"))
    except BaseException:
        if holder is not None and state.process_identity(holder.pid) == holder:
            with contextlib.suppress(ProcessLookupError):
                os.kill(holder.pid, signal.SIGTERM)
        raise
    finally:
        starter.stdout.close()
        if starter.poll() is None:
            proc.shutdown_process(starter)
        starter.wait()


class _ConsoleTail:
    """New console bytes since the last look (not the whole file each time: this runs while the guest boots)."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset, self.tail = path, 0, b""

    def saw(self, markers: Sequence[bytes]) -> bool:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                new = f.read()
        except FileNotFoundError:
            return False
        self.offset += len(new)
        window = self.tail + new
        self.tail = window[-256:]
        return any(m in window for m in markers)


class _HolderLines:
    """Lines the holder writes on its stdout pipe, read with a timeout; "" once the pipe is closed."""

    def __init__(self, fd: int) -> None:
        self.fd, self.buffer = fd, b""

    def next(self, wait: float) -> str | None:
        import select

        if b"\n" not in self.buffer and select.select([self.fd], [], [], wait)[0]:
            chunk = os.read(self.fd, 4096)
            if not chunk:
                return ""
            self.buffer += chunk
        if b"\n" not in self.buffer:
            return None
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.decode(errors="replace").strip()


def _last_line(path: Path) -> str:
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1] if lines else ""

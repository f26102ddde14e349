"""Watching VMs: `vm.wait`, `vm.stats`, `vm.logs --tail/--since/--timestamps`, `vm.ps --filter`.

Exit status of a VM (`vm.wait`): a daemonized QEMU is not our child, so its own exit code is out of reach. What
is known: lkctl records failures it saw (`exit_reason`), and a guest that powers itself off cleanly makes its
kernel print `reboot: Power down` (KERN_EMERG, shown whatever the log level) as the very last console line. So:
0 for that clean power-off (`poweroff` in the guest, or `vm.stop`'s ACPI request honoured), 1 for a failure lkctl
recorded or a kernel panic, 137 when QEMU ended without the guest powering off (killed, SIGTERM escalation, QEMU
crash). The guest is untrusted: it can print the marker and then be killed, so 0 means "looked clean".

Console timestamps: QEMU writes the console file itself, so nothing host-side sees a line arrive unless lkctl is
following. `--timestamps` therefore maps the kernel's own `[  12.345678]` stamps (seconds since the guest kernel
started) onto the wall clock at which QEMU started (host facts: its start time in /proc); a line without a stamp
(init and service output) carries the last stamp before it and is marked `~`. Lines that arrive while `--follow`
runs get the host's arrival time instead (exact).
"""

from __future__ import annotations

import collections
import fnmatch
import os
import re
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from lkctl.errors import ConfigError, VmError
from lkctl.runtime import state
from lkctl.runtime.qemu import CONSOLE_LOG, QMP_SOCKET
from lkctl.runtime.state import VmRecord

__all__ = [
    "EXIT_CRASHED",
    "EXIT_FAILED",
    "ConsoleLine",
    "exit_status",
    "filter_rows",
    "parse_filters",
    "parse_since",
    "read_console",
    "stamp_lines",
    "vm_stats",
    "wait_vm",
]

POWER_DOWN = b"reboot: Power down"
EXIT_FAILED = 1
EXIT_CRASHED = 137
_KERNEL_STAMP = re.compile(rb"^\[\s*(\d+)\.(\d+)\]")
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
FILTER_KEYS = ("id", "name", "image", "status")
# every status vm.ps shows: local VMs (state.vm_status) and libvirt ones (libvirt.backend.domain_status)
STATUSES = ("running", "stopped", "error", "created", "unknown", "paused", "crashed", "missing")


# ---- exit status and vm.wait ---------------------------------------------------------------------------------


def exit_status(record: VmRecord, console_tail: bytes) -> int:
    """The status of a VM that has ended, from what lkctl recorded and the end of its console (see module doc)."""
    if record.exit_reason:
        return EXIT_FAILED
    lines = [ln.strip() for ln in console_tail.replace(b"\r", b"").splitlines() if ln.strip()]
    last = lines[-1] if lines else b""
    if POWER_DOWN in _KERNEL_STAMP.sub(b"", last):
        return 0
    if any(b"Kernel panic" in ln for ln in lines):
        return EXIT_FAILED
    return EXIT_CRASHED


def _console_end(record: VmRecord, size: int = 4096) -> bytes:
    try:
        with open(record.dir / CONSOLE_LOG, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - size))
            return f.read()
    except FileNotFoundError:
        return b""


def wait_vm(record: VmRecord, *, timeout: float | None = None, poll: float = 0.2) -> int:
    """Block until the VM stops; return its exit status (0 = clean power-off). A stopped VM returns at once."""
    if not record.pid and not record.exit_reason:
        raise VmError(f"VM {record.name} was never started; there is nothing to wait for")
    deadline = None if timeout is None else time.monotonic() + timeout
    while state.is_our_process(record):
        if deadline is not None and time.monotonic() > deadline:
            raise VmError(f"VM {record.name} is still running after {timeout:g} s")
        time.sleep(poll)
    latest = state.load_record(record.dir) or record
    return exit_status(latest, _console_end(latest))


# ---- stats ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _ProcSample:
    cpu_ticks: int
    start_ticks: int
    rss_bytes: int


def _proc_sample(pid: int) -> _ProcSample:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8", errors="replace")
        status = Path(f"/proc/{pid}/status").read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise VmError(f"cannot read /proc/{pid} of the VM's QEMU: {e.strerror}") from None
    fields = stat[stat.rindex(")") + 2 :].split()
    rss_kb = next((int(ln.split()[1]) for ln in status.splitlines() if ln.startswith("VmRSS:")), 0)
    return _ProcSample(int(fields[11]) + int(fields[12]), int(fields[19]), rss_kb * 1024)


def _host_uptime() -> float:
    return float(Path("/proc/uptime").read_text(encoding="utf-8").split()[0])


def vm_stats(record: VmRecord, *, interval: float = 0.5) -> dict[str, Any]:
    """CPU, memory and uptime of a running VM: QMP `query-status`, `query-cpus-fast`, `query-memory-size-summary`
    for the guest's view, /proc/<qemu pid> for what it costs the host (CPU % over `interval` seconds, RSS)."""
    from lkctl.runtime.qmp import qmp_command

    if not state.is_our_process(record):
        raise VmError(f"VM {record.name} is not running (status: {state.vm_status(record)})")
    sock = record.dir / QMP_SOCKET
    run_state = qmp_command(sock, "query-status")
    vcpus = qmp_command(sock, "query-cpus-fast")
    memory = qmp_command(sock, "query-memory-size-summary")
    tck = os.sysconf("SC_CLK_TCK")
    first, t0 = _proc_sample(record.pid), time.monotonic()
    time.sleep(interval)
    second, t1 = _proc_sample(record.pid), time.monotonic()
    cpu_percent = 100.0 * (second.cpu_ticks - first.cpu_ticks) / tck / max(t1 - t0, 1e-6)
    return {
        "id": record.id,
        "name": record.name,
        "status": run_state.get("status", ""),
        "vcpus": len(vcpus) if isinstance(vcpus, list) else record.cpus,
        "memory_bytes": int(memory.get("base-memory", record.memory * 1024 * 1024)),
        "rss_bytes": second.rss_bytes,
        "cpu_percent": round(cpu_percent, 1),
        "cpu_seconds": round(second.cpu_ticks / tck, 2),
        "uptime_seconds": round(_host_uptime() - second.start_ticks / tck, 1),
        "pid": record.pid,
    }


# ---- console -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConsoleLine:
    """One console line (bytes, with its newline if it had one) and when it was written, as well as known."""

    text: bytes
    time: datetime | None
    exact: bool  # True: a kernel stamp or a host arrival time; False: carried over from the line before

    def render(self, timestamps: bool) -> bytes:
        if not timestamps:
            return self.text
        when = self.time.isoformat(timespec="milliseconds").replace("+00:00", "Z") if self.time else "-"
        return f"{when}{'' if self.exact else '~'} ".encode() + self.text


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """`--since`: a duration back from now (`90s`, `10m`, `1h30m`, `2d`), an ISO-8601 time or Unix seconds."""
    now = now or datetime.now(UTC)
    spec = text.strip()
    if spec and _DURATION.sub("", spec) == "" and _DURATION.search(spec):
        seconds = sum(float(n) * _UNITS[u] for n, u in _DURATION.findall(spec))
        return now - timedelta(seconds=seconds)
    try:
        return datetime.fromtimestamp(float(spec), UTC)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(spec.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(
            f"--since {text!r}: give a duration (30s, 10m, 2h, 1d), an ISO time (2026-01-31T12:00) or Unix seconds"
        ) from None
    return when if when.tzinfo else when.astimezone()


def stamp_lines(lines: Iterable[bytes], boot: datetime | None) -> Iterator[ConsoleLine]:
    """Give each console line a time: its kernel stamp after `boot`, else the last time seen (inexact)."""
    last: datetime | None = boot
    for line in lines:
        m = _KERNEL_STAMP.match(line.lstrip(b"\r"))
        if m and boot is not None:
            last = boot + timedelta(seconds=int(m.group(1)), microseconds=int(m.group(2).ljust(6, b"0")[:6]))
            yield ConsoleLine(line, last, True)
        else:
            yield ConsoleLine(line, last, False)


def _qemu_started(record: VmRecord) -> datetime | None:
    """Wall-clock start of the VM's QEMU from host facts: its start time in clock ticks after the host's boot."""
    if not record.pid_start.isdigit():
        return None
    try:
        btime = next(
            int(ln.split()[1])
            for ln in Path("/proc/stat").read_text(encoding="utf-8").splitlines()
            if ln.startswith("btime ")
        )
    except (OSError, StopIteration, ValueError):
        return None
    return datetime.fromtimestamp(btime + int(record.pid_start) / os.sysconf("SC_CLK_TCK"), UTC)


def _split_lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    pending = b""
    for chunk in chunks:
        pending += chunk
        *complete, pending = pending.split(b"\n")
        for line in complete:
            yield line + b"\n"
    if pending:
        yield pending


def read_console(
    record: VmRecord,
    *,
    tail: int | None = None,
    since: datetime | None = None,
    follow: bool = False,
    poll: float = 0.1,
) -> Iterator[ConsoleLine]:
    """The VM's console as timed lines: the last `tail` lines, only those at or after `since`, then (follow)
    new lines as they arrive until the VM stops.

    The console log is streamed in chunks, never read whole: the guest decides how much it prints, and a tail
    keeps only its last `tail` lines in memory. A last line without its newline yet is printed (whole) only when
    following, once it completes."""
    from lkctl.runtime.vm import follow_console

    if tail is not None and tail < 0:
        raise ConfigError(f"--tail {tail}: give a number of lines, 0 or more")
    boot = _qemu_started(record)
    if record.libvirt:  # the console file is on the VM's libvirt host, read through libvirt
        from lkctl.runtime.libvirt.vms import console_chunks

        chunks: Iterable[bytes] = [b"".join(console_chunks(record))]
    else:  # console.log, or hyperkit's console ring (64 KiB)
        chunks = _console_chunks(record.dir)
    done = [0]  # bytes of the whole lines read so far: following resumes after them
    lines: Iterable[ConsoleLine] = stamp_lines(_whole_lines(chunks, done), boot)
    if since is not None:
        lines = (ln for ln in lines if ln.time is None or ln.time >= since)
    if tail is not None:
        lines = collections.deque(lines, maxlen=tail) if tail else _drained(lines)
    yield from lines
    if not follow:
        return
    for line in _split_lines(_skip_bytes(follow_console(record, from_start=True, poll=poll), done[0])):
        yield ConsoleLine(line, datetime.now(UTC), True)


def _console_chunks(vm_dir: Path, size: int = 1 << 20) -> Iterator[bytes]:
    """The console as it is now, in chunks (up to its size when opened: a growing log is for --follow)."""
    from lkctl.runtime.hyperkit import CONSOLE_RING, console_file, read_console_ring

    path = console_file(vm_dir)
    if path.name == CONSOLE_RING:
        yield read_console_ring(path)
        return
    try:
        f = open(path, "rb")  # noqa: SIM115 (closed below; a VM that never started has none)
    except FileNotFoundError:
        return
    with f:
        left = os.fstat(f.fileno()).st_size
        while left > 0 and (chunk := f.read(min(size, left))):
            left -= len(chunk)
            yield chunk


def _whole_lines(chunks: Iterable[bytes], done: list[int]) -> Iterator[bytes]:
    """Complete lines (with their newline) from `chunks`; `done[0]` counts their bytes. A last partial line is
    left out."""
    pending = b""
    for chunk in chunks:
        pending += chunk
        *complete, pending = pending.split(b"\n")
        for line in complete:
            done[0] += len(line) + 1
            yield line + b"\n"


def _drained(lines: Iterable[ConsoleLine]) -> list[ConsoleLine]:
    """`--tail 0`: nothing printed, but the lines are read, so following starts after them."""
    collections.deque(lines, maxlen=0)
    return []


def _skip_bytes(chunks: Iterable[bytes], count: int) -> Iterator[bytes]:
    for chunk in chunks:
        if count >= len(chunk):
            count -= len(chunk)
            continue
        yield chunk[count:]
        count = 0


# ---- vm.ps --filter ------------------------------------------------------------------------------------------


def parse_filters(items: Sequence[str]) -> dict[str, list[str]]:
    """`--filter status=running,name=web` (repeatable) into {key: [values]}; keys: id, name, image, status."""
    out: dict[str, list[str]] = {}
    for item in items:
        for part in item.split(","):
            if not part.strip():
                continue
            key, sep, value = part.partition("=")
            key = key.strip()
            if not sep or key not in FILTER_KEYS:
                raise ConfigError(
                    f"--filter {part!r}: expected KEY=VALUE with KEY one of {', '.join(FILTER_KEYS)} "
                    "(e.g. --filter status=running,name=web)"
                )
            value = value.strip()
            if key == "status" and value not in STATUSES and not any(c in value for c in "*?["):
                raise ConfigError(f"--filter status={value}: no VM has that status; use one of {', '.join(STATUSES)}")
            out.setdefault(key, []).append(value)
    return out


def _matches(value: str, wanted: str, key: str) -> bool:
    if any(c in wanted for c in "*?["):
        return fnmatch.fnmatchcase(value, wanted)
    if key == "status":
        return value == wanted
    if key == "id":
        return value.startswith(wanted)
    return wanted in value  # name and image: substring, as `docker ps --filter name=`


def filter_rows(rows: Sequence[Mapping[str, Any]], filters: Mapping[str, Sequence[str]]) -> list[Mapping[str, Any]]:
    """Rows matching every key, where a key matches if any of its values does (Docker's rule)."""
    return [
        r for r in rows if all(any(_matches(str(r.get(k, "")), v, k) for v in values) for k, values in filters.items())
    ]

"""Download progress for people: a redrawn bar on a terminal, a few plain lines in CI logs, nothing when quiet.

The formatting is pure functions (sizes, rates, ETA, the bar, the log line) so it is tested without a terminal.
`ProgressReporter` is a `(done, total)` callback (what `lkctl.sources` downloads call) that picks its mode from
the stream and the environment: a TTY gets the bar (on stderr, redrawn at most 10 times a second), `CI=true` or a
pipe gets one line per quarter plus a summary, `quiet=True` gets nothing.
"""

from __future__ import annotations

import collections
import os
import shutil
import sys
import time
from collections.abc import Callable, Mapping
from typing import Literal, TextIO

__all__ = [
    "BootProgress",
    "Mode",
    "ProgressReporter",
    "Ticker",
    "boot_phase",
    "choose_mode",
    "format_eta",
    "format_rate",
    "format_size",
    "render_bar",
    "render_boot",
    "render_line",
    "render_summary",
]

Mode = Literal["bar", "lines", "quiet"]

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def format_size(n: float) -> str:
    """Bytes in binary units: `512 B`, `1.5 KiB`, `12.3 MiB`, `1.00 GiB`."""
    if n < 1024:
        return f"{int(n)} B"
    value = float(n)
    for unit in _UNITS[1:]:
        value /= 1024
        if value < 1024 or unit == _UNITS[-1]:
            return f"{value:.2f} {unit}" if value < 10 else f"{value:.1f} {unit}"
    raise AssertionError("unreachable")


def format_rate(bytes_per_second: float | None) -> str:
    return "-- B/s" if not bytes_per_second or bytes_per_second < 0 else f"{format_size(bytes_per_second)}/s"


def format_eta(seconds: float | None) -> str:
    """`0:05`, `12:34`, `1:02:03`; `--:--` when unknown."""
    if seconds is None or seconds < 0 or seconds != seconds or seconds > 99 * 3600:
        return "--:--"
    s = round(seconds)
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


def _eta(done: int, total: int | None, rate: float | None) -> float | None:
    if total is None or not rate or rate <= 0:
        return None
    return max(0, total - done) / rate


def render_bar(label: str, done: int, total: int | None, rate: float | None, width: int = 80) -> str:
    """One terminal line: `label  45% [#####.....]  450.0 MiB/1.00 GiB  120 MiB/s  ETA 0:05`, fit to `width`."""
    rate_s = format_rate(rate)
    if total is None or total <= 0:
        text = f"{label}  {format_size(done)}  {rate_s}"
        return text[:width]
    frac = min(1.0, done / total)
    tail = f"  {format_size(done)}/{format_size(total)}  {rate_s}  ETA {format_eta(_eta(done, total, rate))}"
    head = f"{label} {frac * 100:3.0f}% "
    bar_width = width - len(head) - len(tail) - 2
    if bar_width < 10:  # narrow terminal: drop the bar, keep the numbers
        return (head + tail.strip())[:width]
    filled = int(bar_width * frac)
    return f"{head}[{'#' * filled}{'.' * (bar_width - filled)}]{tail}"


def render_line(label: str, done: int, total: int | None, rate: float | None) -> str:
    """One log line for CI: `label: 45% (450.0 MiB of 1.00 GiB) at 120 MiB/s, ETA 0:05`."""
    if total is None or total <= 0:
        return f"{label}: {format_size(done)} at {format_rate(rate)}"
    pct = min(100.0, done * 100 / total)
    eta = format_eta(_eta(done, total, rate))
    return f"{label}: {pct:.0f}% ({format_size(done)} of {format_size(total)}) at {format_rate(rate)}, ETA {eta}"


def render_summary(label: str, done: int, elapsed: float, resumed_from: int = 0) -> str:
    """The last line: `label: 1.00 GiB in 0:08 (128 MiB/s)`, noting bytes kept from an interrupted download."""
    fetched = done - resumed_from
    rate = fetched / elapsed if elapsed > 0 else None
    text = f"{label}: {format_size(done)} in {format_eta(elapsed)} ({format_rate(rate)})"
    if resumed_from:
        text += f", resumed at {format_size(resumed_from)}"
    return text


def choose_mode(stream: TextIO, *, quiet: bool = False, env: Mapping[str, str] | None = None) -> Mode:
    """quiet → nothing; CI=true or a stream that is not a terminal → lines; a terminal → bar."""
    env = os.environ if env is None else env
    if quiet:
        return "quiet"
    if env.get("CI", "").lower() in ("true", "1", "yes"):
        return "lines"
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):
        tty = False
    return "bar" if tty and env.get("TERM") != "dumb" else "lines"


class _RateMeter:
    """Bytes per second over the last few seconds (so a stall shows, and a resume does not count old bytes)."""

    def __init__(self, window: float = 5.0) -> None:
        self.window = window
        self.samples: collections.deque[tuple[float, int]] = collections.deque()

    def add(self, t: float, done: int) -> float | None:
        self.samples.append((t, done))
        while len(self.samples) > 2 and t - self.samples[1][0] > self.window:
            self.samples.popleft()
        t0, d0 = self.samples[0]
        return (done - d0) / (t - t0) if t - t0 > 0.05 else None


class _StatusLine:
    """One status line on stderr: redrawn in place on a terminal (`bar`), whole lines in CI and pipes, or nothing."""

    def __init__(
        self,
        label: str,
        *,
        stream: TextIO | None = None,
        mode: Mode | None = None,
        env: Mapping[str, str] | None = None,
        prefix: str = "lkctl: ",
        quiet: bool = False,
    ) -> None:
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.mode: Mode = mode or choose_mode(self.stream, quiet=quiet, env=env)
        self.prefix = prefix
        self._drawn = False

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()

    def _draw(self, text: str) -> None:
        """Redraw the line in place (terminal)."""
        self._write("\r" + self.prefix + text + "\x1b[K")
        self._drawn = True

    def _line(self, text: str) -> None:
        """A whole line (CI, pipes)."""
        self._write(self.prefix + text + "\n")

    def _clear(self) -> None:
        if self._drawn:
            self._write("\r\x1b[K")
            self._drawn = False


class ProgressReporter(_StatusLine):
    """A `(done, total)` callback that reports to `stream` (stderr) in the chosen mode; call `finish()` at the end."""

    def __init__(
        self,
        label: str,
        *,
        stream: TextIO | None = None,
        mode: Mode | None = None,
        quiet: bool = False,
        env: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
        redraw_interval: float = 0.1,
    ) -> None:
        super().__init__(label, stream=stream, mode=mode, env=env, prefix="", quiet=quiet)
        self.clock = clock
        self.redraw_interval = redraw_interval
        self.started: float | None = None
        self.first_done = 0
        self.done = 0
        self.total: int | None = None
        self.rate: float | None = None
        self._meter = _RateMeter()
        self._last_draw = -1e9
        self._next_quarter = 25
        self._finished = False

    def __call__(self, done: int, total: int | None) -> None:
        now = self.clock()
        if self.started is None:
            self.started, self.first_done = now, done
            if self.mode == "lines":
                size = f" ({format_size(total)})" if total else ""
                resumed = f", resuming at {format_size(done)}" if done and total and done < total else ""
                self._write(f"{self.label}: downloading{size}{resumed}\n")
        self.done, self.total = done, total
        self.rate = self._meter.add(now, done)
        if self.mode == "bar":
            if now - self._last_draw >= self.redraw_interval:
                self._last_draw = now
                width = shutil.get_terminal_size((80, 24)).columns - 1
                self._write("\r" + render_bar(self.label, done, total, self.rate, width) + "\x1b[K")
        elif self.mode == "lines" and total:
            pct = done * 100 // total
            if pct >= self._next_quarter and done < total:
                while self._next_quarter <= pct:
                    self._next_quarter += 25
                self._write(render_line(self.label, done, total, self.rate) + "\n")

    def finish(self, message: str | None = None) -> None:
        """End the bar (or write the summary line); `message` replaces the summary."""
        if self._finished or self.mode == "quiet" or self.started is None:  # nothing was downloaded: say nothing
            self._finished = True
            return
        self._finished = True
        elapsed = self.clock() - self.started if self.started is not None else 0.0
        text = message or render_summary(self.label, self.done, elapsed, self.first_done)
        if self.mode == "bar":
            self._write("\r" + text + "\x1b[K\n")
        else:
            self._write(text + "\n")

    def abort(self) -> None:
        """The download failed: end a half-drawn bar line so the error message starts on its own line."""
        if not self._finished and self.mode == "bar" and self.started is not None:
            self._write("\n")
        self._finished = True


_SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"

# What the console shows, last phase first: dropbear logs `[sshd] ...`, lkctl's init says `lkctl-init: ...`.
_BOOT_PHASES = (
    (b"[sshd]", "sshd started, waiting for it to answer"),
    (b"lkctl-init: ready", "init done, starting services"),
    (b"lkctl-init: starting", "init"),
    (b"Linux version", "kernel"),
)


def boot_phase(console: bytes) -> str:
    """The boot phase a console log shows so far: kernel, init, services, sshd."""
    for marker, phase in _BOOT_PHASES:
        if marker in console:
            return phase
    return "kernel"  # the kernel runs with `quiet`: nothing on the console until init


def render_boot(label: str, phase: str, elapsed: float, frame: int = 0, *, spinner: bool = False) -> str:
    """`⠋ booting web: init (12s)` (terminal) or `booting web: init (12s)` (CI and pipes)."""
    head = f"{_SPINNER[frame % len(_SPINNER)]} " if spinner else ""
    return f"{head}booting {label}: {phase} ({elapsed:.0f}s)"


class BootProgress(_StatusLine):
    """Boot-wait progress: a spinner with the phase and elapsed time on a terminal, a line per new phase otherwise.

    Call it with the console so far (what `run_vm(on_wait=...)` passes); `finish()` ends the line.
    """

    def __init__(
        self,
        label: str,
        *,
        stream: TextIO | None = None,
        mode: Mode | None = None,
        env: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
        prefix: str = "lkctl: ",
    ) -> None:
        super().__init__(label, stream=stream, mode=mode, env=env, prefix=prefix)
        self.clock = clock
        self.started = clock()
        self.phase = ""
        self.frame = 0

    def __call__(self, console: bytes) -> None:
        phase = boot_phase(console)
        elapsed = self.clock() - self.started
        if self.mode == "bar":
            self.frame += 1
            self._draw(render_boot(self.label, phase, elapsed, self.frame, spinner=True))
        elif self.mode == "lines" and phase != self.phase:
            self._line(render_boot(self.label, phase, elapsed))
        self.phase = phase

    def finish(self) -> None:
        """Clear the spinner line (the caller says what happened next)."""
        self._clear()


class Ticker(_StatusLine):
    """Elapsed time for a step that reports nothing itself (a build, a base-image build): a context manager.

    On a terminal a spinner line `⠋ building minimal (12s)` redrawn from a thread, cleared at the end; in CI and
    pipes a `... still building minimal (30s)` line every `every` seconds, so a log shows the step is alive; quiet:
    nothing.
    """

    def __init__(
        self,
        label: str,
        *,
        stream: TextIO | None = None,
        mode: Mode | None = None,
        env: Mapping[str, str] | None = None,
        every: float = 15.0,
        prefix: str = "lkctl: ",
    ) -> None:
        import threading

        super().__init__(label, stream=stream, mode=mode, env=env, prefix=prefix)
        self.every = every
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Ticker:
        import threading

        if self.mode != "quiet":
            self._thread = threading.Thread(target=self._run, name="lkctl-ticker", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._clear()

    def _run(self) -> None:
        started = time.monotonic()
        frame = 0
        interval = 0.2 if self.mode == "bar" else self.every
        while not self._stop.wait(interval):
            elapsed = time.monotonic() - started
            if self.mode == "bar":
                frame += 1
                self._draw(f"{_SPINNER[frame % len(_SPINNER)]} {self.label} ({elapsed:.0f}s)")
            else:
                self._line(f"... still {self.label} ({elapsed:.0f}s)")

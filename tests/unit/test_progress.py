"""Progress formatting (pure) and the reporter's modes, driven with a fake clock and in-memory streams."""

from __future__ import annotations

import io

import pytest

from lkctl.progress import (
    ProgressReporter,
    choose_mode,
    format_eta,
    format_rate,
    format_size,
    render_bar,
    render_line,
    render_summary,
)

MiB = 1 << 20


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1536, "1.50 KiB"),
        (12.3 * MiB, "12.3 MiB"),
        (1 << 30, "1.00 GiB"),
        (5 << 40, "5.00 TiB"),
    ],
)
def test_sizes_use_binary_units_with_three_significant_digits(n: float, text: str) -> None:
    assert format_size(n) == text


@pytest.mark.parametrize(
    ("seconds", "text"), [(None, "--:--"), (-1, "--:--"), (4.6, "0:05"), (754, "12:34"), (3723, "1:02:03")]
)
def test_eta_is_clock_style_and_unknown_shows_dashes(seconds: float | None, text: str) -> None:
    assert format_eta(seconds) == text


def test_rate_unknown_or_zero_shows_dashes() -> None:
    assert format_rate(None) == format_rate(0) == "-- B/s"
    assert format_rate(120 * MiB) == "120.0 MiB/s"


def test_bar_shows_percent_sizes_rate_and_eta_and_fits_the_width() -> None:
    line = render_bar("core-dev 1.0", 450 * MiB, 1000 * MiB, 110 * MiB, width=100)
    assert len(line) == 100
    assert line.startswith("core-dev 1.0  45% [")
    assert line.endswith("450.0 MiB/1000.0 MiB  110.0 MiB/s  ETA 0:05")
    assert line.count("#") == int((100 - len("core-dev 1.0  45% ") - len(line.split("]")[1]) - 2) * 0.45)


def test_bar_without_a_total_shows_bytes_and_rate_only() -> None:
    assert render_bar("x", 3 * MiB, None, MiB) == "x  3.00 MiB  1.00 MiB/s"


def test_narrow_terminal_drops_the_bar_but_keeps_the_numbers() -> None:
    line = render_bar("img", 1, 2, None, width=40)
    assert "[" not in line and line.startswith("img  50%") and len(line) <= 40


def test_ci_line_and_summary_read_as_sentences() -> None:
    assert render_line("img", MiB, 4 * MiB, MiB) == "img: 25% (1.00 MiB of 4.00 MiB) at 1.00 MiB/s, ETA 0:03"
    assert render_summary("img", 4 * MiB, 2.0, resumed_from=2 * MiB) == (
        "img: 4.00 MiB in 0:02 (1.00 MiB/s), resumed at 2.00 MiB"
    )


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    ("stream", "env", "quiet", "mode"),
    [
        (Tty(), {}, False, "bar"),
        (Tty(), {"CI": "true"}, False, "lines"),
        (Tty(), {"TERM": "dumb"}, False, "lines"),
        (io.StringIO(), {}, False, "lines"),
        (Tty(), {}, True, "quiet"),
    ],
)
def test_mode_is_bar_on_a_terminal_lines_in_ci_or_a_pipe_and_nothing_when_quiet(
    stream: io.StringIO, env: dict[str, str], quiet: bool, mode: str
) -> None:
    assert choose_mode(stream, quiet=quiet, env=env) == mode


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def feed(reporter: ProgressReporter, clock: Clock, total: int, steps: int, start: int = 0) -> None:
    for i in range(steps + 1):
        clock.t = i * 0.5
        reporter(start + (total - start) * i // steps, total)
    reporter.finish()


def test_lines_mode_writes_a_start_line_each_quarter_and_a_summary() -> None:
    out, clock = io.StringIO(), Clock()
    feed(ProgressReporter("img", stream=out, mode="lines", clock=clock), clock, 8 * MiB, 8)
    lines = out.getvalue().splitlines()
    assert lines[0] == "img: downloading (8.00 MiB)"
    assert [line.split()[1] for line in lines[1:4]] == ["25%", "50%", "75%"]
    assert lines[4] == "img: 8.00 MiB in 0:04 (2.00 MiB/s)"
    assert "\r" not in out.getvalue() and len(lines) == 5


def test_bar_mode_redraws_in_place_and_ends_with_a_newline() -> None:
    out, clock = Tty(), Clock()
    feed(ProgressReporter("img", stream=out, mode="bar", clock=clock), clock, 8 * MiB, 8)
    text = out.getvalue()
    assert text.count("\r") == 10 and text.endswith("\n") and text.count("\n") == 1
    assert "100% [" in text and "ETA" in text and "\x1b[K" in text


def test_resumed_download_announces_the_resume_and_rates_only_new_bytes() -> None:
    out, clock = io.StringIO(), Clock()
    feed(ProgressReporter("img", stream=out, mode="lines", clock=clock), clock, 8 * MiB, 4, start=4 * MiB)
    lines = out.getvalue().splitlines()
    assert lines[0] == "img: downloading (8.00 MiB), resuming at 4.00 MiB"
    assert lines[-1] == "img: 8.00 MiB in 0:02 (2.00 MiB/s), resumed at 4.00 MiB"


def test_quiet_mode_writes_nothing() -> None:
    out, clock = Tty(), Clock()
    feed(ProgressReporter("img", stream=out, quiet=True, clock=clock), clock, MiB, 4)
    assert out.getvalue() == ""

"""Boot-wait progress: the phase read from the console, a spinner on a terminal, one line per phase elsewhere."""

from __future__ import annotations

import io

from lkctl.progress import BootProgress, boot_phase, render_boot

CONSOLE = [
    b"",
    b"lkctl-init: starting on Linux 6.1.0-57-amd64\r\n",
    b"lkctl-init: starting on Linux 6.1.0\r\nlkctl-init: ready\r\n",
    b"lkctl-init: ready\r\n[sshd] [213] Nov 30 06:50:06 Not backgrounding\r\n",
]


def test_phases_follow_the_console() -> None:
    assert [boot_phase(c) for c in CONSOLE] == [
        "kernel", "init", "init done, starting services", "sshd started, waiting for it to answer",
    ]  # fmt: skip
    assert boot_phase(b"[    0.000000] Linux version 6.1.0") == "kernel"


def test_render_boot_with_and_without_spinner() -> None:
    assert render_boot("web", "init", 12.4) == "booting web: init (12s)"
    assert render_boot("web", "init", 3, frame=1, spinner=True) == "⠙ booting web: init (3s)"


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_lines_mode_writes_one_line_per_new_phase_with_elapsed_time() -> None:
    out, clock = io.StringIO(), Clock()
    p = BootProgress("web", stream=out, mode="lines", clock=clock)
    for t, console in zip((1, 2, 5, 6, 9), [CONSOLE[0], CONSOLE[0], CONSOLE[1], CONSOLE[1], CONSOLE[3]], strict=True):
        clock.t = 100 + t
        p(console)
    p.finish()
    assert out.getvalue().splitlines() == [
        "lkctl: booting web: kernel (1s)",
        "lkctl: booting web: init (5s)",
        "lkctl: booting web: sshd started, waiting for it to answer (9s)",
    ]


def test_bar_mode_redraws_one_line_and_clears_it_at_the_end() -> None:
    out, clock = io.StringIO(), Clock()
    p = BootProgress("web", stream=out, mode="bar", clock=clock)
    clock.t = 104
    p(CONSOLE[1])
    p.finish()
    text = out.getvalue()
    assert "\n" not in text
    assert text.startswith("\rlkctl: ⠙ booting web: init (4s)\x1b[K") and text.endswith("\r\x1b[K")


def test_ci_chooses_lines_and_quiet_says_nothing() -> None:
    out = io.StringIO()
    assert BootProgress("web", stream=out, env={"CI": "true"}).mode == "lines"
    q = BootProgress("web", stream=out, mode="quiet")
    q(CONSOLE[1])
    q.finish()
    assert out.getvalue() == ""


def test_ticker_shows_a_long_step_is_alive_and_leaves_nothing_behind_on_a_terminal() -> None:
    import time

    from lkctl.progress import Ticker

    out = io.StringIO()
    with Ticker("building minimal", stream=out, mode="lines", every=0.05):
        time.sleep(0.3)
    lines = out.getvalue().splitlines()
    assert len(lines) >= 2 and all(line.startswith("lkctl: ... still building minimal (") for line in lines)
    bar = io.StringIO()
    with Ticker("building minimal", stream=bar, mode="bar"):
        time.sleep(0.5)
    assert "building minimal (0s)" in bar.getvalue() and bar.getvalue().endswith("\r\x1b[K")
    quiet = io.StringIO()
    with Ticker("x", stream=quiet, mode="quiet", every=0.01):
        time.sleep(0.05)
    assert quiet.getvalue() == ""

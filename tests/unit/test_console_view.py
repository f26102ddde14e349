"""ConsoleView: the bounded, incremental console a booting VM's progress is fed."""

from __future__ import annotations

from pathlib import Path

from lkctl.runtime.console import ConsoleView


def test_a_short_console_is_seen_whole_and_grows_line_by_line(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    view = ConsoleView(log, limit=16)
    assert view() == b""  # QEMU has not made it yet
    log.write_bytes(b"abc\n")
    assert view() == b"abc\n"
    with open(log, "ab") as f:
        f.write(b"def\n")
    assert view() == b"abc\ndef\n"


def test_a_long_console_is_its_head_and_its_tail(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    view = ConsoleView(log, limit=8)
    log.write_bytes(b"0123456789abcdef")
    assert view() == b"0123456789abcdef"  # head 8 + the 8 after it
    with open(log, "ab") as f:
        f.write(b"ghij")
    assert view() == b"01234567" + b"cdefghij"  # the tail moved on
    with open(log, "ab") as f:
        f.write(b"x" * 1000 + b"END")
    assert view() == b"01234567" + b"xxxxxEND"  # the middle is skipped, never read


def test_a_console_that_shrank_is_read_afresh(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    view = ConsoleView(log, limit=8)
    log.write_bytes(b"old boot, long enough")
    view()
    log.write_bytes(b"new")  # a restart truncated it
    assert view() == b"new"

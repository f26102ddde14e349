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


def test_console_markers_finds_markers_across_chunk_boundaries(tmp_path: Path, lkctl_home: Path) -> None:
    from lkctl.runtime import state
    from lkctl.runtime.console import console_markers

    record = state.VmRecord(id="abcd1234", name="m", image="x", image_format="kernel+initrd",
                            created="2026-01-01T00:00:00", memory=256, cpus=1, ssh_port=0)  # fmt: skip
    record.dir.mkdir(parents=True)
    assert console_markers(record, (b"ready",)) == set()  # no console yet
    (record.dir / "console.log").write_bytes(b"x" * 5 + b"lkctl-init: ready" + b"y" * 3 + b"Kernel panic")
    for chunk in (1, 3, 7, 1 << 20):
        found = console_markers(record, (b"lkctl-init: ready", b"Kernel panic", b"absent"), chunk=chunk)
        assert found == {b"lkctl-init: ready", b"Kernel panic"}, chunk

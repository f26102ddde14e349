"""untrusted.printable: what lkctl's own messages may carry of a guest's console."""

from __future__ import annotations

import pytest

from lkctl.runtime.untrusted import printable


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("plain text, tabs\tand\nnewlines stay", "plain text, tabs\tand\nnewlines stay"),
        ("\x1b]52;c;b3duZWQ=\x07", "\\x1b]52;c;b3duZWQ=\\x07"),  # OSC 52: a clipboard write
        ("\x1b]0;title\x1b\\", "\\x1b]0;title\\x1b\\"),  # OSC 0 ended by ST
        ("\x1b[2J\x1b[31mred", "\\x1b[2J\\x1b[31mred"),
        ("over\rwrite", "over\\x0dwrite"),  # a carriage return would hide what came before on the line
        ("\x9b31m\x9d0;t\x07", "\\x9b31m\\x9d0;t\\x07"),  # C1 CSI and OSC
        ("\x00\x7f\x08", "\\x00\\x7f\\x08"),
        ("abc\u202edef\u2066", "abc\\u202edef\\u2066"),  # bidi override and isolate
        ("é ü 日本 \ufffd", "é ü 日本 \ufffd"),  # text that is not a control character is left alone
    ],
)
def test_printable_escapes_control_characters_but_newline_and_tab(raw: str, shown: str) -> None:
    assert printable(raw) == shown


def test_exec_failed_quotes_the_guests_stderr_escaped() -> None:
    from lkctl.api import ExecFailed, ExecResult

    e = ExecFailed(["make"], ExecResult(2, b"", b"warning\n\x1b]52;c;b3duZWQ=\x07\x1b[31merror: x\x1b[0m\n"))
    assert e.message == "'make' exited 2: \\x1b]52;c;b3duZWQ=\\x07\\x1b[31merror: x\\x1b[0m"

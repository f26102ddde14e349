"""vm.kill --signal takes numbers too, as `docker kill -s 9` and kill(1) do."""

from __future__ import annotations

import signal

import pytest

from lkctl.errors import ConfigError
from lkctl.flags import parse_signal


@pytest.mark.parametrize(("text", "sig"), [("9", signal.SIGKILL), ("15", signal.SIGTERM), (" 2 ", signal.SIGINT)])
def test_parse_signal_takes_a_number(text: str, sig: signal.Signals) -> None:
    assert parse_signal(text) is sig  # before: "unknown signal '9'"


@pytest.mark.parametrize("text", ["0", "99999", "-9", "9x"])
def test_parse_signal_refuses_a_number_that_is_no_signal(text: str) -> None:
    with pytest.raises(ConfigError, match="unknown signal"):
        parse_signal(text)

import sys
from datetime import UTC, datetime

import pytest
from invoke.context import Context

from lkctl.errors import ConfigError
from lkctl.tasks._adapter import parse_vars, remainder_argv
from lkctl.tasks._format import age, table


def test_table_pads_by_characters() -> None:
    assert table(["ID", "NAME"], [["1", "é-long"], ["22", "b"]]) == "ID  NAME\n1   é-long\n22  b"
    # cells are text, never a format string; trailing padding is cut; no rows is the header alone
    assert table(["A", "B", "C"], [["{0}", "{}", ""], ["x", "", "z"]]) == "A    B   C\n{0}  {}\nx        z"
    assert table(["ID", "NAME"], []) == "ID  NAME"
    with pytest.raises(ValueError):
        table(["ID", "NAME"], [["1"]])  # a short row is a bug, never a silently shifted column


def test_age() -> None:
    now = datetime(2026, 1, 2, tzinfo=UTC)
    assert age("2026-01-01T23:59:30+00:00", now) == "30s"
    assert age("2026-01-01T23:00:00+00:00", now) == "1h"
    assert age("2025-12-30T00:00:00+00:00", now) == "3d"


def test_parse_vars_splits_on_first_equals() -> None:
    assert parse_vars(["A=b=c", "K= v "]) == {"A": "b=c", "K": " v "}
    with pytest.raises(ConfigError, match="NAME=VALUE"):
        parse_vars(["novalue"])


def test_remainder_keeps_the_users_quoting(monkeypatch: pytest.MonkeyPatch) -> None:
    c = Context()
    c.remainder = "sh -c echo a b"  # what invoke makes of: -- sh -c 'echo a b'
    monkeypatch.setattr(sys, "argv", ["lkctl", "vm.exec", "t1", "--", "sh", "-c", "echo a b"])
    assert remainder_argv(c) == ["sh", "-c", "echo a b"]
    monkeypatch.setattr(sys, "argv", ["python"])
    assert remainder_argv(c) == ["sh", "-c", "echo", "a", "b"]

"""The thin layer between invoke and the library: settings from config, library errors to exit codes."""

from __future__ import annotations

import functools
import shlex
import sys
from collections.abc import Callable, Mapping
from typing import Any, ParamSpec, TypeVar

from invoke.context import Context
from invoke.exceptions import Exit

from lkctl.errors import LkError
from lkctl.settings import Settings, load_settings

__all__ = ["adapt", "parse_vars", "remainder_argv", "settings_from"]

P = ParamSpec("P")
R = TypeVar("R")


def _plain(obj: Any) -> Any:
    if isinstance(obj, Mapping) or hasattr(obj, "keys"):
        return {k: _plain(obj[k]) for k in obj}
    return obj


def settings_from(c: Context) -> Settings:
    """Settings from the invoke config of `c` (a user's own Context works too: missing keys mean defaults)."""
    try:
        tree = c.config.get("lkctl", {})
    except AttributeError:
        tree = {}
    return load_settings({"lkctl": _plain(tree)})


def adapt(func: Callable[P, R]) -> Callable[P, R]:
    """Turn LkError into `Exit(message, code)` and Ctrl-C into exit 130, so users never see a traceback."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except LkError as e:
            raise Exit(f"lkctl: {e.message}", code=e.exit_code) from None
        except KeyboardInterrupt:
            raise Exit("lkctl: interrupted", code=130) from None

    return wrapper


def remainder_argv(c: Context) -> list[str]:
    """The words after `--` exactly as the user typed them.

    invoke joins them into one string (`c.remainder`), losing quoting; when this process was started from a
    command line whose tail after `--` is those same words, take them from `sys.argv` unchanged.
    """
    remainder = getattr(c, "remainder", "") or ""
    if not remainder:
        return []
    argv = sys.argv
    if "--" in argv:
        tail = argv[argv.index("--") + 1 :]
        if " ".join(tail) == remainder:
            return tail
    return shlex.split(remainder)


def parse_vars(items: list[str] | None, *, flag: str = "--var") -> dict[str, str]:
    """`--var K=V` (repeatable; `flag` names it in errors) into a dict; a later K wins."""
    from lkctl.errors import ConfigError

    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"{flag} {item!r}: expected NAME=VALUE")
        out[key] = value
    return out

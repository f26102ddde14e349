"""What lkctl says about command lines: usage lines, option help, parse errors in lkctl's words, did-you-mean.

Shared by the `lkctl` Program (lkctl.cli) and the tasks' own `--help` (lkctl.tasks._adapter), so neither imports
the other; pure functions over invoke's parser objects.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from invoke.parser import Argument, ParserContext

__all__ = ["INVOKE_ONLY", "did_you_mean", "explain_parse_error", "option_help", "task_usage"]

# invoke's core flags about its own shell commands (c.run): lkctl's tasks run none, so they would do nothing
# (or, for --dry, still boot a VM). They are not offered; typing one gets this explanation.
INVOKE_ONLY = {
    "command-timeout": ("T",),
    "dry": ("R",),
    "echo": ("e",),
    "hide": (),
    "prompt-for-sudo-password": (),
    "pty": ("p",),
    "warn-only": ("w",),
    "write-pyc": (),
}
INVOKE_ONLY_SPELLINGS = {f"--{n}" for n in INVOKE_ONLY}

# What follows a task's positionals in its usage line.
_TRAILING = {"vm.exec": "-- COMMAND [ARG...]"}


def did_you_mean(word: str, names: Iterable[str]) -> list[str]:
    """Task names close to `word` (`vm.runn` → vm.run; `ps` → vm.ps; `image.list` → image.ls)."""
    names = sorted(set(names))
    close = difflib.get_close_matches(word, names, n=3, cutoff=0.6)
    tail = word.rpartition(".")[2]
    by_tail = [n for n in names if n.rpartition(".")[2] == tail]
    by_tail += [n for n in names if n.rpartition(".")[2] in difflib.get_close_matches(tail, [_tail(n)], cutoff=0.75)]
    out: list[str] = []
    for n in [*close, *by_tail]:
        if n not in out:
            out.append(n)
    return out[:3]


def _tail(name: str) -> str:
    return name.rpartition(".")[2]


def task_usage(binary: str, name: str, positionals: Sequence[str], has_options: bool) -> str:
    """`Usage: lkctl vm.exec [OPTIONS] VM -- COMMAND [ARG...]`."""
    words = [binary, name]
    if has_options:
        words.append("[OPTIONS]")
    words += [p.upper().replace("-", "_") for p in positionals]
    if name in _TRAILING:
        words.append(_TRAILING[name])
    return "Usage: " + " ".join(words)


def option_help(arg: Argument) -> tuple[str, str]:
    """`-m INT, --memory=INT`, `-v VALUE, --var=VALUE (repeatable)`, `--[no-]wait` and the option's help text."""
    name = next(n for n in arg.names if len(n) > 1)
    long = f"--[no-]{name}" if arg.kind is bool and arg.default is True else f"--{name}"
    value = {str: "STRING", int: "INT", float: "NUMBER", list: "VALUE"}.get(arg.kind, "")
    shorts = [n for n in arg.names if len(n) == 1]
    spec = ", ".join([*(f"-{n} {value}".rstrip() for n in shorts), long + (f"={value}" if value else "")])
    text = arg.help or ""
    if arg.kind is list and "repeatable" not in text:
        text = f"{text} (repeatable)".strip()
    return spec, text


def _first_string_option(ctx: ParserContext) -> str | None:
    for arg in ctx.args.values():
        if not arg.positional and arg.kind is str:
            return str(arg.name)
    return None


def explain_parse_error(message: str, ctx: ParserContext | None, binary: str = "lkctl") -> str:
    """invoke's parse error as one line that says what to type instead."""
    name = ctx.name if ctx is not None and ctx.name else None
    helpme = f"({binary} {name} --help)" if name else f"({binary} --help)"
    m = re.fullmatch(r"No idea what '(.*)' is!", message)
    if m:
        word = m.group(1)
        if word in INVOKE_ONLY_SPELLINGS or word in ("-R", "-T"):
            dry = word in ("--dry", "-R")
            what = "--dry-run on vm.run shows what would start" if dry else "lkctl has no such option"
            return f"{word} is an invoke option for shell commands, which lkctl's tasks do not run; {what}"
        if name is None:
            return f"unknown option {word} {helpme}"
        if word.startswith("-"):
            flags = [f for f in ctx.flags if f.startswith("--")] if ctx is not None else []
            close = difflib.get_close_matches(word, flags, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]}?" if close else ""
            return f"{name} has no option {word}{hint} {helpme}"
        if name in _TRAILING:
            return f"{name} takes the command after --: {binary} {name} VM -- {word} ... {helpme}"
        option = _first_string_option(ctx) if ctx is not None else None
        if option:
            return f"{name} does not take {word!r} here; did you mean --{option} {word}? {helpme}"
        return f"{name} takes no argument {word!r} {helpme}"
    m = re.fullmatch(r"'(.*)' did not receive required positional arguments: (.*)", message)
    if m:
        missing = " ".join(w.strip("'").upper() for w in m.group(2).split(", "))
        return f"{m.group(1)} needs {missing} {helpme}"
    m = re.fullmatch(r"Flag '?<Argument: ([\w-]+).*' needed value and was not given one!", message)
    m = m or re.fullmatch(r"Flag <Argument: ([\w-]+).*> needed value and was not given one!", message)
    if m:
        return f"--{m.group(1)} needs a value {helpme}"
    m = re.fullmatch(r"Flag <Argument: ([\w-]+).*> doesn't take any value!", message)
    if m:
        return f"--{m.group(1)} is an on/off flag and takes no value {helpme}"
    return f"{message} {helpme}"

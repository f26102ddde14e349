"""`${VAR}` / `${VAR:-default}` / `$${VAR}` substitution that keeps LinuxKit YAML valid whatever a value holds.

The Go tool pasted values into the text as they were, expanded them twice and never escaped them, so a public key
with a colon, a password with a quote or a multi-line script broke the YAML or injected keys. Here each
placeholder is first replaced by an inert token, the result is scanned by the YAML scanner to learn which scalar
(and which style: plain, quoted, block) every token sits in, and then each such scalar is written back with the
values spliced into its *parsed* text and emitted in a style that cannot be misread:

- a placeholder that is a whole plain value stays typed when its value is an integer, a decimal or true/false
  (`uid: ${UID:-0}`); any other value becomes a string: plain when YAML reads it back unchanged, else
  double-quoted, or a literal block scalar (`|`) when it spans lines and a block may stand there;
- inside a quoted scalar or a larger plain one, the whole scalar is re-emitted quoted with the value escaped;
- inside a literal block (`|`) the value's lines are indented to the block's indentation, layout kept;
- in a comment, line breaks become `\\n` so the comment stays one line.

Values are never expanded again (`${X}` in a value stays `${X}`). Pure functions over text.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from lkctl.errors import ConfigError

__all__ = [
    "Placeholder",
    "Variables",
    "find_placeholders",
    "missing_message",
    "substitute",
    "variables_of",
    "yaml_scalar",
]

#: `$${` (a literal `${`) or a placeholder; a default cannot contain `}`, names are shell-like
_PLACEHOLDER = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
#: what the YAML reader refuses anywhere in a stream (pyyaml's NON_PRINTABLE), plus NEL and the line separators
_UNSAFE_CLASS = "[^\x09\x0a\x0d\x20-\x7e\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]|[\u2028\u2029]"


@functools.cache
def _unsafe() -> re.Pattern[str]:
    return re.compile(_UNSAFE_CLASS)  # compiled on first use: 5 ms that an unchanged build need not pay


#: whole values that keep their YAML type: `memory: ${MEMORY:-2048}` is an integer, `readonly: ${RO:-false}` a bool
_TYPED = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?|true|false")
#: plain scalars YAML 1.2 (Go's yaml.v3, LinuxKit) would not read as a string, though YAML 1.1 (pyyaml) might
_YAML12_NOT_STR = re.compile(
    r"[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+|[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?"
    r"|[-+]?\.(inf|Inf|INF)|\.(nan|NaN|NAN)|null|Null|NULL|~|true|True|TRUE|false|False|FALSE|"
)


@dataclass(frozen=True)
class Placeholder:
    start: int
    end: int
    name: str  # "" for a `$${` escape
    default: str | None
    line: int


@dataclass(frozen=True)
class Variables:
    """The variables a template uses: required ones with the lines they appear on, optional ones with defaults."""

    required: dict[str, list[int]] = field(default_factory=dict)
    optional: dict[str, str] = field(default_factory=dict)  # the first default given for each name
    lines: dict[str, list[int]] = field(default_factory=dict)  # every name → the lines it appears on

    @property
    def names(self) -> list[str]:
        return list(self.lines)


def find_placeholders(text: str) -> list[Placeholder]:
    out = []
    line, last = 1, 0
    for m in _PLACEHOLDER.finditer(text):
        line += text.count("\n", last, m.start())
        last = m.start()
        out.append(Placeholder(m.start(), m.end(), m.group(1) or "", m.group(2), line))
    return out


def variables_of(text: str) -> Variables:
    """Required and optional variables of a `${}` template. A name used anywhere without a default is required."""
    found = Variables()
    for p in find_placeholders(text):
        if not p.name:
            continue
        found.lines.setdefault(p.name, [])
        if p.line not in found.lines[p.name]:
            found.lines[p.name].append(p.line)
        if p.default is None:
            found.required.setdefault(p.name, [])
            if p.line not in found.required[p.name]:
                found.required[p.name].append(p.line)
        else:
            found.optional.setdefault(p.name, p.default)
    for name in found.required:
        found.optional.pop(name, None)
    return found


def missing_message(source: str, missing: Mapping[str, list[int]]) -> str:
    where = ", ".join(f"{n} (line{'s' if len(ls) > 1 else ''} {', '.join(map(str, ls))})" for n, ls in missing.items())
    return f"{source} needs {'these variables' if len(missing) > 1 else 'a variable'}: {where}; pass --var NAME=VALUE"


# -- emitting scalars ----------------------------------------------------------------------------------------
def _escape_unsafe(s: str) -> str:
    """Characters YAML refuses or reads as line breaks (NEL, U+2028) as `\\uXXXX` escapes."""
    return _unsafe().sub(
        lambda m: f"\\u{ord(m.group()):04x}" if ord(m.group()) < 0x10000 else f"\\U{ord(m.group()):08x}", s
    )


def _double_quoted(s: str) -> str:
    # JSON escapes are YAML double-quoted escapes; what JSON leaves raw but YAML refuses is escaped too
    return _escape_unsafe(json.dumps(s, ensure_ascii=False))


def _plain_ok(s: str, flow: bool) -> bool:
    import yaml

    if not s or s != s.strip() or "\n" in s or "\r" in s or _unsafe().search(s) or _YAML12_NOT_STR.fullmatch(s):
        return False
    if flow and any(c in s for c in ",[]{}"):
        return False
    try:
        return bool(yaml.safe_load(s) == s)  # YAML 1.1 reads it back as this very string (no `: `, ` #`, `-`...)
    except yaml.YAMLError:
        return False


def yaml_scalar(value: object) -> str:
    """`value` as a YAML flow scalar that reads back as the same value: the `yaml` filter of `.j2` templates."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return json.dumps(value)
    if isinstance(value, str):
        return _double_quoted(value)
    return _escape_unsafe(json.dumps(value, ensure_ascii=False))  # a list or mapping, in flow style


def _block(s: str, parent_col: int, comment: str) -> str | None:
    """`s` as a literal block scalar whose content is indented 2 past the parent, or None if it cannot be one."""
    if parent_col < 0 or "\r" in s or _unsafe().search(s):
        return None
    body = s.rstrip("\n")
    trailing = len(s) - len(body)
    chomp = "-" if trailing == 0 else ("" if trailing == 1 else "+")
    lines = body.split("\n")
    indicator = "2" if any(ln.startswith(" ") for ln in lines) else ""  # else leading spaces read as indentation
    pad = " " * (parent_col + 2)
    out = [f"|{indicator}{chomp}" + (f" {comment}" if comment else "")]
    out += [pad + ln if ln else "" for ln in lines]
    out += [""] * max(trailing - 1, 0)
    return "\n".join(out)


@dataclass(frozen=True)
class _Scalar:
    start: int
    end: int
    value: str
    style: str | None  # None (plain), ', ", |, >
    flow: bool
    key: bool
    parent_col: int


def _scan(text: str, source: str) -> list[_Scalar]:
    import yaml

    from lkctl.yamlio import scan

    out: list[_Scalar] = []
    flow = 0
    parent_col = -1
    after_key = False
    try:
        for tok in scan(text):
            if isinstance(tok, yaml.FlowSequenceStartToken | yaml.FlowMappingStartToken):
                flow += 1
            elif isinstance(tok, yaml.FlowSequenceEndToken | yaml.FlowMappingEndToken):
                flow -= 1
            elif isinstance(tok, yaml.KeyToken | yaml.BlockEntryToken):
                parent_col = tok.start_mark.column
            if isinstance(tok, yaml.ScalarToken):
                out.append(
                    _Scalar(
                        tok.start_mark.index, tok.end_mark.index, tok.value, tok.style, flow > 0, after_key, parent_col
                    )
                )
            after_key = isinstance(tok, yaml.KeyToken)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{source} is not valid YAML{line}: {e.problem or e.context}") from None
    return out


def _content_indents(span: str) -> list[int]:
    """The indentation of each non-blank content line of a block scalar's text (header line first)."""
    return [len(ln) - len(ln.lstrip(" ")) for ln in span.split("\n")[1:] if ln.strip(" ")]


def _indent_after_first(value: str, pad: str) -> str:
    """`value` with each line after the first indented by `pad` (empty lines stay empty)."""
    first, *rest = value.split("\n")
    return "\n".join([first, *(pad + ln if ln else "" for ln in rest)])


def _in_block(span: str, token_re: re.Pattern[str], values: Mapping[str, str]) -> str | None:
    """A literal block with its tokens replaced in place, each value line indented like the block; None when
    that would change how the block is read (a value whose first line starts with a space, or a character YAML
    refuses), so the caller re-emits the scalar instead."""
    used = [values[t] for t in token_re.findall(span)]
    if any(_unsafe().search(v) or "\r" in v for v in used):
        return None
    indents = _content_indents(span)
    if not indents:
        return None
    pad = " " * min(indents)
    new = token_re.sub(lambda m: _indent_after_first(values[m.group()], pad), span)
    header = span.split("\n", 1)[0]
    explicit = any(c.isdigit() for c in header.split("#", 1)[0])
    new_indents = _content_indents(new)
    if not explicit and (not new_indents or new_indents[0] != min(indents) or min(new_indents) < min(indents)):
        return None
    return new


def _edit(
    sc: _Scalar, span: str, text: str, token_re: re.Pattern[str], values: Mapping[str, str]
) -> tuple[int, int, str]:
    """(start, end, replacement) for one scalar that holds tokens."""
    if sc.style == "|":
        kept = _in_block(span, token_re, values)
        if kept is not None:
            return sc.start, sc.end, kept
    s = token_re.sub(lambda m: values[m.group()], sc.value)
    if sc.style in ("|", ">"):  # re-emitted: the parsed (folded) text with the values in it, as a literal block
        block = None if sc.flow or sc.key else _block(s, sc.parent_col, "")
        if block is not None:
            return sc.start, sc.end, block + ("\n" if span.endswith("\n") else "")
        return sc.start, sc.end, _double_quoted(s) + ("\n" if span.endswith("\n") else "")
    if sc.style is None and token_re.fullmatch(sc.value) and _TYPED.fullmatch(s):
        return sc.start, sc.end, s  # a whole value that is a number or a boolean keeps its type
    if "\n" not in s and sc.style in (None, "'"):
        if _plain_ok(s, sc.flow):
            return sc.start, sc.end, s
        if sc.style == "'" and not _unsafe().search(s):
            return sc.start, sc.end, "'" + s.replace("'", "''") + "'"
    if "\n" in s and sc.style != '"' and not sc.flow and not sc.key:  # an author who double-quoted keeps it
        line_end = text.find("\n", sc.end)
        rest = text[sc.end : line_end if line_end >= 0 else len(text)]
        comment = rest.strip()
        if not comment or comment.startswith("#"):
            block = _block(s, sc.parent_col, comment)  # a trailing comment moves to the block's header line
            if block is not None:
                return sc.start, sc.end + (len(rest) if comment else 0), block
    return sc.start, sc.end, _double_quoted(s)


def substitute(text: str, values: Mapping[str, str], source: str = "template") -> str:
    """Replace every placeholder in `text` (see the module docstring). Missing required variables: one error."""
    holders = find_placeholders(text)
    missing: dict[str, list[int]] = {}
    for p in holders:
        if p.name and p.default is None and p.name not in values:
            lines = missing.setdefault(p.name, [])
            if p.line not in lines:
                lines.append(p.line)
    if missing:
        raise ConfigError(missing_message(source, missing))
    if not holders:
        return text
    import secrets  # 10 ms of imports (random, hmac, base64): only when a placeholder is replaced

    nonce = secrets.token_hex(4)
    while nonce in text:
        nonce = secrets.token_hex(4)
    parts, pos = [], 0
    token_values: dict[str, str] = {}
    for i, p in enumerate(holders):
        parts.append(text[pos : p.start])
        if p.name:
            token = f"lkctl{nonce}v{i}x"
            token_values[token] = values.get(p.name, p.default or "")
            parts.append(token)
        else:
            parts.append("${")  # `$${` is a literal `${`
        pos = p.end
    parts.append(text[pos:])
    tokenized = "".join(parts)
    token_re = re.compile(f"lkctl{nonce}v[0-9]+x")

    def in_comment(s: str) -> str:  # tokens outside every scalar are in comments: keep them one line
        return token_re.sub(
            lambda m: _escape_unsafe(token_values[m.group()]).replace("\r", "\\r").replace("\n", "\\n"), s
        )

    edits: list[tuple[int, int, str]] = []
    for sc in _scan(tokenized, source):
        span = tokenized[sc.start : sc.end]
        if token_re.search(span):
            edits.append(_edit(sc, span, tokenized, token_re, token_values))
    out, pos = [], 0
    for start, end, new in sorted(edits):
        out.append(in_comment(tokenized[pos:start]))
        out.append(new)
        pos = end
    out.append(in_comment(tokenized[pos:]))
    return "".join(out)

"""A bundle's config.json/runtime.json as the shell assignments lkctl's init reads, made at build time.

The guest init (images/init, `jload` in lib.sh) reads a bundle's JSON through json.awk; under TCG that awk run
costs ~0.3 s of the boot per file. The builder writes the same assignments beside the JSON
(`config.json.C.sh`, `runtime.json.R.sh`), and `jload` sources them instead of running awk. The output is
byte-for-byte what json.awk prints (tests/unit/test_shellconfig.py runs both), so nothing else in the guest changes;
an init that does not know these files (LinuxKit's own) ignores them.
"""

from __future__ import annotations

import json
import re
from typing import Any

__all__ = ["INIT_UNREAD", "shell_assignments"]

# Parts of a bundle's config.json that lkctl's shell runtime never reads (only runc does, from the JSON itself):
# left out of config.json.C.sh, because the guest sources that file twice per container and, under TCG, every
# line costs (the capability lists alone are ~170 of a service's ~250 lines). tests/unit/test_shellconfig.py
# checks that no init script names them.
INIT_UNREAD: frozenset[tuple[str, ...]] = frozenset(
    {
        ("process", "capabilities"),
        ("process", "apparmorProfile"),
        ("process", "selinuxLabel"),
        ("linux", "resources"),
        ("linux", "seccomp"),
        ("linux", "maskedPaths"),
        ("linux", "readonlyPaths"),
        ("annotations",),
    }
)

_UNSAFE = re.compile(rb"[^A-Za-z0-9_]")
_SURROGATE = re.compile("[\ud800-\udfff]")  # json.loads joins valid pairs, so these are lone ones


class _Number(str):
    """A JSON number kept as written (json.awk prints numbers verbatim)."""


class _Object(list[tuple[str, Any]]):
    """A JSON object as its (key, value) pairs in order, duplicates kept (json.awk emits every one)."""


def shell_assignments(text: str | bytes, prefix: str, *, omit: frozenset[tuple[str, ...]] = frozenset()) -> bytes:
    """json.awk's output for `text` under `prefix`: `NAME='value'` lines, children before their `__keys`/`__len`.

    `omit` names object members (paths of keys from the top) whose lines are left out, as if json.awk's output
    had been filtered; their parent's `__keys` still lists them. Raises ValueError for text that is not JSON
    (json.awk would fail too; the builder only passes its own JSON).
    """
    doc = json.loads(text, parse_int=_Number, parse_float=_Number, object_pairs_hook=_Object)
    out: list[bytes] = []
    _value(prefix.encode(), doc, out, (), omit)
    return b"".join(line + b"\n" for line in out)


def _utf8(value: str) -> bytes:
    # NUL cannot live in a shell variable (json.awk drops it); a lone surrogate becomes U+FFFD, as in json.awk
    return _SURROGATE.sub("\ufffd", value.replace("\0", "")).encode()


def _quote(value: str) -> bytes:
    return b"'" + _utf8(value).replace(b"'", b"'\\''") + b"'"


def _value(name: bytes, v: Any, out: list[bytes], path: tuple[str, ...], omit: frozenset[tuple[str, ...]]) -> None:
    if isinstance(v, _Object):
        for k, child in v:
            if (*path, k) not in omit:
                _value(name + b"_" + _UNSAFE.sub(b"_", _utf8(k)), child, out, (*path, k), omit)
        out.append(name + b"__keys=" + _quote(" ".join(k for k, _ in v)))
    elif isinstance(v, list):
        for i, child in enumerate(v):
            _value(name + b"_" + str(i).encode(), child, out, (*path, "\0"), omit)  # no key path goes through a list
        out.append(name + b"__len=" + _quote(str(len(v))))
    elif isinstance(v, bool):
        out.append(name + b"=" + _quote("true" if v else "false"))
    elif v is None:
        out.append(name + b"=''")
    else:
        out.append(name + b"=" + _quote(str(v)))

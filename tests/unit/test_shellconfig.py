"""The builder's precomputed bundle assignments are byte-for-byte what the guest's json.awk prints.

lkctl's init sources `config.json.C.sh`/`runtime.json.R.sh` instead of running json.awk when they are there, so
any difference would change what a container sees. Each case runs busybox awk (the guest's) and the Python port.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from lkctl.build.ociconfig import go_json
from lkctl.build.shellconfig import INIT_UNREAD, shell_assignments
from tests.unit.test_json_awk import JSON_AWK, busybox  # noqa: F401 (the fixture)

DOCS = [
    {"process": {"args": ["it's", "'", "a\\b", 'say "hi"', "line1\nline2\n", "tab\there\r", "$(id) `id` ${x}", ""]}},
    {"k": "naïve 日本 🙂", "nul": "a\u0000b", "pair": "\U0001f600", "ls": "\u2028<&>"},
    {"mounts": [{"destination": "/proc", "options": ["nosuid"]}, {"options": []}], "matrix": [[1, [2, 3]], [], [[[]]]]},
    {"linux": {"sysctl": {"net.ipv4.ip_forward": "1"}}, "empty": {}, "e": [], "weird key!é": {"q'": "z"}},
    {"i": 0, "n": -12.5e3, "big": 18446744073709551615, "t": True, "f": False, "z": None, "fl": 0.1},
    [],
    {},
    "just a string",
]


def awk(busybox: str, data: bytes, prefix: str) -> bytes:  # noqa: F811 (busybox is the fixture's value)
    run = subprocess.run(
        [busybox, "awk", "-v", f"prefix={prefix}", "-f", str(JSON_AWK)], input=data, capture_output=True, timeout=30
    )
    assert run.returncode == 0, run.stderr
    return run.stdout


@pytest.mark.parametrize("doc", DOCS, ids=range(len(DOCS)))
@pytest.mark.parametrize("dump", ["go", "compact"])
def test_assignments_match_json_awk_byte_for_byte(busybox: str, doc: object, dump: str) -> None:  # noqa: F811
    data = go_json(doc) if dump == "go" else json.dumps(doc, separators=(",", ":")).encode()
    assert shell_assignments(data, "C") == awk(busybox, data, "C")


def test_escapes_as_written_match_json_awk(busybox: str) -> None:  # noqa: F811
    data = rb'{"a": "caf\u00e9 \ud83d\ude00 \u0041", "b": "x\ud800y", "n": 1E+2, "dup": 1, "dup": 2, "s": "\/\b\f"}'
    assert shell_assignments(data, "R") == awk(busybox, data, "R")


def test_omitted_members_are_json_awks_lines_without_theirs(busybox: str) -> None:  # noqa: F811
    doc = {
        "process": {"args": ["sh"], "capabilities": {"bounding": ["CAP_KILL"], "effective": []}, "cwd": "/"},
        "linux": {"resources": {"devices": [{"allow": True}]}, "namespaces": [{"type": "mount"}]},
        "mounts": [{"destination": "/x", "capabilities": "kept: only top-down key paths are omitted"}],
    }
    data = go_json(doc)
    omit = frozenset({("process", "capabilities"), ("linux", "resources")})
    dropped = (b"C_process_capabilities_", b"C_linux_resources_")
    lines = awk(busybox, data, "C").splitlines(keepends=True)
    expected = b"".join(line for line in lines if not line.startswith(dropped))
    assert shell_assignments(data, "C", omit=omit) == expected
    assert b"C_mounts_0_capabilities=" in expected


def test_init_scripts_never_read_what_the_builder_leaves_out() -> None:
    images = JSON_AWK.parents[5]
    scripts = (images / "init", images / "sshd")
    text = "\n".join(p.read_text(errors="replace") for d in scripts for p in d.rglob("*") if p.is_file())
    for path in INIT_UNREAD:
        name = "_".join(path)  # C_<name>, or a name the scripts build as ${prefix}_<name>
        assert name not in text, f"C_{name} is read by an init script but left out of config.json.C.sh"

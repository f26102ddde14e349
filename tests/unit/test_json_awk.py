"""json.awk, the guest init's JSON reader, run with the busybox awk the guest has, on tricky JSON.

Each case flattens a document and evals the output in busybox sh the way the init does, then compares what the
shell sees with what Python's json module reads from the same text.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, require_busybox

JSON_AWK = REPO / "images" / "init" / "rootfs" / "usr" / "lib" / "lkctl" / "json.awk"


@pytest.fixture(scope="module")
def busybox() -> str:
    return require_busybox()


def flatten(busybox: str, text: str | bytes, prefix: str = "J") -> subprocess.CompletedProcess[bytes]:
    data = text.encode() if isinstance(text, str) else text
    return subprocess.run(
        [busybox, "awk", "-v", f"prefix={prefix}", "-f", str(JSON_AWK)], input=data, capture_output=True, timeout=30
    )


def shell_values(busybox: str, text: str, names: list[str], prefix: str = "J") -> list[bytes]:
    """Eval json.awk's output in busybox sh and print each variable NUL-terminated."""
    out = flatten(busybox, text, prefix)
    assert out.returncode == 0, out.stderr
    script = out.stdout.decode() + "\n" + "".join(f'printf "%s\\0" "${{{n}-UNSET}}"\n' for n in names)
    run = subprocess.run([busybox, "sh", "-c", script], capture_output=True, timeout=30)
    assert run.returncode == 0, run.stderr
    return run.stdout.split(b"\0")[:-1]


def test_strings_with_quotes_backslashes_and_control_escapes_survive_eval(busybox: str) -> None:
    tricky = [
        "it's",
        "'",
        "''",
        "a\\b",
        'say "hi"',
        "line1\nline2\n",
        "tab\there\r",
        "$HOME `id` $(id) ${x}",
        "\\'\\\\'",
        "/slash",
        "\b\f",
        "ends with backslash\\",
        "",
    ]
    doc = json.dumps({"process": {"args": tricky}})
    names = [f"J_process_args_{i}" for i in range(len(tricky))] + ["J_process_args__len"]
    values = shell_values(busybox, doc, names)
    assert values[:-1] == [s.encode() for s in tricky]
    assert values[-1] == str(len(tricky)).encode()


def test_unicode_escapes_become_utf8_including_surrogate_pairs(busybox: str) -> None:
    doc = r'{"a": "caf\u00e9 \u20ac \ud83d\ude00 \u0041\u00DF", "b": "\u2028", "lone": "x\ud800y", "nul": "a\u0000b"}'
    values = shell_values(busybox, doc, ["J_a", "J_b", "J_lone", "J_nul"])
    assert values[0] == "café € 😀 Aß".encode()
    assert values[1] == "\u2028".encode()
    assert values[2] == "x\ufffdy".encode()  # a lone surrogate cannot be UTF-8: U+FFFD
    assert values[3] == b"ab"  # a shell variable cannot hold NUL


def test_raw_utf8_passes_through_unchanged(busybox: str) -> None:
    assert shell_values(busybox, '{"k": "naïve 日本 🙂"}', ["J_k"]) == ["naïve 日本 🙂".encode()]


def test_nested_arrays_and_objects_get_indexed_names_lengths_and_keys(busybox: str) -> None:
    doc = {
        "mounts": [
            {"destination": "/proc", "options": ["nosuid", "nodev"]},
            {"destination": "/dev", "options": []},
        ],
        "matrix": [[1, [2, 3]], [], [[[]]]],
        "linux": {"sysctl": {"net.ipv4.ip_forward": "1", "kernel.msgmax": "65536"}},
        "empty": {},
    }
    names = [
        "J_mounts__len",
        "J_mounts_0_destination",
        "J_mounts_0_options_1",
        "J_mounts_0_options__len",
        "J_mounts_1_options__len",
        "J_matrix_0_1_1",
        "J_matrix_1__len",
        "J_matrix_2_0_0__len",
        "J_linux_sysctl__keys",
        "J_linux_sysctl_net_ipv4_ip_forward",
        "J__keys",
        "J_empty__keys",
    ]
    assert shell_values(busybox, json.dumps(doc, indent=4), names) == [
        b"2",
        b"/proc",
        b"nodev",
        b"2",
        b"0",
        b"3",
        b"0",
        b"0",
        b"net.ipv4.ip_forward kernel.msgmax",
        b"1",
        b"mounts matrix linux empty",
        b"",
    ]


def test_numbers_booleans_and_null_are_words_and_empty(busybox: str) -> None:
    doc = '{"i": 0, "n": -12.5e+3, "big": 18446744073709551615, "t": true, "f": false, "z": null}'
    assert shell_values(busybox, doc, ["J_i", "J_n", "J_big", "J_t", "J_f", "J_z"]) == [
        b"0",
        b"-12.5e+3",
        b"18446744073709551615",
        b"true",
        b"false",
        b"",
    ]


def test_keys_with_shell_special_characters_cannot_inject_code(busybox: str, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    doc = json.dumps({f"a;touch {marker};b": "v", "$(touch x)": "w", "x' y": {"q'": "z"}})
    out = flatten(busybox, doc)
    assert out.returncode == 0
    run = subprocess.run([busybox, "sh", "-c", out.stdout.decode() + '\nprintf "%s" "$J_x__y_q_"'], capture_output=True)
    assert run.returncode == 0 and run.stdout == b"z"
    assert not marker.exists()


def test_the_prefix_is_configurable(busybox: str) -> None:
    assert shell_values(busybox, '{"root": {"path": "rootfs"}}', ["C_root_path"], prefix="C") == [b"rootfs"]


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "{",
        '{"a": 1,}',
        '{"a" 1}',
        "[1 2]",
        '{"a": "\\x"}',
        '{"a": "\\u12"}',
        '{"a": tru}',
        "[1] 2",
        '{"a": 1}}',
        "{'a': 1}",
    ],
)
def test_invalid_json_fails_and_prints_nothing_to_eval(busybox: str, bad: str) -> None:
    out = flatten(busybox, bad)
    assert out.returncode == 1
    assert out.stdout == b""
    assert b"json.awk:" in out.stderr


def test_a_real_linuxkit_config_round_trips(busybox: str) -> None:
    config: dict[str, Any] = {
        "ociVersion": "1.1.0",
        "process": {
            "terminal": False,
            "user": {"uid": 0, "gid": 0},
            "args": ["/usr/sbin/lkctl-sshd", "--flag=a b"],
            "env": ["PATH=/usr/bin:/bin", "GREETING=hello 'world'"],
            "cwd": "/",
            "capabilities": {"bounding": ["CAP_CHOWN", "CAP_SYS_ADMIN"]},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1048576, "soft": 1048576}],
        },
        "root": {"path": "rootfs", "readonly": True},
        "mounts": [
            {"destination": "/dev", "type": "bind", "source": "/dev", "options": ["rw", "rbind", "rshared"]},
        ],
        "linux": {"namespaces": [{"type": "mount"}, {"type": "pid"}], "devices": [{"path": "/dev/kvm", "major": 10}]},
        "annotations": {"org.mobyproject.config": json.dumps({"binds": ["/a:/b"]})},
    }
    values = shell_values(
        busybox,
        json.dumps(config, indent=4),
        [
            "J_process_args_1",
            "J_process_env_1",
            "J_process_rlimits_0_hard",
            "J_root_readonly",
            "J_mounts_0_options_2",
            "J_linux_namespaces_1_type",
            "J_linux_devices_0_major",
            "J_annotations_org_mobyproject_config",
        ],
    )
    assert values == [
        b"--flag=a b",
        b"GREETING=hello 'world'",
        b"1048576",
        b"true",
        b"rshared",
        b"pid",
        b"10",
        json.dumps({"binds": ["/a:/b"]}).encode(),
    ]

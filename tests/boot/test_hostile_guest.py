"""A guest that writes terminal control sequences on its console: lkctl's own messages quote that console (a
failed start's "last console lines") with the sequences escaped, while `vm.logs` gives the console as it is."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.boot.conftest import Cli, qemu_pids_for

pytestmark = pytest.mark.boot

# OSC 0 (window title), OSC 52 (a clipboard write: "owned"), ED (clear the screen), C1 CSI as UTF-8, a right-to-left
# override; then the line lkctl takes for a fatal boot error, so `vm.run -d` fails at once and diagnoses
HOSTILE = r"""
kernel:
  image: lkctl.local/kernel:latest
  cmdline: "console=ttyS0 quiet"
init:
  - lkctl.local/init:latest
services:
  - name: hostile
    image: lkctl.local/init:latest
    command:
      - /bin/sh
      - -c
      - |
        printf '\033]0;pwned-title\007\033]52;c;b3duZWQ=\007\033[2J\302\2332Jx\342\200\256y\n'
        echo 'lkctl-init: fatal: hostile'
        exec sleep 100000
"""

RAW = ("\x1b]0;pwned-title\x07", "\x1b]52;c;b3duZWQ=\x07", "\x1b[2J", "\x9b2J", "\u202e")


def test_a_failed_start_quotes_the_guests_console_with_control_sequences_escaped(
    cli: Cli, lkctl_home: Path, tmp_path: Path
) -> None:
    yml = tmp_path / "hostile.yml"
    yml.write_text(HOSTILE)
    out = cli("vm.run", f"--image={yml}", "-d", "--name", "hostile", "--timeout", "300", check=False, timeout=900)
    assert out.returncode == 1, out.stderr
    assert "did not become ready" in out.stderr and "last console lines" in out.stderr, out.stderr
    # the guest's bytes are in the message, shown, not sent to the terminal
    assert "\\x1b]52;c;b3duZWQ=\\x07" in out.stderr and "\\x9b2J" in out.stderr and "\\u202e" in out.stderr
    for seq in RAW:
        assert seq not in out.stderr + out.stdout, (seq, out.stderr)
    assert not any(c in out.stderr for c in "\x1b\x07\x9b\r"), out.stderr
    assert qemu_pids_for(lkctl_home) == []  # the failed start killed its QEMU
    # the record's reason (vm.ps, vm.inspect) is lkctl's line, without the guest's sequences
    (row,) = json.loads(cli("vm.ps", "--all", "--json").stdout)
    assert row["status"] == "error" and "did not become ready" in row["error"], row
    assert "\x1b" not in row["error"]
    # vm.logs is the console itself, byte for byte, as `docker logs` is (a terminal shows what the guest printed)
    logs = cli("vm.logs", "hostile").stdout
    assert all(seq in logs for seq in RAW), logs[-500:]
    cli("vm.rm", "hostile")

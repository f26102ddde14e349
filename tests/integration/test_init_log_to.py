"""init's `log_to` under the real busybox sh the guest runs: a service's line reaches the console as soon as it
is written, not when the next one comes (busybox sed reads one line ahead, so it held the latest line back)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from tests.conftest import REPO, require_busybox

LIB = REPO / "images" / "init" / "rootfs" / "usr" / "lib" / "lkctl" / "lib.sh"


def _wait_for(path: Path, text: str, timeout: float = 10) -> str:
    deadline = time.monotonic() + timeout
    seen = ""
    while time.monotonic() < deadline:
        seen = path.read_text(encoding="utf-8") if path.exists() else ""
        if text in seen:
            break
        time.sleep(0.02)
    return seen


def test_each_service_line_reaches_the_console_at_once(tmp_path: Path) -> None:
    busybox = require_busybox()
    console, log = tmp_path / "console", tmp_path / "svc.log"
    env = {"PATH": os.environ["PATH"], "LKCTL_CONSOLE": str(console), "LKCTL_DEBUG": ""}
    sh = subprocess.Popen([busybox, "sh", "-c", f'. "{LIB}"; log_to web "{log}"'], stdin=subprocess.PIPE, env=env)
    assert sh.stdin is not None
    try:
        sh.stdin.write(b"first line\n")
        sh.stdin.flush()
        assert _wait_for(console, "[web] first line\n") == "[web] first line\n"  # nothing else written yet
        sh.stdin.write(b"second 100% \\n $HOME `x`\n")
        sh.stdin.flush()
        assert _wait_for(console, "second") == "[web] first line\n[web] second 100% \\n $HOME `x`\n"
        sh.stdin.write(b"no newline at the end")
        sh.stdin.close()
        assert sh.wait(timeout=10) == 0
    finally:
        if sh.poll() is None:
            sh.kill()
            sh.wait()
    assert console.read_text().endswith("[web] no newline at the end\n")
    assert log.read_text() == "first line\nsecond 100% \\n $HOME `x`\nno newline at the end"

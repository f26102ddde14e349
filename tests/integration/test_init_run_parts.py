"""init's `run_parts` under the real busybox sh the guest runs: /bin/sh scripts are sourced in a subshell (no new
shell parsing lib.sh again, under TCG a process costs the guest 20-40 ms), everything else is executed as before;
order, exit statuses and isolation are what separate processes gave."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO, require_busybox

pytestmark = pytest.mark.integration

LIB = REPO / "images" / "init" / "rootfs" / "usr" / "lib" / "lkctl" / "lib.sh"


def test_scripts_run_in_order_isolated_with_their_status(tmp_path: Path) -> None:
    busybox = require_busybox()
    parts, out, console = tmp_path / "init.d", tmp_path / "out", tmp_path / "console"
    parts.mkdir()
    scripts = {
        # sourced: sees init's functions, its variables and exit stay in its subshell
        "010-sh": '#!/bin/sh\nleak=from-010\necho "010 pid-differs=$([ "$$" = "$PARENT" ] && echo no || echo yes)"'
        f' >>{out}\ntype say >/dev/null && echo "010 has say" >>{out}\nexit 3\n',
        "020-after": f'#!/bin/sh\necho "020 leak=${{leak-unset}}" >>{out}\n',
        # not /bin/sh: executed as a program, as before
        "030-busybox": f"#!{busybox} sh\necho 030 executed >>{out}\n",
        "040-plain": f"echo 040 given to sh >>{out}\n",  # not executable: `sh FILE`
    }
    for name, text in scripts.items():
        (parts / name).write_text(text)
        if name != "040-plain":
            (parts / name).chmod(0o755)
    env = {"PATH": os.environ["PATH"], "LKCTL_DEBUG": ""}
    run = subprocess.run(
        [busybox, "sh", "-c", f'. "{LIB}"; say() {{ echo "$*" >>"{console}"; }}; PARENT=$$; run_parts "{parts}";'
         f' echo "init leak=${{leak-unset}}" >>{out}'],
        env=env, capture_output=True, timeout=30, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert out.read_text().splitlines() == [
        "010 pid-differs=no",  # $$ is the parent shell's in a subshell: sourced, not a new process
        "010 has say",
        "020 leak=unset",
        "030 executed",
        "040 given to sh",
        "init leak=unset",
    ]
    assert console.read_text() == f"error: {parts}/010-sh failed with status 3\n"

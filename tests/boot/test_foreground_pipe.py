"""A foreground `vm.run` whose reader goes away (`lkctl vm.run ... | head -1`) ends the VM in order, as a
pipeline member ends on SIGPIPE: exit 141, the VM `stopped` (not an `error` saying "Broken pipe"), no QEMU left,
and a `--rm` VM forgotten."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.boot.conftest import BIN, Cli, qemu_pids_for

pytestmark = pytest.mark.boot


@pytest.mark.parametrize("rm", [False, True])
def test_a_foreground_run_whose_reader_leaves_stops_the_vm_in_order(cli: Cli, lkctl_home: Path, rm: bool) -> None:
    argv = [str(BIN / "lkctl"), "vm.run", "--image=minimal", "--name", "piped", *(["--rm"] * rm)]
    run = subprocess.Popen(argv, env=cli.env, cwd=cli.cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert run.stdout is not None and run.stderr is not None
    first = run.stdout.readline()  # the console's first line, as `head -1` reads it
    run.stdout.close()  # ... and goes away
    with run.stderr:
        err = run.stderr.read().decode()
    code = run.wait(timeout=300)
    assert first, err
    assert code == 141, err
    assert "Traceback" not in err and "Broken pipe" not in err, err
    assert qemu_pids_for(lkctl_home) == []
    rows = [r for r in json.loads(cli("vm.ps", "--all", "--json").stdout) if r["name"] == "piped"]
    if rm:
        assert rows == []  # forgotten (before too, by this vm.ps: an ended --rm VM is forgotten when listed)
    else:
        (row,) = rows
        assert row["status"] == "stopped" and not row["error"], row  # before: error, "[Errno 32] Broken pipe"
        cli("vm.rm", "piped")

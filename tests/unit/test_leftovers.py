"""Owner-tagged temp dirs: what a dead process left is reclaimed, what a live one holds is not."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from lkctl.leftovers import owned_tempdir, owner_alive, reclaim


def test_a_dead_owners_dir_is_reclaimed_and_a_live_ones_is_kept(tmp_path: Path) -> None:
    child = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from pathlib import Path; from lkctl.leftovers import owned_tempdir;"
            "d = owned_tempdir(Path(sys.argv[1]), 'keys-'); (d / 'id').write_text('k'); print(d)",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        check=True,
    )  # fmt: skip  (a real process that made a dir and died, like a SIGKILLed vm.run)
    dead = Path(child.stdout.strip())
    mine = owned_tempdir(tmp_path, "keys-")
    legacy = tmp_path / "keys-abc123"  # no owner tag: not ours to judge
    legacy.mkdir()
    other = tmp_path / "other-p1s0123456789.x"
    other.mkdir()
    assert owner_alive(dead.name, "keys-") is False and owner_alive(mine.name, "keys-") is True
    assert owner_alive(legacy.name, "keys-") is None
    assert mine.stat().st_mode & 0o777 == 0o700
    assert reclaim(tmp_path, "keys-") == [dead]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([mine.name, legacy.name, other.name])


def test_a_reused_pid_does_not_keep_a_dir_alive(tmp_path: Path) -> None:
    import os

    fake = tmp_path / f"keys-p{os.getpid()}s0000000000.abc"  # our PID, another start time
    fake.mkdir()
    assert owner_alive(fake.name, "keys-") is False
    assert reclaim(tmp_path, "keys-") == [fake]

"""init's `fw_cfg_copy` under the real busybox sh the guest runs, on a tree laid out like the kernel's
/sys/firmware/qemu_fw_cfg (by_name/ directories per name component, each entry a link to its by_key/ directory
holding `raw`): every entry lands at its path with its exact bytes and the caller's umask, at any depth, and a copy
that fails leaves no file behind."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO, require_busybox

pytestmark = pytest.mark.integration

LIB = REPO / "images" / "init" / "rootfs" / "usr" / "lib" / "lkctl" / "lib.sh"


def _fw_cfg_tree(root: Path, entries: dict[str, bytes | Path]) -> Path:
    """A qemu_fw_cfg sysfs lookalike under `root`; returns its by_name/opt/lkctl directory."""
    for key, (name, contents) in enumerate(entries.items(), start=32):
        entry = root / "by_key" / str(key)
        entry.mkdir(parents=True)
        (entry / "name").write_text(f"opt/lkctl/{name}\n")
        if isinstance(contents, Path):
            (entry / "raw").symlink_to(contents)
        else:
            (entry / "raw").write_bytes(contents)
        link = root / "by_name" / "opt" / "lkctl" / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(entry, link.parent))
    return root / "by_name" / "opt" / "lkctl"


def _copy(busybox: str, src: Path, dest: Path, log: Path) -> subprocess.CompletedProcess[bytes]:
    env = {"PATH": os.environ["PATH"], "LKCTL_DEBUG": ""}
    return subprocess.run(
        [busybox, "sh", "-c", f'. "{LIB}"; say() {{ echo "$*" >>"{log}"; }}; umask 077; fw_cfg_copy "{src}" "{dest}"'],
        env=env, capture_output=True, timeout=30, check=False,
    )  # fmt: skip


def test_every_entry_lands_at_its_path_byte_exact_and_private(tmp_path: Path) -> None:
    busybox = require_busybox()
    entries: dict[str, bytes | Path] = {
        "ssh/authorized_keys": b"ssh-ed25519 AAAA lkctl\n",
        "ssh/dropbear_ed25519_host_key": b"\x00\x00\x00\x0bssh-ed25519\x00\xff\n\x00",  # binary, no final newline
        "vm-hostname": b"t1",
        "a/b/c/deep": b"deeper than lkctl goes today\n",
    }
    src = _fw_cfg_tree(tmp_path / "fw_cfg", entries)
    dest, log = tmp_path / "run" / "config", tmp_path / "console"
    run = _copy(busybox, src, dest, log)
    assert run.returncode == 0, run.stderr
    for name, contents in entries.items():
        f = dest / name
        assert f.read_bytes() == contents
        assert stat.S_IMODE(f.stat().st_mode) == 0o600
    for d in (dest, dest / "ssh", dest / "a", dest / "a" / "b", dest / "a" / "b" / "c"):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700
    assert sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file()) == sorted(entries)
    assert not log.exists()  # nothing to complain about


def test_a_copy_that_fails_leaves_no_file_and_says_so(tmp_path: Path) -> None:
    busybox = require_busybox()
    # /proc/self/mem is a regular file that opens but cannot be read at offset 0: cat fails after the shell made
    # the destination
    src = _fw_cfg_tree(tmp_path / "fw_cfg", {"ssh/authorized_keys": b"key\n", "env": Path("/proc/self/mem")})
    dest, log = tmp_path / "config", tmp_path / "console"
    run = _copy(busybox, src, dest, log)
    assert run.returncode == 0, run.stderr
    assert (dest / "ssh" / "authorized_keys").read_bytes() == b"key\n"
    assert not (dest / "env").exists()
    assert log.read_text() == f"error: cannot copy fw_cfg {src / 'env'} to {dest / 'env'}\n"

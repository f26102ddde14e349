"""Pruning the warm-start snapshot store on real files: what can never be restored again goes (its kernel, initrd
or QEMU changed or is gone, an older format, a partial or orphaned state file), the rest stays, a snapshot being
taken is left alone, and `image.prune` says what it freed through the real CLI."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from lkctl import paths
from lkctl.runtime.snapshot import prune_snapshots, snapshot_usage, snapshots_dir

LKCTL = str(Path(sys.executable).parent / "lkctl")


def file_identity(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def _memos() -> list[str]:
    return sorted(p.name for p in snapshots_dir().glob("qemu-*.version"))


def _snapshot(digest: str, files: list[Path], qemu: Path, *, size: int = 4096, fmt: int = 0) -> None:
    """A snapshot as take_snapshot leaves it: DIGEST.vmstate and DIGEST.json naming what it was taken with."""
    d = snapshots_dir()
    (d / f"{digest}.vmstate").write_bytes(b"\0" * size)
    inputs: dict[str, Any] = {
        "format": fmt or _current_format(),
        "argv": [str(qemu), "-m", "1024"],
        "files": {str(p): file_identity(p) for p in files},
        "qemu": {"path": str(qemu), "identity": file_identity(qemu), "version": "QEMU emulator version 7.2.0"},
        "env": "",
    }
    info = {"digest": digest, "size": size, "created": "2026-11-30T12:00:00+00:00", "seconds": 9.0, "inputs": inputs}
    (d / f"{digest}.json").write_text(json.dumps(info))
    memo = hashlib.sha256(f"{qemu}:{file_identity(qemu)}".encode()).hexdigest()[:16]
    (d / f"qemu-{memo}.version").write_text("QEMU emulator version 7.2.0\n")


def _current_format() -> int:
    """The format a snapshot taken now has (from the key inputs lkctl makes)."""
    from lkctl.runtime.snapshot import key_inputs

    return int(key_inputs(["qemu"], files={}, qemu={}, env_digest="")["format"])


@pytest.fixture
def image(tmp_path: Path) -> tuple[Path, Path, Path]:
    kernel, initrd, qemu = tmp_path / "m-kernel", tmp_path / "m-initrd.img", tmp_path / "qemu-system-x86_64"
    for p in (kernel, initrd, qemu):
        p.write_bytes(p.name.encode())
    return kernel, initrd, qemu


def test_prune_removes_snapshots_that_can_never_be_restored_and_keeps_the_rest(image: tuple[Path, Path, Path]) -> None:
    kernel, initrd, qemu = image
    other_initrd = initrd.with_name("other-initrd.img")
    other_initrd.write_bytes(b"other")
    gone_initrd = initrd.with_name("gone-initrd.img")
    gone_initrd.write_bytes(b"gone")
    _snapshot("a" * 32, [kernel, initrd], qemu)  # valid
    _snapshot("b" * 32, [kernel, gone_initrd], qemu, size=8192)  # its image was removed
    gone_initrd.unlink()
    _snapshot("c" * 32, [kernel, other_initrd], qemu, size=1024)  # its image was rebuilt in place
    other_initrd.write_bytes(b"rebuilt, longer")
    _snapshot("d" * 32, [kernel, initrd], qemu, fmt=_current_format() - 1)  # an older lkctl's format
    d = snapshots_dir()
    (d / f"{'e' * 32}.vmstate").write_bytes(b"\0" * 100)  # a state file without its .json
    _snapshot("f" * 32, [kernel, initrd], qemu, size=2048)
    (d / f"{'f' * 32}.vmstate").write_bytes(b"\0" * 10)  # cut short
    kept_memos = _memos()
    (d / "qemu-0123456789abcdef.version").write_text("an old QEMU\n")
    before = snapshot_usage()
    assert before.count == 6

    pruned = prune_snapshots()

    assert sorted(pruned.removed) == ["b" * 32, "c" * 32, "d" * 32, "e" * 32, "f" * 32]
    assert pruned.left.count == 1 and before.size - pruned.left.size == pruned.freed
    assert len(kept_memos) == 1
    assert sorted(p.name for p in d.iterdir()) == sorted([f"{'a' * 32}.vmstate", f"{'a' * 32}.json", *kept_memos])


def test_a_new_qemu_binary_at_the_same_path_makes_its_snapshots_stale(image: tuple[Path, Path, Path]) -> None:
    kernel, initrd, qemu = image
    _snapshot("a" * 32, [kernel, initrd], qemu)
    assert prune_snapshots().removed == ()
    qemu.unlink()
    qemu.write_bytes(b"QEMU 8.0")  # an upgrade: a new inode and size
    pruned = prune_snapshots()
    assert pruned.removed == ("a" * 32,) and pruned.left.count == 0
    assert _memos() == []  # its version note went with it


def test_prune_leaves_a_snapshot_that_is_being_taken(image: tuple[Path, Path, Path]) -> None:
    kernel, initrd, qemu = image
    _snapshot("a" * 32, [kernel, initrd], qemu)
    state = snapshots_dir() / f"{'a' * 32}.vmstate"
    state.write_bytes(b"\0" * 10)  # as it looks mid-write
    fd = os.open(snapshots_dir() / f"{'a' * 32}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # as restore() holds it while it takes the snapshot
        assert prune_snapshots().removed == ()
    finally:
        os.close(fd)
    assert prune_snapshots().removed == ("a" * 32,)


def test_prune_without_a_store_creates_nothing() -> None:
    pruned = prune_snapshots()
    assert pruned.removed == () and pruned.freed == 0 and pruned.left.count == 0
    assert not (paths.cache_dir() / "snapshots").exists()


def test_image_prune_says_what_it_freed(image: tuple[Path, Path, Path], lkctl_home: Path, tmp_path: Path) -> None:
    kernel, initrd, qemu = image
    _snapshot("a" * 32, [kernel, initrd], qemu, size=3 << 20)
    _snapshot("b" * 32, [kernel, initrd], qemu, size=1 << 20)
    initrd.unlink()  # the image is gone: neither snapshot can be restored
    env = {k: v for k, v in os.environ.items() if not k.startswith("LKCTL_")}
    env.update(LKCTL_HOME=str(lkctl_home), HOME=str(tmp_path / "home"))
    r = subprocess.run([LKCTL, "image.prune"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120,
                       check=False)  # fmt: skip
    assert r.returncode == 0, r.stderr
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith("lkctl: removed 2 memory snapshot(s) no VM can restore, 4 MiB freed; 0 kept"), r.stderr
    assert snapshot_usage().count == 0

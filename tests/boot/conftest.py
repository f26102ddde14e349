"""Fixtures for tests that boot real VMs through the real `lkctl` and `invoke` command lines."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO, require_qemu

BIN = Path(sys.executable).parent


@dataclass
class Cli:
    env: dict[str, str]
    cwd: Path

    def __call__(self, *args: str, check: bool = True, timeout: float = 300, tool: str = "lkctl",
                 input: bytes | None = None) -> subprocess.CompletedProcess[str]:  # fmt: skip
        proc = subprocess.run(
            [str(BIN / tool), *args], env=self.env, cwd=self.cwd, capture_output=True, text=True, timeout=timeout,
            input=input.decode() if input is not None else None, check=False,
        )  # fmt: skip
        if check and proc.returncode != 0:
            raise AssertionError(f"{tool} {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
        return proc


def read_until(stream: int, needle: bytes, timeout: float) -> bytes:
    """What `stream` (a raw fd) gives until `needle` appears, it ends, or `timeout` seconds pass."""
    buf = b""
    deadline = time.monotonic() + timeout
    while needle not in buf and time.monotonic() < deadline:
        ready, _, _ = select.select([stream], [], [], 0.5)
        if ready:
            chunk = os.read(stream, 4096)
            if not chunk:
                break
            buf += chunk
    return buf


def qemu_pids_for(home: Path) -> list[int]:
    """QEMU processes started by lkctl for this test: named after a VM under `home`, or (before -daemonize moves
    them to /) running in a VM dir under `home`."""
    ids = {p.name for p in (home / "state" / "vms").glob("*") if p.is_dir()}
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().decode(errors="replace")
            cwd = os.readlink(d / "cwd")
        except OSError:
            continue
        if "qemu-system" in cmd and (cwd.startswith(str(home)) or any(f"lkctl-{i}" in cmd for i in ids)):
            pids.append(int(d.name))
    return pids


@pytest.fixture
def cli(lkctl_home: Path, shared_cache: Path, tmp_path: Path) -> Iterator[Cli]:
    require_qemu()
    env = dict(os.environ)
    env.update(
        LKCTL_HOME=str(lkctl_home),
        LKCTL_CACHE_DIR=str(shared_cache),
        PATH=f"{BIN}:{env.get('PATH', '/usr/bin:/bin')}",
    )
    env.pop("INVOKE_RUNTIME_CONFIG", None)
    work = tmp_path / "work"
    work.mkdir()
    c = Cli(env, work)
    yield c
    # whatever a test did, it must leave no QEMU behind
    left = qemu_pids_for(lkctl_home)
    for pid in left:
        os.kill(pid, 9)
    assert not left, f"test left QEMU processes running: {left}"


__all__ = ["REPO", "Cli"]

"""Test isolation: every test gets its own lkctl home; boot tests share one image cache per session."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() == "true"


@pytest.fixture(autouse=True)
def lkctl_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """LKCTL_HOME in a fresh temp dir, so no test reads or writes the user's ~/.cache, ~/.local or ~/.config."""
    home = tmp_path / "lkhome"
    monkeypatch.setenv("LKCTL_HOME", str(home))
    for var in ("LKCTL_CACHE_DIR", "LKCTL_STATE_DIR", "LKCTL_DATA_DIR", "LKCTL_CONFIG_DIR", "LKCTL_OCI_STORE"):
        monkeypatch.delenv(var, raising=False)
    for var in [v for v in os.environ if v.startswith("LKCTL_VM_") or v.startswith("LKCTL_BUILD_")]:
        monkeypatch.delenv(var, raising=False)
    return home


@pytest.fixture(scope="session")
def shared_cache() -> Path:
    """An image cache kept across tests (and across runs, under .lkctl-test/), so base images build once."""
    path = REPO / ".lkctl-test" / "cache"
    path.mkdir(parents=True, exist_ok=True)
    return path


def require_qemu() -> None:
    """Boot tests need QEMU: skip on a developer machine without it, fail in CI."""
    if shutil.which("qemu-system-x86_64") is None:
        if IN_CI:
            pytest.fail("qemu-system-x86_64 is missing and CI=true: boot tests must run in CI")
        pytest.skip("qemu-system-x86_64 not installed")


def require_busybox() -> str:
    """busybox-static's path: skip on a developer machine without it, fail in CI."""
    found = shutil.which("busybox")
    if found is None:
        if IN_CI:
            pytest.fail("busybox is missing and CI=true (apt-get install busybox-static)")
        pytest.skip("busybox not installed (apt-get install busybox-static)")
    return found


@pytest.fixture
def qemu_available() -> Iterator[None]:
    require_qemu()
    yield

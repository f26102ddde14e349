"""A dev VM run by a user who is not root: /app is shared over 9p (virtiofsd runs as root only) and what the guest's
root makes in /app belongs to that user on the host.

The suite usually runs as root (CI containers); then lkctl runs here as `nobody` through runuser, with a home,
project and copy of the installed dev image that `nobody` owns. Run as another user, test_dev.py already shows it.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.boot.conftest import qemu_pids_for
from tests.conftest import require_qemu

pytestmark = [pytest.mark.boot, pytest.mark.timeout(1200)]

REPO = Path(__file__).resolve().parents[2]
USER = "nobody"


def _interpreter(env: dict[str, str]) -> str | None:
    """A Python `nobody` may run that imports lkctl and its dependencies (this venv's, on PYTHONPATH)."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for candidate in (str(Path(sys.executable).resolve()), f"/usr/bin/{version}"):
        probe = subprocess.run(
            ["runuser", "-u", USER, "--", "env", *[f"{k}={v}" for k, v in env.items()], candidate, "-c",
             "import lkctl.launcher, paramiko, invoke"],
            capture_output=True, check=False, cwd="/",
        )  # fmt: skip
        if probe.returncode == 0:
            return candidate
    return None


class NonRoot:
    def __init__(self, base: Path, python: str, env: dict[str, str]) -> None:
        self.base, self.python, self.env = base, python, env
        self.project = base / "proj"

    def __call__(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        argv = ["runuser", "-u", USER, "--", "env", *[f"{k}={v}" for k, v in self.env.items()], self.python, "-c",
                "import sys; from lkctl.launcher import main; sys.argv[0] = 'lkctl'; main()", *args]  # fmt: skip
        out = subprocess.run(argv, cwd=self.project, capture_output=True, text=True, timeout=timeout, check=False)
        if check and out.returncode != 0:
            raise AssertionError(f"lkctl {' '.join(args)} as {USER} exited {out.returncode}: {out.stderr}")
        return out


@pytest.fixture(scope="module")
def nonroot() -> Iterator[NonRoot]:
    require_qemu()
    if os.geteuid() != 0:
        pytest.skip("runs lkctl as another user through runuser, which needs root (test_dev.py covers this user)")
    if shutil.which("runuser") is None:
        pytest.skip("runuser (util-linux) is not installed")
    uid = pwd.getpwnam(USER).pw_uid
    # not under pytest's tmp dirs: those are 0700 root, out of `nobody`'s reach
    base = Path(tempfile.mkdtemp(prefix="lkctl-nonroot-"))
    base.chmod(0o755)
    home, project = base / "home", base / "proj"
    project.mkdir()
    (project / "hello.txt").write_text("from the host\n")
    env = {
        "HOME": str(base),
        "LKCTL_HOME": str(home),
        "LKCTL_CACHE_DIR": str(base / "cache"),
        "LKCTL_DEV_MEMORY": "768",
        "LKCTL_VM_READY_TIMEOUT": "900",
        "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
        "PYTHONPATH": f"{sysconfig.get_paths()['purelib']}:{REPO}",
    }
    # the dev image is installed by this (root) process from the suite's cache, since `nobody` cannot read what a
    # build needs (/boot/vmlinuz-* is 0600); its files are made `nobody`'s own copies (a hard link into the
    # shared cache would hand the cache's file to `nobody` too)
    subprocess.run(
        [str(Path(sys.executable).parent / "lkctl"), "dev.install"], check=True, capture_output=True,
        env={**os.environ, "LKCTL_HOME": str(home), "LKCTL_CACHE_DIR": str(REPO / ".lkctl-test" / "cache")},
    )  # fmt: skip
    for path in (home / "data" / "dev").rglob("*"):
        if path.is_file() and path.stat().st_nlink > 1:
            copy = path.with_name(f".{path.name}.copy")
            shutil.copy2(path, copy)
            os.replace(copy, path)
    for path in [base, *base.rglob("*")]:
        os.lchown(path, uid, -1)
    python = _interpreter(env)
    if python is None:
        shutil.rmtree(base)
        pytest.skip(f"no Python here that {USER} may run imports lkctl (this venv's interpreter is out of its reach)")
    run = NonRoot(base, python, env)
    try:
        yield run
    finally:
        run("dev.stop", check=False)
        left = qemu_pids_for(home)
        for pid in left:
            os.kill(pid, 9)
        shutil.rmtree(base, ignore_errors=True)
        assert not left, f"the non-root dev test left QEMU processes running: {left}"


def test_a_dev_vm_of_a_user_who_is_not_root_shares_app_over_9p_and_guest_files_are_that_users(
    nonroot: NonRoot,
) -> None:
    booted = nonroot("dev.boot", timeout=1200)
    assert "(9p)" in booted.stderr, booted.stderr
    made = nonroot("dev.shell", "--", "sh", "-c", "id -u; mkdir -p out && echo made > out/f && cat /app/hello.txt")
    assert made.stdout == "0\nfrom the host\n"  # root in the guest
    uid = pwd.getpwnam(USER).pw_uid
    out = nonroot.project / "out"
    assert (out / "f").read_text() == "made\n"
    assert (out.stat().st_uid, (out / "f").stat().st_uid) == (uid, uid)  # the host user's, not root's
    assert "/app (9p)" in nonroot("dev.status").stdout

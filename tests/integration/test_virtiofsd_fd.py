"""virtiofsd serving a socket lkctl listens on (--fd): two VMs' daemons with the same socket name run at once.

QEMU's C virtiofsd locks /run/virtiofsd/<--socket-path with / as .>.pid, host-wide; every lkctl VM names its
socket virtiofs-lkvol0.sock in its own state dir, so with --socket-path a second virtiofs VM could not start.
"""

import os
import subprocess
import time
from pathlib import Path

import pytest

from lkctl.runtime.disks import find_virtiofsd, listen_unix, virtiofsd_argv
from lkctl.runtime.model import Volume, VolumeMount

BINARY = find_virtiofsd()
pytestmark = pytest.mark.skipif(BINARY is None or os.geteuid() != 0, reason="needs virtiofsd and root")


def _start(binary: str, vm_dir: Path, share: Path, *, fd: bool) -> subprocess.Popen[bytes]:
    vm_dir.mkdir()
    mount = VolumeMount(Volume(share, "/app"), "lkvol0", "virtiofs", "virtiofs-lkvol0.sock")
    if not fd:
        return subprocess.Popen(virtiofsd_argv(binary, mount), cwd=vm_dir, stderr=subprocess.PIPE)
    with listen_unix(vm_dir / mount.socket) as listening:
        argv = virtiofsd_argv(binary, mount, listening.fileno())
        assert argv[1] == f"--fd={listening.fileno()}"
        return subprocess.Popen(argv, cwd=vm_dir, stderr=subprocess.PIPE, pass_fds=(listening.fileno(),))


def _alive_after(daemon: subprocess.Popen[bytes], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if daemon.poll() is not None:
            return False
        time.sleep(0.05)
    return True


@pytest.mark.parametrize("fd", [True, False], ids=["fd", "socket-path"])
def test_two_virtiofsd_with_the_same_socket_name_run_side_by_side_only_with_fd(tmp_path: Path, fd: bool) -> None:
    assert BINARY is not None
    share = tmp_path / "share"
    share.mkdir()
    first = _start(BINARY, tmp_path / "vm1", share, fd=fd)
    try:
        if not _alive_after(first, 1.0):
            said = first.communicate()[1]
            if not fd and b"Cannot lock pid file" in said:
                pytest.skip("another virtiofsd on this host holds the lock for virtiofs-lkvol0.sock")
            raise AssertionError(said)
        second = _start(BINARY, tmp_path / "vm2", share, fd=fd)
        try:
            if fd:
                assert _alive_after(second, 1.0)
                assert (tmp_path / "vm2" / "virtiofs-lkvol0.sock").is_socket()
            else:  # what lkctl did before: the second one cannot take the host-wide lock
                _, said = second.communicate(timeout=10)
                assert second.returncode != 0 and b"Cannot lock pid file" in said
        finally:
            if second.poll() is None:
                second.kill()
                second.communicate()
    finally:
        if first.poll() is None:
            first.kill()
            first.communicate()

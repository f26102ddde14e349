"""dev.* through the real `lkctl` executable (lean and full paths) from directories a user may stand in: one that is
not UTF-8, one that was removed, the home directory. One line, a non-zero exit, no traceback, nothing made."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

LKCTL = str(Path(sys.executable).parent / "lkctl")


def _lkctl(
    cwd: Path | bytes, home: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("LKCTL_", "INVOKE_"))}
    return subprocess.run([LKCTL, *args], cwd=cwd, capture_output=True, text=True, errors="surrogateescape",
                          timeout=120, check=False, env={**base, "LKCTL_HOME": str(home), **(env or {})})  # fmt: skip


def _one_line(out: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in out.stderr, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lkctl: "), out.stderr
    return lines[0]


@pytest.mark.parametrize("args", [("dev.status",), ("dev.test", "--", "true"), ("dev.stop",)],
                         ids=["full", "lean", "stop"])  # fmt: skip
def test_a_project_directory_whose_name_is_not_utf8_works(tmp_path: Path, args: tuple[str, ...]) -> None:
    odd = bytes(tmp_path) + b"/caf\xe9"
    os.mkdir(odd)
    out = _lkctl(odd, tmp_path / "lk", *args)
    if args == ("dev.status",):
        assert out.returncode == 0 and "VM" in out.stdout and "dev-caf-" in out.stdout, out.stderr
    else:
        assert out.returncode == 1 and "dev.boot" in _one_line(out)


@pytest.mark.parametrize("args", [("dev.status",), ("dev.test", "--", "true"), ("dev.boot",)],
                         ids=["full", "lean", "boot"])  # fmt: skip
def test_a_removed_working_directory_is_one_line(tmp_path: Path, args: tuple[str, ...]) -> None:
    gone = tmp_path / "gone"
    gone.mkdir()
    # the child starts in the directory and removes it before lkctl runs, as a shell whose directory went away
    script = f"import os, sys; os.chdir({str(gone)!r}); os.rmdir({str(gone)!r}); os.execv(sys.argv[1], sys.argv[1:])"
    base = {k: v for k, v in os.environ.items() if not k.startswith(("LKCTL_", "INVOKE_"))}
    out = subprocess.run([sys.executable, "-c", script, LKCTL, *args], capture_output=True, text=True, timeout=120,
                         check=False, env={**base, "LKCTL_HOME": str(tmp_path / "lk")})  # fmt: skip
    assert out.returncode == 2 and "working directory no longer exists" in _one_line(out)
    assert not (tmp_path / "lk" / "state").exists()


def test_dev_boot_in_the_home_directory_refuses_before_installing_or_booting(tmp_path: Path) -> None:
    home = tmp_path / "me"
    (home / ".git").mkdir(parents=True)  # a dotfiles repository: from any sub-directory the project is the home
    (home / "notes").mkdir()
    out = _lkctl(home / "notes", tmp_path / "lk", "dev.boot", env={"HOME": str(home)})
    assert out.returncode == 2
    assert _one_line(out) == (
        f"lkctl: {home} is your home directory: dev.boot would share all of it read-write with the VM; "
        "run dev.* in a project's own directory (the root of a git repository is the project)"
    )
    assert not (tmp_path / "lk" / "state").exists() and not (tmp_path / "lk" / "data").exists()


@pytest.mark.parametrize("name", ["my,app", "back\\slash", "a, b\\,c"])
def test_virtiofsd_serves_a_project_whose_path_has_commas_or_backslashes(tmp_path: Path, name: str) -> None:
    # FUSE's -o syntax splits at commas: `source=/x/my,app` was `source=/x/my` plus an option `app`, and virtiofsd
    # exited "failed to stat source" (dev.boot of such a project over virtiofs could not start)
    from lkctl.runtime.disks import find_virtiofsd, virtiofsd_argv
    from lkctl.runtime.model import BootImage, ImageFormat, VmSpec, Volume, volume_mounts

    binary = find_virtiofsd()
    if binary is None or os.geteuid() != 0:
        pytest.skip("needs virtiofsd, which runs as root only")
    project = tmp_path / name
    project.mkdir()
    spec = VmSpec("0a1b2c3d", BootImage(ImageFormat.ISO, Path("/i.iso")), virtiofs=True,
                  volumes=(Volume(project, "/app"),))  # fmt: skip
    (mount,) = volume_mounts(spec)
    argv = virtiofsd_argv(binary, mount)
    with subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) as daemon:
        try:
            deadline = time.monotonic() + 30
            while daemon.poll() is None and not (tmp_path / mount.socket).exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            assert daemon.poll() is None, daemon.stderr.read().decode() if daemon.stderr else ""
            assert (tmp_path / mount.socket).is_socket()  # it found its source and waits for QEMU
        finally:
            daemon.kill()
            daemon.wait()

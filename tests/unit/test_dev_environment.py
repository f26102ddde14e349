"""The dev VM's pure parts: the environment every dev VM gets and the serial-console shell script."""

import shutil
import subprocess

import pytest

from lkctl.dev.environment import _CONSOLE_LOOP, _CONSOLE_SHELL, DEV_ENV, guest_shell_argv


def test_the_dev_vm_lets_composer_run_as_root_and_builds_go_without_a_c_compiler() -> None:
    assert dict(DEV_ENV) == {"COMPOSER_ALLOW_SUPERUSER": "1", "CGO_ENABLED": "0"}


@pytest.mark.parametrize("script", [_CONSOLE_SHELL, _CONSOLE_LOOP], ids=["start", "loop"])
def test_the_console_shell_scripts_are_valid_posix_sh(script: str) -> None:
    sh = shutil.which("dash") or shutil.which("sh")
    assert sh is not None
    assert subprocess.run([sh, "-n", "-c", script], capture_output=True, check=False).returncode == 0


def test_the_console_loop_runs_in_the_vm_root_and_chroots_its_shell_into_the_root_disk() -> None:
    # the dev image's /sysroot has no setsid: the loop runs with init's busybox, from init's root
    assert "/proc/1/root /bin/busybox setsid" in _CONSOLE_SHELL
    assert "$bb setsid -c $bb chroot /sysroot $s -l <>/dev/ttyS0" in _CONSOLE_LOOP


def test_guest_shell_argv_exports_env_after_the_profile_and_starts_in_app() -> None:
    assert guest_shell_argv("make test", env={"A": "x y"}, subdir="sub") == [
        "/bin/sh",
        "-lc",
        "export A='x y' && cd -- /app/sub && make test",
    ]

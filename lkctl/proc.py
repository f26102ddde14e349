"""The one place lkctl starts external programs.

Argv is a list, never a shell string; every call is logged as `shlex.join(argv)`; a missing program is an
`LkError` naming the package that provides it rather than a traceback.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence

from lkctl.errors import LkError, ProgramMissing

__all__ = ["ProgramMissing", "find_program", "minimal_env", "run", "shutdown_process", "spawn"]

log = logging.getLogger("lkctl.proc")

# Where each external program comes from on Debian/Ubuntu, so a missing one gets an actionable message.
PACKAGES: dict[str, str] = {
    "qemu-system-x86_64": "qemu-system-x86",
    "qemu-system-aarch64": "qemu-system-arm",
    "qemu-img": "qemu-utils",
    "busybox": "busybox-static",
    "dropbear": "dropbear-bin",
    "xorriso": "xorriso",
    "mke2fs": "e2fsprogs",
    "e2fsck": "e2fsprogs",
    "debugfs": "e2fsprogs",
    "mcopy": "mtools",
    "skopeo": "skopeo",
}


def find_program(name: str) -> str:
    """Absolute path of `name` on PATH (plus /usr/sbin and /sbin), or ProgramMissing with the install hint."""
    extra = os.pathsep.join(["/usr/local/sbin", "/usr/sbin", "/sbin"])
    found = shutil.which(name) or shutil.which(name, path=extra)
    if found:
        return found
    pkg = PACKAGES.get(name)
    hint = f"; install it with: sudo apt-get install {pkg}" if pkg else ""
    raise ProgramMissing(f"{name} not found on PATH{hint}")


def minimal_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A small, explicit environment for child processes (PATH, HOME, LANG, TMPDIR)."""
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "TMPDIR", "TERM", "USER")}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
    env["LANG"] = "C.UTF-8"
    if extra:
        env.update(extra)
    return env


def run(
    argv: Sequence[str],
    *,
    input: bytes | None = None,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    check: bool = True,
    timeout: float | None = None,
    what: str | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run `argv` to completion, capturing output. A non-zero exit raises LkError with its stderr tail."""
    argv = [os.fspath(a) for a in argv]
    log.debug("run: %s", shlex.join(argv))
    try:
        proc = subprocess.run(
            argv,
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True,
            cwd=cwd,
            env=dict(env) if env is not None else minimal_env(),
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError:
        find_program(argv[0])  # raises the friendly error
        raise
    except subprocess.TimeoutExpired as e:
        raise LkError(f"{what or argv[0]} timed out after {timeout:.0f}s") from e
    if check and proc.returncode != 0:
        tail = proc.stderr.decode(errors="replace").strip().splitlines()[-3:]
        detail = " | ".join(tail) or f"exit status {proc.returncode}"
        raise LkError(f"{what or os.path.basename(argv[0])} failed: {detail}")
    return proc


def spawn(
    argv: Sequence[str],
    *,
    cwd: str | os.PathLike[str],
    output: str | os.PathLike[str],
    pass_fds: Sequence[int] = (),
) -> subprocess.Popen[bytes]:
    """Start a long-lived `argv` in its own session (a terminal's Ctrl-C never reaches it), stdin from /dev/null,
    stdout and stderr into the file `output`, with the minimal environment and only `pass_fds` inherited. Stop it
    with shutdown_process."""
    argv = [os.fspath(a) for a in argv]
    log.debug("spawn: %s", shlex.join(argv))
    with open(output, "wb") as out:
        return subprocess.Popen(
            argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=minimal_env(),
            start_new_session=True, pass_fds=tuple(pass_fds),
        )  # fmt: skip


def shutdown_process(proc: subprocess.Popen[bytes], *, term_timeout: float = 5.0, kill_timeout: float = 5.0) -> int:
    """Stop a child we own: SIGTERM its process group, wait, then SIGKILL. Returns its exit status."""
    if proc.poll() is not None:
        return proc.returncode
    for sig, timeout in ((signal.SIGTERM, term_timeout), (signal.SIGKILL, kill_timeout)):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            proc.send_signal(sig)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return proc.returncode
            time.sleep(0.05)
    return proc.wait()

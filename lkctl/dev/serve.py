"""`dev.serve`: the project's server in the dev VM, reachable from the host at http://127.0.0.1:PORT/.

The forward is added to the running VM over QMP (no reboot) before the server starts and removed when it stops,
whatever stops it (Ctrl-C, the server exiting, an error). The URL is announced only once it answers.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import shlex
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO

from lkctl.dev.command import app_command, app_path, require_running
from lkctl.dev.detect import DetectedCommand, detect_serve_command
from lkctl.dev.forward import add_forward, live_forwards, remove_forward
from lkctl.dev.project import Project
from lkctl.errors import ConfigError, VmError
from lkctl.runtime.model import PortForward
from lkctl.runtime.state import VmRecord

__all__ = ["ServeOptions", "serve_command", "serve_dev"]


@dataclass(frozen=True)
class ServeOptions:
    port: int = 8000  # guest port, and host port on 127.0.0.1
    path: str = ""  # sub-directory of the project to serve from
    command: str = ""  # override detection (a shell command line run in the guest)
    ready_timeout: float = 300.0  # seconds to wait for the server's first answer before saying so


def serve_command(project: Project, opts: ServeOptions) -> DetectedCommand:
    """The server to run: `opts.command`, else what the project's files say (see detect_serve_command)."""
    if not 1 <= opts.port <= 65535:
        raise ConfigError(f"--port {opts.port}: not a port number (1-65535)")
    directory = project.root / opts.path if opts.path else project.root
    app_path(opts.path)  # refuses paths outside the project
    if not directory.is_dir():
        raise ConfigError(f"--path {opts.path}: {directory} is not a directory")
    if opts.command:
        return DetectedCommand(opts.command, "--command", {"PORT": str(opts.port)})
    return detect_serve_command(directory, opts.port)


def _answers(port: int) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("HEAD", "/")
        conn.getresponse().read()
        return True
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


@contextlib.contextmanager
def _forwarded(record: VmRecord, forward: PortForward) -> Iterator[None]:
    add_forward(record, forward)
    try:
        yield
    finally:
        with contextlib.suppress(VmError):  # a VM that died took its forwards with it
            remove_forward(record, forward)


_STOP_GRACE = 5.0  # seconds a server has to exit after SIGTERM before what is left of it is killed

# Stops every process of the server's session: dev.serve runs it on a pty, so the guest's SSH server made the shell
# around it a session of its own, and whatever the server starts stays in it unless it detaches on purpose. Neither
# the pid the shell wrote nor the process group would do: that shell dies with the channel's hangup, leaving a
# server that ignores SIGHUP a child of init; and dash's `kill` takes no negative pid. The session id read back
# (the guest wrote the file) must be a number above 1 and no session of init or the SSH server.
_STOP_SCRIPT = """\
s=$(cat "$1" 2>/dev/null); rm -f "$1"
case $s in ''|*[!0-9]*) exit 0;; esac
[ "$s" -gt 1 ] || exit 0
case $(cat /proc/$s/comm 2>/dev/null) in dropbear*|sshd*|init) exit 0;; esac
members() { ps -e -o pid=,sid= | while read -r q t; do [ "$t" = "$s" ] && echo "$q"; done; }
pids=$(members)
[ -n "$pids" ] || exit 0
kill -s TERM $pids 2>/dev/null
i=0
while [ $i -lt "$2" ]; do
  alive=; for q in $pids; do kill -s 0 "$q" 2>/dev/null && alive=1; done
  [ -n "$alive" ] || exit 0
  sleep 0.1; i=$((i+1))
done
kill -s KILL $(members) 2>/dev/null
exit 0
"""


# exit 0 when a process of the session recorded in the pidfile is alive (checks as _STOP_SCRIPT's)
_SERVING_SCRIPT = """\
s=$(cat "$1" 2>/dev/null) || exit 1
case $s in ''|*[!0-9]*) exit 1;; esac
[ "$s" -gt 1 ] || exit 1
ps -e -o sid= | tr -d ' ' | grep -qx "$s"
"""


def _reclaim_stale_forward(record: VmRecord, forward: PortForward, pidfile: str) -> None:
    """A dev.serve that was killed (SIGKILL, a crash) left its forward on the VM, so the port looked taken by
    something else on this host: remove it when no server of that port runs in the guest any more."""
    from lkctl import ssh
    from lkctl.runtime.vm import ssh_target

    if forward not in live_forwards(record):
        return
    sink = io.BytesIO()
    argv = ["/bin/sh", "-c", _SERVING_SCRIPT, "lkctl-serve-check", pidfile]
    if ssh.exec_command(ssh_target(record), argv, stdout=sink, stderr=sink, timeout=60) == 0:
        raise ConfigError(
            f"port {forward.host_port} is already served from this dev VM by another dev.serve; stop that one "
            "(Ctrl-C) or choose another port with --port"
        )
    remove_forward(record, forward)


def _stop_remote(record: VmRecord, pidfile: str) -> None:
    """Stop the server's session in the guest (the channel's hangup reached it, but a server that ignores SIGHUP,
    or children it spawned, must not outlive dev.serve): SIGTERM, then SIGKILL for whatever is still there after
    _STOP_GRACE (a server that ignores SIGTERM too would keep its port)."""
    from lkctl import ssh
    from lkctl.runtime.vm import ssh_target

    argv = ["/bin/sh", "-c", _STOP_SCRIPT, "lkctl-serve-stop", pidfile, str(int(_STOP_GRACE * 10))]
    sink = io.BytesIO()
    with contextlib.suppress(VmError):
        ssh.exec_command(ssh_target(record), argv, stdout=sink, stderr=sink, timeout=60 + _STOP_GRACE)


def serve_dev(
    project: Project,
    opts: ServeOptions,
    *,
    stdout: IO[bytes],
    stderr: IO[bytes],
    say: Callable[[str], None] = lambda _: None,
) -> int:
    """Run the server in the dev VM until it exits or Ctrl-C; returns its exit status (130 after Ctrl-C)."""
    server = serve_command(project, opts)
    record = require_running(project)
    forward = PortForward(opts.port, opts.port)
    url = f"http://127.0.0.1:{opts.port}/"
    pidfile = f"/run/lkctl-serve-{opts.port}.pid"
    # the shell that runs the server records its session id (field 6 of /proc/PID/stat; its name "(sh)" has no
    # space) for _stop_remote and becomes a shell running the server's command line (any shell line, `cd web &&
    # npm start` too: `exec` alone takes a simple command only)
    command = (
        f'read -r _ _ _ _ _ sid _ < /proc/$$/stat && echo "$sid" > {pidfile} && '
        f"exec /bin/sh -c {shlex.quote(server.command)}"
    )
    cmd = app_command(line=command, env=server.env, subdir=opts.path)
    setup = [f"export {k}={shlex.quote(v)}" for k, v in cmd.env.items()] + [f"cd -- {shlex.quote(cmd.workdir)}"]
    argv = ["/bin/sh", "-c", " && ".join([*setup, command])]
    done = threading.Event()

    def announce() -> None:
        deadline = time.monotonic() + opts.ready_timeout
        while not done.is_set() and time.monotonic() < deadline:
            if _answers(opts.port):
                say(f"serving {app_path(opts.path)} at {url} (Ctrl-C stops it)")
                return
            done.wait(0.5)
        if not done.is_set():
            say(f"{url} does not answer yet after {opts.ready_timeout:g}s; the server is still starting or stuck")

    _reclaim_stale_forward(record, forward, pidfile)
    with _forwarded(record, forward):
        say(f"starting {server.command!r} ({server.reason}); forwarding 127.0.0.1:{opts.port} to the VM")
        watcher = threading.Thread(target=announce, daemon=True, name="lkctl-serve-ready")
        watcher.start()
        try:
            # a pty: when the channel closes the server's session gets SIGHUP, like a closed terminal
            from lkctl import ssh
            from lkctl.runtime.exec import ssh_target

            return int(ssh.exec_command(ssh_target(record), argv, stdout=stdout, stderr=stderr, pty=True))
        except KeyboardInterrupt:
            return 130
        finally:
            done.set()
            _stop_remote(record, pidfile)

"""Taking and restoring warm-start snapshots: the template boot, the snapshot files under the cache, the restore
and its fallback. See lkctl.runtime.snapshot."""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
import os
import shlex
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lkctl import proc
from lkctl.errors import LkError, VmError
from lkctl.fsutil import atomic_write, file_lock, private_dir, unix_address
from lkctl.paths import cache_dir
from lkctl.runtime.qemu import CONSOLE_LOG, PIDFILE, QMP_SOCKET
from lkctl.runtime.qmp import qmp_command
from lkctl.runtime.snapshot._plan import (
    FORMAT,
    IDENTITY_SOCKET,
    TEMPLATE_HOSTNAME,
    SnapshotKey,
    clock_line,
    guest_file_entries,
    identity_message,
    key_inputs,
    snapshot_argv,
    template_argv,
)

__all__ = [
    "file_identity",
    "is_stale",
    "planned_start",
    "restore",
    "snapshot_files",
    "snapshot_key",
    "snapshots_dir",
    "take_snapshot",
    "version_memo",
]

log = logging.getLogger("lkctl.runtime.snapshot")

# the template boot is snapshotted once init is ready, the agent waits on its port and sshd waits for the agent
_WAIT_MARKERS = (b"lkctl-init: ready", b"lkctl-init: identity: waiting", b"waiting for this VM's identity")
_PANIC_MARKERS = (b"Kernel panic", b"lkctl-init: fatal:")


class _BadSnapshot(VmError):
    """QEMU could not load the snapshot file: it is removed, and the next warm start takes a new one."""


def snapshots_dir() -> Path:
    """Where snapshots live: `<cache>/snapshots`, 0700."""
    return private_dir(cache_dir() / "snapshots")


def file_identity(path: Path) -> list[int]:
    """What says a file is still the one a snapshot was taken with: size, mtime, inode."""
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def version_memo(path: str, identity: Sequence[int]) -> Path:
    """Where the version of the QEMU binary at `path` with `identity` is remembered."""
    name = hashlib.sha256(f"{path}:{list(identity)}".encode()).hexdigest()[:16]
    return snapshots_dir() / f"qemu-{name}.version"


def _qemu_facts(binary: str) -> dict[str, Any]:
    """The QEMU binary's path, identity and version; the version is remembered per identity (running
    `qemu --version` on every warm start would cost it a tenth of a second)."""
    path = os.path.abspath(shutil.which(binary) or binary)
    ident = file_identity(Path(path))
    memo = version_memo(path, ident)
    try:
        version = memo.read_text().strip()
    except OSError:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30, check=False,
                             env=proc.minimal_env())  # fmt: skip
        version = (out.stdout.splitlines() or [""])[0].strip()
        if version:
            atomic_write(memo, version + "\n", mode=0o600)
    return {"path": path, "identity": ident, "version": version}


def snapshot_key(argv: Sequence[str], vm_dir: Path, *, env: bytes | None = None) -> SnapshotKey:
    """The key of the snapshot a VM started with `argv` (relative paths in `vm_dir`) restores from; `env`: its
    environment file's contents when that is not written yet (a dry run)."""
    files = {}
    for opt, value in itertools.pairwise(argv):
        if opt in ("-kernel", "-initrd"):
            path = os.path.abspath(value.replace(",,", ","))
            files[path] = file_identity(Path(path))
    env_digest = ""
    for name, rel in guest_file_entries(argv):
        if name == "env":
            env_digest = hashlib.sha256(env if env is not None else (vm_dir / rel).read_bytes()).hexdigest()
    return SnapshotKey.of(key_inputs(argv, files=files, qemu=_qemu_facts(argv[0]), env_digest=env_digest))


def snapshot_files(digest: str) -> tuple[Path, Path]:
    """A snapshot's state file (what QEMU loads) and its .json (what it covers, its size)."""
    d = snapshots_dir()
    return d / f"{digest}.vmstate", d / f"{digest}.json"


def _usable(key: SnapshotKey, *, clean: bool = True) -> Path | None:
    """The snapshot for `key` if it is there whole (its recorded size), else None (and with `clean` a partial one
    removed)."""
    state, meta = snapshot_files(key.digest)
    try:
        info = json.loads(meta.read_text())
        if info.get("digest") == key.digest and info.get("size") == state.stat().st_size:
            return state
    except (OSError, ValueError, AttributeError):
        pass
    if clean:
        _remove(key.digest)
    return None


def _remove(digest: str) -> None:
    for p in snapshot_files(digest):
        p.unlink(missing_ok=True)


def is_stale(info: Any) -> bool:
    """Whether the snapshot described by `info` (its .json) can never be restored again: an older format, or its
    kernel, initrd or QEMU binary changed or is gone (a new QEMU at the same path has a new identity)."""
    try:
        inputs = info["inputs"]
        if inputs["format"] != FORMAT:
            return True
        files = [(p, list(ident)) for p, ident in inputs["files"].items()] + [
            (inputs["qemu"]["path"], list(inputs["qemu"]["identity"]))
        ]
    except (KeyError, TypeError):
        return True
    for path, ident in files:
        try:
            if file_identity(Path(path)) != ident:
                return True
        except (OSError, TypeError):
            return True
    return False


def _remove_stale(key: SnapshotKey) -> None:
    """Remove snapshots that can never be used again (`is_stale`)."""
    for meta in snapshots_dir().glob("*.json"):
        try:
            info = json.loads(meta.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(info, dict) and info.get("digest") != key.digest and is_stale(info):
            _remove(meta.stem)


def _die_with_parent() -> None:
    """In the template QEMU before exec: it gets SIGKILL if lkctl dies (a SIGKILLed lkctl cannot clean up)."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _console_tail(path: Path) -> str:
    """The file's last lines for an error message: the template guest's console, control sequences escaped."""
    from lkctl.runtime.untrusted import printable

    with contextlib.suppress(OSError), open(path, "rb") as f:
        f.seek(max(0, f.seek(0, os.SEEK_END) - 2048))
        return printable("\n".join(f.read().decode(errors="replace").replace("\r", "").splitlines()[-8:]))
    return ""


def _wait_template(console: Path, child: subprocess.Popen[bytes], timeout: float) -> None:
    """Wait for the template's ready point, reading only what the console added since the last look (the guest
    decides how much it prints)."""
    deadline, offset, window, seen = time.monotonic() + timeout, 0, b"", set()
    while True:
        with contextlib.suppress(FileNotFoundError), open(console, "rb") as f:
            f.seek(offset)
            new = f.read(1 << 20)
            offset += len(new)
            window = window[-256:] + new
        if any(m in window for m in _PANIC_MARKERS):
            raise VmError(f"the template boot failed:\n{_console_tail(console)}")
        if b"lkctl-init: sshd listening" in window:
            raise VmError("the image's sshd started without waiting for its identity (a snapshot needs lkctl's sshd)")
        if _WAIT_MARKERS[0] in window and _WAIT_MARKERS[0] not in seen:
            deadline = min(deadline, time.monotonic() + 30)  # init is ready: the rest follows within seconds
        seen |= {m for m in _WAIT_MARKERS if m in window}
        if len(seen) == len(_WAIT_MARKERS):
            return
        if child.poll() is not None:
            log = _console_tail(console.parent / "qemu.log").splitlines()
            raise VmError(f"the template boot's QEMU exited: {log[-1] if log else f'status {child.returncode}'}")
        if time.monotonic() > deadline:
            missing = b", ".join(m for m in _WAIT_MARKERS if m not in seen).decode()
            raise VmError(f"the template boot did not reach its ready point (no {missing!r} on its console)")
        time.sleep(0.05)


def _wait_migration(qmp: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        info = qmp_command(qmp, "query-migrate")
        status = info.get("status") if isinstance(info, dict) else None
        if status == "completed":
            return
        if status in ("failed", "cancelled"):
            raise VmError(f"saving the snapshot failed: {info.get('error-desc', status)}")
        if time.monotonic() > deadline:
            raise VmError(f"saving the snapshot took over {timeout:g} s")
        time.sleep(0.05)


def take_snapshot(argv: Sequence[str], vm_dir: Path, key: SnapshotKey, *, timeout: float) -> Path:
    """Boot the template for a VM started with `argv` (see module doc), snapshot it at its ready point into the
    file for `key` and stop it. The VM's environment file is copied; keys and host name are throwaway."""
    from lkctl import ssh
    from lkctl.leftovers import owned_tempdir, reclaim

    directory = snapshots_dir()
    reclaim(directory, "take-")  # work dirs of a template boot whose lkctl was killed
    work = owned_tempdir(directory, "take-")
    state, meta = snapshot_files(key.digest)
    tmp = work / "snapshot.part"  # in the work dir: a killed lkctl's part is reclaimed with it
    child: subprocess.Popen[bytes] | None = None
    started = time.monotonic()
    try:
        ssh.generate_keys(work)  # id_ed25519(.pub), ssh_host_ed25519_key(.pub): what the fw_cfg entries name
        for name, rel in guest_file_entries(argv):
            if name in ("hostname", "vm-hostname"):
                atomic_write(work / rel, TEMPLATE_HOSTNAME + "\n", mode=0o600)
            elif name == "env":
                atomic_write(work / rel, (vm_dir / rel).read_bytes(), mode=0o600)
            elif not (work / rel).is_file():
                raise VmError(f"the template boot has no {rel} for fw_cfg {name}")
        with open(work / "qemu.log", "wb") as log:
            child = subprocess.Popen(
                template_argv(argv), cwd=work, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                env=proc.minimal_env(), start_new_session=True, preexec_fn=_die_with_parent,
            )  # fmt: skip
        _wait_template(work / CONSOLE_LOG, child, timeout)
        qmp = work / QMP_SOCKET
        qmp_command(qmp, "stop")
        qmp_command(qmp, "migrate", {"uri": "exec:umask 077 && exec cat > " + shlex.quote(os.fspath(tmp))})
        _wait_migration(qmp, timeout=max(60.0, timeout))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        size = tmp.stat().st_size
        os.replace(tmp, state)
        info = {
            "digest": key.digest,
            "size": size,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "seconds": round(time.monotonic() - started, 2),
            "inputs": key.inputs,
        }
        atomic_write(meta, json.dumps(info, indent=1) + "\n", mode=0o600)
    finally:
        if child is not None:
            proc.shutdown_process(child)
        tmp.unlink(missing_ok=True)
        shutil.rmtree(work, ignore_errors=True)
    _remove_stale(key)
    return state


def _qemu_pid(vm_dir: Path) -> int:
    with contextlib.suppress(OSError, ValueError):
        return int((vm_dir / PIDFILE).read_text().split()[0])
    return 0


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text(encoding="utf-8", errors="replace").rsplit(") ", 1)[1][:1] not in (
            "Z",
            "X",
        )
    except (OSError, IndexError):
        return False


def _wait_paused(vm_dir: Path, pid: int, timeout: float) -> None:
    """Wait until the restored QEMU (`pid`) has loaded the whole snapshot (`paused`; a `cont` before is lost)."""
    qmp, deadline = vm_dir / QMP_SOCKET, time.monotonic() + timeout
    while True:
        if not _alive(pid):  # (QEMU removes its pidfile as it exits: the pid is read once, at start)
            raise _BadSnapshot("QEMU could not load it and exited")
        status = ""
        with contextlib.suppress(VmError, OSError):  # not listening yet, or going away: the pid tells next round
            result = qmp_command(qmp, "query-status", timeout=2)
            status = result.get("status", "") if isinstance(result, dict) else ""
        if status == "paused":
            return
        if status not in ("", "inmigrate"):
            raise _BadSnapshot(f"QEMU is {status} after loading the snapshot")
        if time.monotonic() > deadline:
            raise VmError(f"loading the snapshot took over {timeout:g} s")
        time.sleep(0.02)


def _send_identity(vm_dir: Path, argv: Sequence[str], timeout: float) -> None:
    """Give the restored guest its identity over the port, wait for its `ok` and answer with the clock again (the
    guest times its sub-second step from that line; see the guest's `identity`)."""
    files = [(name, (vm_dir / rel).read_bytes()) for name, rel in guest_file_entries(argv)]
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    with contextlib.closing(sock):
        with unix_address(vm_dir / IDENTITY_SOCKET) as address:
            sock.connect(address)
        sock.sendall(identity_message(files, now=time.time(), rng=os.urandom(64)))
        answer = b""
        try:
            while b"\n" not in answer and len(answer) < 256:  # the guest is untrusted: read a bounded line
                chunk = sock.recv(256)
                if not chunk:
                    break
                answer += chunk
        except TimeoutError:
            raise VmError(f"the restored guest did not take its identity within {timeout:g} s") from None
        if answer.strip() == b"ok":
            with contextlib.suppress(OSError):  # the clock is then right to the second: the VM is usable
                sock.sendall(clock_line(time.time()) + b"\n")
    if answer.strip() != b"ok":
        raise VmError(f"the restored guest answered {answer[:60]!r} to its identity")


def _restore_from(snap: Path, argv: Sequence[str], vm_dir: Path, timeout: float) -> subprocess.CompletedProcess[bytes]:
    for name in (CONSOLE_LOG, IDENTITY_SOCKET, PIDFILE):
        (vm_dir / name).unlink(missing_ok=True)
    result = subprocess.run(snapshot_argv(argv, incoming=snap), cwd=vm_dir, stdin=subprocess.DEVNULL,
                            capture_output=True, env=proc.minimal_env(), timeout=60, check=False)  # fmt: skip
    if result.returncode != 0:
        err = result.stderr.decode(errors="replace").strip().splitlines()
        last = err[-1] if err else f"exit status {result.returncode}"
        # a load that fails at once can end QEMU before -daemonize returns: then it says so on stderr
        raise (_BadSnapshot if "migration" in last else VmError)(f"QEMU did not start: {last}")
    pid = _qemu_pid(vm_dir)
    if not pid:  # gone before we looked (QEMU removes its pidfile as it exits): the load failed at once
        raise _BadSnapshot("QEMU could not load it and exited")
    _wait_paused(vm_dir, pid, timeout)
    qmp_command(vm_dir / QMP_SOCKET, "cont")
    _send_identity(vm_dir, argv, timeout)
    return result


def _kill_restored(vm_dir: Path, argv: Sequence[str]) -> None:
    """Stop the QEMU a failed restore started: the pidfile's process, only if its command line is `argv`."""
    pid = _qemu_pid(vm_dir)
    try:
        if not pid or Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1] != [os.fsencode(a) for a in argv]:
            return
    except OSError:
        return
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        if not _alive(pid):
            break
    (vm_dir / PIDFILE).unlink(missing_ok=True)


def _why(error: BaseException) -> str:
    text = error.message if isinstance(error, LkError) else str(error) or type(error).__name__
    return text.splitlines()[0] if text else type(error).__name__


def restore(
    argv: Sequence[str], vm_dir: Path, *, timeout: float, say: Callable[[str], None] | None = None
) -> subprocess.CompletedProcess[bytes] | None:
    """Start the VM whose cold argv is `argv` from its image's snapshot (taking it first if there is none) and
    give it its identity. Returns what starting QEMU returned, or None after saying why it fell back: the
    caller then boots cold, and nothing this started is left running.

    Notes go to `say`; without one, to the `lkctl.runtime.snapshot` logger, a fallback as a warning (Python's
    default shows it on stderr), so a library caller sees it too."""
    if say is None:

        def say(message: str) -> None:
            log.log(logging.WARNING if "booting cold" in message else logging.INFO, "%s", message)

    try:
        key = snapshot_key(argv, vm_dir)
        with file_lock(snapshots_dir() / f"{key.digest}.lock"):  # two first runs take one snapshot
            snap = _usable(key)
            if snap is None:
                say("taking a memory snapshot of this image at its ready point (once per image, size and QEMU)")
                started = time.monotonic()
                snap = take_snapshot(argv, vm_dir, key, timeout=timeout)
                say(f"snapshot taken in {time.monotonic() - started:.1f} s")
    except Exception as e:  # any failure: a cold boot still gives the user a VM
        say(f"no snapshot to restore ({_why(e)}); booting cold")
        return None
    try:
        result = _restore_from(snap, argv, vm_dir, timeout=min(timeout, 60.0))
    except Exception as e:
        _kill_restored(vm_dir, snapshot_argv(argv, incoming=snap))
        if isinstance(e, _BadSnapshot):
            _remove(key.digest)  # the next warm start takes a new one
        say(f"restoring the snapshot failed ({_why(e)}); booting cold")
        return None
    say(f"restored from snapshot {key.digest[:12]}")
    return result


def planned_start(argv: Sequence[str], *, env: bytes) -> tuple[list[str], str]:
    """What a warm start of a VM with cold argv `argv` would run (`vm.run --dry-run --snapshot`), touching no
    snapshot: the restore's argv (QEMU loads the snapshot with -incoming) and a note saying whether the snapshot
    exists or would be taken first. `env`: the VM's environment file contents."""
    try:
        key = snapshot_key(argv, Path.cwd(), env=env)
    except (OSError, LkError) as e:
        return list(argv), f"no snapshot could be used ({_why(e)}): would boot cold"
    state = _usable(key, clean=False)
    restored = snapshot_argv(argv, incoming=state or snapshot_files(key.digest)[0])
    if state is not None:
        return restored, f"would restore snapshot {key.digest[:12]} ({state.stat().st_size >> 20} MiB)"
    return restored, f"no snapshot {key.digest[:12]} yet: would take it first (a template boot of this image)"

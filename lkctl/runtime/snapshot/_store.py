"""Taking and restoring warm-start snapshots: the template boot, the snapshot files under the cache, the restore
and its fallback. See lkctl.runtime.snapshot."""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
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
    IDENTITY_SOCKET,
    TEMPLATE_HOSTNAME,
    SnapshotKey,
    guest_file_entries,
    identity_message,
    key_inputs,
    snapshot_argv,
    template_argv,
)

__all__ = ["restore", "snapshot_key", "snapshots_dir", "take_snapshot"]

# the template boot is snapshotted once init is ready, the agent waits on its port and sshd waits for the agent
_WAIT_MARKERS = (b"lkctl-init: ready", b"lkctl-init: identity: waiting", b"waiting for this VM's identity")
_PANIC_MARKERS = (b"Kernel panic", b"lkctl-init: fatal:")


class _BadSnapshot(VmError):
    """QEMU could not load the snapshot file: it is removed, and the next warm start takes a new one."""


def snapshots_dir() -> Path:
    """Where snapshots live: `<cache>/snapshots`, 0700."""
    return private_dir(cache_dir() / "snapshots")


def _identity(path: Path) -> list[int]:
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def _qemu_facts(binary: str) -> dict[str, Any]:
    """The QEMU binary's path, identity and version; the version is remembered per identity (running
    `qemu --version` on every warm start would cost it a tenth of a second)."""
    path = os.path.abspath(shutil.which(binary) or binary)
    ident = _identity(Path(path))
    memo = snapshots_dir() / ("qemu-" + hashlib.sha256(f"{path}:{ident}".encode()).hexdigest()[:16] + ".version")
    try:
        version = memo.read_text().strip()
    except OSError:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30, check=False,
                             env=proc.minimal_env())  # fmt: skip
        version = (out.stdout.splitlines() or [""])[0].strip()
        if version:
            atomic_write(memo, version + "\n", mode=0o600)
    return {"path": path, "identity": ident, "version": version}


def snapshot_key(argv: Sequence[str], vm_dir: Path) -> SnapshotKey:
    """The key of the snapshot a VM started with `argv` (relative paths in `vm_dir`) restores from."""
    files = {}
    for opt, value in itertools.pairwise(argv):
        if opt in ("-kernel", "-initrd"):
            path = os.path.abspath(value.replace(",,", ","))
            files[path] = _identity(Path(path))
    env_digest = ""
    for name, rel in guest_file_entries(argv):
        if name == "env":
            env_digest = hashlib.sha256((vm_dir / rel).read_bytes()).hexdigest()
    return SnapshotKey.of(key_inputs(argv, files=files, qemu=_qemu_facts(argv[0]), env_digest=env_digest))


def _paths(key: str) -> tuple[Path, Path]:
    d = snapshots_dir()
    return d / f"{key}.vmstate", d / f"{key}.json"


def _usable(key: SnapshotKey) -> Path | None:
    """The snapshot for `key` if it is there whole (its recorded size), else None (and a partial one removed)."""
    state, meta = _paths(key.digest)
    try:
        info = json.loads(meta.read_text())
        if info.get("digest") == key.digest and info.get("size") == state.stat().st_size:
            return state
    except (OSError, ValueError, AttributeError):
        pass
    _remove(key.digest)
    return None


def _remove(digest: str) -> None:
    for p in _paths(digest):
        p.unlink(missing_ok=True)


def _remove_stale(key: SnapshotKey) -> None:
    """Remove snapshots that can never be used again: their kernel/initrd or QEMU changed or is gone."""
    ours_files, ours_qemu = key.inputs["files"], key.inputs["qemu"]
    for meta in snapshots_dir().glob("*.json"):
        try:
            info = json.loads(meta.read_text())
            files, qemu = info["inputs"]["files"], info["inputs"]["qemu"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if info.get("digest") == key.digest:
            continue
        gone = any(not os.path.exists(p) or (p in ours_files and ours_files[p] != ident) for p, ident in files.items())
        if gone or (qemu.get("path") == ours_qemu["path"] and qemu != ours_qemu):
            _remove(str(info.get("digest")))


def _die_with_parent() -> None:
    """In the template QEMU before exec: it gets SIGKILL if lkctl dies (a SIGKILLed lkctl cannot clean up)."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _console_tail(path: Path) -> str:
    with contextlib.suppress(OSError), open(path, "rb") as f:
        f.seek(max(0, f.seek(0, os.SEEK_END) - 2048))
        return "\n".join(f.read().decode(errors="replace").replace("\r", "").splitlines()[-8:])
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
    state, meta = _paths(key.digest)
    tmp = directory / f".{key.digest}.{os.getpid()}.tmp"
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
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][:1] not in ("Z", "X")
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
    """Give the restored guest its identity over the port and wait for its `ok` (see the guest's `identity`)."""
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
    argv: Sequence[str], vm_dir: Path, *, timeout: float, say: Callable[[str], None] = lambda _: None
) -> subprocess.CompletedProcess[bytes] | None:
    """Start the VM whose cold argv is `argv` from its image's snapshot (taking it first if there is none) and
    give it its identity. Returns what starting QEMU returned, or None after saying why it fell back: the
    caller then boots cold, and nothing this started is left running."""
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

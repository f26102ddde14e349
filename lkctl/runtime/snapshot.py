"""Warm starts (`vm.run -d --snapshot`): a new VM restored from a memory snapshot of its image, taken once at the
image's ready point, then given its own identity before anything can use it.

The snapshot is taken from a *template boot*: the VM's own QEMU argv with its per-VM parts removed (`key_argv`),
booted in a private work dir with a throwaway identity (keys made for it and deleted, host name
`lkctl-snapshot`), so no real VM's keys ever sit in a snapshot. Snapshot boots add a virtio-serial port
(`org.lkctl.identity`) and `vmgenid`. The guest (images/init `007-identity` + `identity`) then starts an agent
before any service; lkctl-sshd waits for it before it reads its keys. When init is ready, the agent waits on the
port and sshd waits on the agent, QEMU is stopped and its state migrated into a file (`exec:cat > FILE`).

A restore starts the VM's own argv plus those devices and `-incoming "exec:cat FILE"`, waits for `paused`, sends
`cont`, then writes the identity message on the port: the host's clock, random bytes for /dev/urandom, and the
VM's fw_cfg files (its host key, authorized key, host name, environment). The agent answers `ok` once they are in
place and the host name is set; only then does dropbear start, with this VM's pinned host key. QEMU's `vmgenid`
gets a fresh GUID on every start (`guid=auto`), so the guest kernel reseeds its RNG on restore by itself.

A snapshot is keyed by a digest of what it depends on (`key_inputs`): the argv without per-VM parts (machine,
accelerator, CPU model, memory, CPUs, kernel command line, devices, fw_cfg names), the identity of the kernel and
initrd files and of the QEMU binary with its version, and the environment's digest (services started before the
snapshot saw it). Anything else that would differ after a restore is refused up front (`check_supported`).
Snapshots live in `<cache>/snapshots/` (0700; files 0600, written to a temp name and renamed). Any failure to
take or restore one falls back to a cold boot, said in one line.
"""

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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lkctl import proc
from lkctl.errors import ConfigError, LkError, VmError
from lkctl.fsutil import atomic_write, file_lock, private_dir, unix_address
from lkctl.paths import cache_dir
from lkctl.runtime.qemu import CONSOLE_LOG, PIDFILE, QMP_SOCKET, BootImage, ImageFormat
from lkctl.runtime.qmp import qmp_command

if TYPE_CHECKING:
    from lkctl.runtime.vm import RunOptions

__all__ = [
    "IDENTITY_PORT",
    "IDENTITY_SOCKET",
    "SnapshotKey",
    "check_supported",
    "guest_file_entries",
    "identity_message",
    "key_argv",
    "key_inputs",
    "restore",
    "snapshot_argv",
    "snapshot_key",
    "snapshots_dir",
    "take_snapshot",
    "template_argv",
]

IDENTITY_PORT = "org.lkctl.identity"  # the guest's /sys/class/virtio-ports/*/name
IDENTITY_SOCKET = "identity.sock"  # the host side of the port, in the VM's state dir
FORMAT = 1  # bumped when what a snapshot holds or the identity protocol changes: older snapshots are not used
IDENTITY_FILES = frozenset({"ssh/ssh_host_ed25519_key", "ssh/authorized_keys", "hostname", "vm-hostname", "env"})
TEMPLATE_HOSTNAME = "lkctl-snapshot"
# the template boot is snapshotted once init is ready, the agent waits on its port and sshd waits for the agent
_WAIT_MARKERS = (b"lkctl-init: ready", b"lkctl-init: identity: waiting", b"waiting for this VM's identity")
_PANIC_MARKERS = (b"Kernel panic", b"lkctl-init: fatal:")


class _BadSnapshot(VmError):
    """QEMU could not load the snapshot file: it is removed, and the next warm start takes a new one."""


# ---- pure: argv and key ----------------------------------------------------------------------------------------


def check_supported(boot: BootImage, opts: RunOptions, hypervisor: str) -> None:
    """Refuse `--snapshot` (one line, before anything is made) where a restored VM could not be this VM."""
    why = ""
    if not opts.detach:
        why = "a warm start is for detached VMs; add -d"
    elif opts.connect or opts.host:
        why = "snapshots are restored by QEMU on this machine, not through libvirt; drop --connect/--host"
    elif hypervisor != "qemu":
        why = f"{hypervisor} has no memory snapshots here; use --hypervisor qemu"
    elif boot.format is not ImageFormat.KERNEL_INITRD or boot.rootdisk is not None:
        kind = "kernel+initrd with a root disk" if boot.rootdisk is not None else boot.format.value
        why = f"only kernel+initrd images without disks can be restored (this is {kind}: its disk would not match)"
    elif opts.volumes:
        why = "QEMU cannot snapshot a VM with a mounted 9p/virtiofs share, and a restored VM cannot mount new ones"
    elif opts.data_disk is not None:
        why = "a data disk made for this VM would not match the snapshot's memory; drop --disk"
    if why:
        raise ConfigError(f"--snapshot: {why}")


def _option_parts(value: str) -> list[str]:
    """A QEMU option value split at its commas (a doubled comma is a literal one and does not split)."""
    parts, cur, i = [], "", 0
    while i < len(value):
        if value[i] == ",":
            if value[i + 1 : i + 2] == ",":
                cur += ",,"
                i += 2
                continue
            parts.append(cur)
            cur = ""
        else:
            cur += value[i]
        i += 1
    return [*parts, cur]


def key_argv(argv: Sequence[str]) -> list[str]:
    """`argv` without what differs between VMs of one image and size and does not reach the snapshot: the VM's
    name, `-daemonize`, the host side of port forwards, the NIC's MAC (the guest keeps the snapshot's) and fw_cfg
    file paths (the names stay: which files the guest was given is part of its state). Pure."""
    return _without_vm_parts(argv, keep_files=False)


def _without_vm_parts(argv: Sequence[str], *, keep_files: bool) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(argv):
        opt = argv[i]
        value = argv[i + 1] if i + 1 < len(argv) else None
        if opt == "-daemonize":
            i += 1
            continue
        if value is None:
            out.append(opt)
            break
        if opt == "-name":
            value = TEMPLATE_HOSTNAME
        elif opt == "-netdev":
            value = ",".join(p for p in _option_parts(value) if not p.startswith("hostfwd="))
        elif opt == "-device" and value.startswith("virtio-net"):
            value = ",".join(p for p in _option_parts(value) if not p.startswith("mac="))
        elif opt == "-fw_cfg" and not keep_files:
            value = _option_parts(value)[0]
        if opt.startswith("-"):
            out += [opt, value]
            i += 2
        else:
            out.append(opt)  # the binary
            i += 1
    return out


def snapshot_argv(argv: Sequence[str], *, incoming: Path | None = None) -> list[str]:
    """`argv` plus the devices every snapshot boot has (the identity port and vmgenid), and with `incoming` the
    snapshot file QEMU loads instead of booting. Template and restored VM must agree on these. Pure."""
    out = [a for a in argv if a != "-daemonize"]
    out += [
        "-device", "virtio-serial-pci,id=lkser0",
        "-chardev", f"socket,id=lkident,path={IDENTITY_SOCKET},server=on,wait=off",
        "-device", f"virtserialport,bus=lkser0.0,chardev=lkident,name={IDENTITY_PORT}",
        "-device", "vmgenid,guid=auto",  # a new generation ID per QEMU start: the guest kernel reseeds its RNG
    ]  # fmt: skip
    if incoming is not None:
        out += ["-incoming", "exec:cat " + shlex.quote(os.fspath(incoming))]
    if "-daemonize" in argv:
        out.append("-daemonize")
    return out


def template_argv(argv: Sequence[str]) -> list[str]:
    """What the template boot runs (in its own work dir, not daemonized): the VM's argv without its per-VM parts,
    as a snapshot boot. Pure."""
    return snapshot_argv(_without_vm_parts(argv, keep_files=True))


def guest_file_entries(argv: Sequence[str]) -> list[tuple[str, str]]:
    """(name under opt/lkctl/, file relative to the VM dir) of each fw_cfg file in `argv`. A file the identity
    message cannot carry (a volume list) means the VM cannot be restored: ConfigError. Pure."""
    entries = []
    for opt, value in itertools.pairwise(argv):
        if opt != "-fw_cfg":
            continue
        parts = dict(p.split("=", 1) for p in _option_parts(value) if "=" in p)
        name = parts.get("name", "").removeprefix("opt/lkctl/")
        if name not in IDENTITY_FILES or "file" not in parts:
            raise ConfigError(f"fw_cfg {parts.get('name', value)} cannot be given to a restored VM")
        entries.append((name, parts["file"].replace(",,", ",")))
    return entries


def identity_message(files: Sequence[tuple[str, bytes]], *, now: float, rng: bytes) -> bytes:
    """The message the guest's identity agent reads (see images/init/rootfs/usr/lib/lkctl/identity): the clock,
    random bytes as octal escapes (the guest's shell printf writes them without a fork), then each file as
    `file NAME` and one `line TEXT` per line (files are text; a missing final newline is added). Pure."""
    lines = [f"time {round(now)}".encode(), b"rng " + "".join(f"\\{b:03o}" for b in rng).encode()]
    for name, data in files:
        if name not in IDENTITY_FILES:
            raise ConfigError(f"{name} is not a file a restored VM takes")
        if b"\0" in data or b"\r" in data:
            raise ConfigError(f"{name} for a restored VM must be text (no NUL or CR)")
        lines.append(f"file {name}".encode())
        lines += [b"line " + line for line in data.removesuffix(b"\n").split(b"\n")] if data else []
    return b"\n".join([*lines, b"end"]) + b"\n"


def key_inputs(
    argv: Sequence[str], *, files: Mapping[str, Sequence[int]], qemu: Mapping[str, Any], env_digest: str
) -> dict[str, Any]:
    """Everything a snapshot depends on, as JSON-able data (its digest names the snapshot). Pure."""
    return {
        "format": FORMAT,
        "argv": key_argv(argv),
        "files": {p: list(ident) for p, ident in sorted(files.items())},
        "qemu": dict(qemu),
        "env": env_digest,
    }


@dataclass(frozen=True)
class SnapshotKey:
    """A snapshot's name (`digest`) and what it covers (`inputs`, kept beside it in its .json)."""

    digest: str
    inputs: dict[str, Any] = field(hash=False, compare=False)

    @classmethod
    def of(cls, inputs: dict[str, Any]) -> SnapshotKey:
        text = json.dumps(inputs, sort_keys=True, separators=(",", ":"))
        return cls(hashlib.sha256(text.encode()).hexdigest()[:32], inputs)


# ---- facts from the machine ------------------------------------------------------------------------------------


def snapshots_dir() -> Path:
    """Where snapshots live: `<cache>/snapshots`, 0700."""
    return private_dir(cache_dir() / "snapshots")


def _identity(path: Path) -> list[int]:
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns, st.st_ino]


_QEMU_VERSIONS: dict[tuple[str, tuple[int, ...]], str] = {}


def _qemu_facts(binary: str) -> dict[str, Any]:
    path = shutil.which(binary) or binary
    ident = _identity(Path(path))
    version = _QEMU_VERSIONS.get((path, tuple(ident)))
    if version is None:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30, check=False,
                             env=proc.minimal_env())  # fmt: skip
        version = (out.stdout.splitlines() or [""])[0].strip()
        _QEMU_VERSIONS[(path, tuple(ident))] = version
    return {"path": os.path.abspath(path), "identity": ident, "version": version}


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
    with contextlib.suppress(OSError):
        return "\n".join(path.read_bytes()[-2048:].decode(errors="replace").replace("\r", "").splitlines()[-8:])
    return ""


def _wait_template(console: Path, child: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        data = b""
        with contextlib.suppress(FileNotFoundError):
            data = console.read_bytes()
        if any(m in data for m in _PANIC_MARKERS):
            raise VmError(f"the template boot failed:\n{_console_tail(console)}")
        if all(m in data for m in _WAIT_MARKERS):
            return
        if child.poll() is not None:
            log = _console_tail(console.parent / "qemu.log").splitlines()
            raise VmError(f"the template boot's QEMU exited: {log[-1] if log else f'status {child.returncode}'}")
        if time.monotonic() > deadline:
            raise VmError(f"the template boot did not reach its ready point in {timeout:g} s")
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


# ---- restore -----------------------------------------------------------------------------------------------------


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

"""Per-VM state on disk, and status derived from live facts.

Layout: `<state_dir>/vms/<id>/` (0700) holds `vm.json` (the record), `qemu.pid`, `qmp.sock`, `console.log`, the
keys and `known_hosts`. Records are written atomically under a lock and carry a format version; a record of a newer
format is refused with a message rather than misread.

A VM is `running` only if its pidfile names a live process that started when we recorded it (same boot, same
start time) and whose command line carries the VM's id — a reused PID is never taken for our VM and never
signalled.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import gc
import json
import logging
import operator
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lkctl import paths
from lkctl.errors import ConfigError, StateError, VmError, VmNotFound
from lkctl.fsutil import atomic_write, file_lock, private_dir
from lkctl.runtime.host import ProcessIdentity, process_identity

__all__ = [
    "INDEX_FILE",
    "STATE_VERSION",
    "ProcessIdentity",
    "VmRecord",
    "all_records",
    "being_created",
    "check_name_free",
    "creator_identity",
    "find_vm",
    "forget_ended",
    "helper_entry",
    "is_our_helper",
    "is_our_process",
    "listed_records",
    "live_pids",
    "load_record",
    "new_vm_id",
    "process_identity",
    "read_pidfile",
    "remove_record",
    "require_running",
    "save_record",
    "state_writes",
    "vm_status",
    "vms_dir",
    "vms_lock",
]

STATE_VERSION = 1

log = logging.getLogger("lkctl.state")


@dataclass(frozen=True)
class VmRecord:
    """The persisted facts about one VM. Status is not stored: it is derived (see vm_status)."""

    id: str
    name: str
    image: str
    image_format: str
    created: str
    memory: int
    cpus: int
    ssh_port: int
    ports: list[str] = field(default_factory=list)
    argv: list[str] = field(default_factory=list)
    accel: str = ""
    pid: int = 0
    pid_start: str = ""
    boot_id: str = ""
    exit_reason: str = ""  # set when lkctl saw the VM end badly (start failure, readiness timeout)
    auto_remove: bool = False  # `vm.run --rm`: forget the VM once it has stopped
    image_digest: str = ""  # sha256 of what was booted (kernel+initrd, or the image file)
    # daemons serving the VM (virtiofsd), each [pid, start time, boot id, command line]: see helper_entry
    helpers: list[list[str]] = field(default_factory=list)
    libvirt: dict[str, str] = field(default_factory=dict)  # a libvirt VM: uri, host, domain, uuid, known_hosts
    creator: list[str] = field(default_factory=list)  # [pid, start time] of the lkctl process that made the record
    version: int = STATE_VERSION
    problem: str = field(default="", compare=False)  # why the record could not be read (status `unknown`); not saved

    @property
    def dir(self) -> Path:
        return vms_dir() / self.id

    def identity(self) -> ProcessIdentity | None:
        return ProcessIdentity(self.pid, self.pid_start, self.boot_id) if self.pid else None

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        del data["problem"]
        return data

    @classmethod
    def unknown(cls, vm_dir: Path, problem: str) -> VmRecord:
        """Stands for a VM whose record cannot be read: listed as `unknown`, removable with `vm.rm --force`."""
        return cls(id=vm_dir.name, name=vm_dir.name, image="?", image_format="", created="", memory=0, cpus=0,
                   ssh_port=0, problem=problem)  # fmt: skip

    @classmethod
    def from_json(cls, data: dict[str, Any], where: Path) -> VmRecord:
        version = data.get("version")
        if version != STATE_VERSION:
            raise StateError(
                f"{where} has state format {version!r}, this lkctl reads format {STATE_VERSION}; "
                f"use the lkctl that created it or remove {where.parent}"
            )
        known = _record_fields()
        try:
            return cls(**(data if data.keys() <= known else {k: v for k, v in data.items() if k in known}))
        except TypeError as e:
            raise StateError(f"{where} is not a valid VM record ({e}); remove {where.parent}") from None


@functools.cache
def _record_fields() -> frozenset[str]:
    return frozenset(f.name for f in dataclasses.fields(VmRecord)) - {"problem"}


def vms_dir() -> Path:
    return paths.state_dir() / "vms"


@contextlib.contextmanager
def state_writes() -> Iterator[None]:
    """An OSError while writing lkctl's state (a full disk, a read-only or foreign state dir) becomes a StateError
    that says so, in one line, instead of a traceback."""
    try:
        yield
    except OSError as e:
        where = e.filename or paths.state_dir()
        raise StateError(
            f"cannot write lkctl's VM state at {where}: {e.strerror or e}; free space there or make it writable "
            "(LKCTL_STATE_DIR or LKCTL_HOME moves it)"
        ) from None


@contextlib.contextmanager
def vms_lock() -> Iterator[None]:
    """The lock that serialises creating, naming and removing VMs."""
    with contextlib.ExitStack() as stack:
        with state_writes():
            private_dir(paths.state_dir())
            private_dir(vms_dir())
            stack.enter_context(file_lock(vms_dir() / ".lock"))
        yield


def new_vm_id(taken: set[str]) -> str:
    """A fresh 8-hex ID that is not in `taken` (IDs and names) and starts with none of them, so a hex name or an
    ID prefix a user types keeps meaning what it meant."""
    for attempt in range(10_000):
        vm_id = secrets.token_hex(4)
        if vm_id not in taken and (attempt > 1000 or not any(vm_id.startswith(t) for t in taken if t)):
            return vm_id  # (short hex names covering every first digit would make the prefix rule unsatisfiable)
    raise StateError("no free VM ID left; remove some VMs (vm.prune)")


def check_name_free(name: str, records: list[VmRecord] | None = None) -> None:
    """Refuse a name another VM has, or one of 4 or more characters that starts another VM's ID (it would shadow
    that ID prefix). Shorter names are not checked: a random ID would refuse a name like `c0` now and then."""
    records = listed_records() if records is None else records
    clash = next((r for r in records if r.name == name), None)
    if clash is not None:
        raise ConfigError(
            f"the name {name!r} is already used by VM {clash.id} ({vm_status(clash)}); "
            f"stop and remove it first (vm.stop, vm.rm) or choose another --name"
        )
    prefix_of = next((r for r in records if len(name) >= 4 and r.id.startswith(name)), None)
    if prefix_of is not None:
        raise ConfigError(f"the name {name!r} is the start of VM {prefix_of.name}'s ID {prefix_of.id}; choose another")


def save_record(record: VmRecord) -> None:
    if record.problem:
        raise StateError(f"VM {record.id}: {record.problem}; its record is left as it is")
    with state_writes():
        private_dir(record.dir)
        atomic_write(record.dir / "vm.json", json.dumps(record.to_json(), indent=2) + "\n", mode=0o600)


def _adopt_pidfile(record: VmRecord) -> VmRecord:
    """A start that was SIGKILLed between QEMU writing its pidfile and lkctl recording it left a VM with no pid:
    adopt the pidfile's process if it is alive and carries this VM's id, so `ps` and `stop` see and reach it."""
    if record.pid:
        return record
    ident = process_identity(read_pidfile(record.dir))
    if ident is None:
        return record
    adopted = dataclasses.replace(record, pid=ident.pid, pid_start=ident.start, boot_id=ident.boot_id)
    return adopted if is_our_process(adopted) else record


def load_record(vm_dir: Path) -> VmRecord | None:
    loaded = _read_record(vm_dir)
    return None if loaded is None else _adopt_pidfile(VmRecord.from_json(loaded[1], vm_dir / "vm.json"))


def _read_record(vm_dir: Path) -> tuple[list[int], dict[str, Any]] | None:
    """vm.json's identity (inode, mtime, size: fstat of what was read, so they belong together) and content."""
    path = vm_dir / "vm.json"
    try:
        with open(path, "rb") as f:  # not Path.read_text: `vm.ps` reads thousands of these
            st = os.fstat(f.fileno())
            data = json.loads(f.read())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        why = e.strerror if isinstance(e, OSError) else str(e)
        raise StateError(f"{path} is unreadable ({why}); remove {vm_dir} to forget that VM") from None
    if not isinstance(data, dict):
        raise StateError(f"{path} is not a VM record; remove {vm_dir}")
    return [st.st_ino, st.st_mtime_ns, st.st_size], data


def all_records() -> list[VmRecord]:
    """Every VM with a record, oldest first. A record that cannot be read (corrupt, of a newer format) stands as
    an `unknown` VM carrying the reason, so one bad record never breaks every `vm.*` command.

    Records come from the summary index (see _records_indexed) when their vm.json has not changed since."""
    return _sorted_records(with_argv=True)


def listed_records() -> list[VmRecord]:
    """all_records() for a listing (`vm.ps`): the same records, but with `argv` left empty. The QEMU command lines
    are most of the index, and a listing never reads them."""
    # when the listing found the index stale it was read whole: its argvs go too, so a listing never has them
    return [dataclasses.replace(r, argv=[]) if r.argv else r for r in _sorted_records(with_argv=False)]


def _sorted_records(*, with_argv: bool) -> list[VmRecord]:
    root = vms_dir()
    if not root.is_dir():
        return []
    with _collector_paused():
        return sorted(_records_indexed(root, with_argv=with_argv), key=operator.attrgetter("created", "id"))


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Reading the index makes tens of thousands of lists and dicts, none in a reference cycle; the cyclic garbage
    collector would walk them all several times over (half the index's parse time with 1,000 VMs)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


# The summary index: vms/.index.json caches every readable record with the inode, mtime (ns) and size of the
# vm.json it was read from. An entry is used only while its vm.json still has exactly those (a stat per VM, no
# open and no parse of the record); anything else is read from vm.json and the index rewritten. It is a cache,
# never the truth: written without the lock (temp file + rename, so two lkctl processes at once leave one whole
# index, each entry as true as the stat it carries), rebuilt when missing, unreadable or of another format.
# Two JSON lines: the records without their argv, then every argv by id, which a listing does not parse.
INDEX_FILE = ".index.json"  # a cache: any lkctl command that reads the records may rewrite it
_INDEX_FORMAT = 3  # line 1: id -> [inode, mtime_ns, size, [fields in _indexed_fields() order]]; line 2: id -> argv


@functools.cache
def _indexed_fields() -> tuple[str, ...]:
    """The fields an index entry holds, in order: every saved field but argv (kept on the index's second line)."""
    return tuple(f.name for f in dataclasses.fields(VmRecord) if f.name not in ("argv", "problem"))


def _index_format() -> list[Any]:
    return [_INDEX_FORMAT, STATE_VERSION, list(_indexed_fields())]


def _read_index(root: Path, *, with_argv: bool) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(entries, argv by id); the argvs are None when not asked for, and both are empty when the index is missing,
    unreadable or of another format."""
    try:
        with open(root / INDEX_FILE, "rb") as f:
            head, _, tail = f.read().partition(b"\n")  # JSON text written compact has no raw newline
        index = json.loads(head)
        if isinstance(index, dict) and index.get("format") == _index_format():
            entries = index.get("records")
            argvs = json.loads(tail) if with_argv else None
            if isinstance(entries, dict) and (argvs is None or isinstance(argvs, dict)):
                return entries, argvs
    except (OSError, ValueError) as e:
        if not isinstance(e, FileNotFoundError):
            log.debug("VM index %s unreadable (%s); rebuilding it", root / INDEX_FILE, e)
    return {}, {} if with_argv else None


def _records_indexed(root: Path, *, with_argv: bool) -> list[VmRecord]:
    entries, argvs = _read_index(root, with_argv=with_argv)
    fresh: dict[str, list[Any]] = {}
    fresh_argvs: dict[str, list[str]] = {}
    records: list[VmRecord] = []
    changed = False
    with os.scandir(root) as dirs:
        for entry in dirs:
            if entry.name.startswith(".") or not entry.is_dir():
                continue  # .lock, the index and its temp files, what remove_record is deleting
            cached = entries.get(entry.name)
            if isinstance(cached, list) and len(cached) == 4:  # anything else in a damaged index: read vm.json
                try:
                    st = os.stat(f"{entry.path}/vm.json")
                except OSError:
                    st = None
                argv = [] if argvs is None else argvs.get(entry.name)
                if (
                    st is not None
                    and (cached[0], cached[1], cached[2]) == (st.st_ino, st.st_mtime_ns, st.st_size)
                    and (record := _indexed_record(cached[3], argv)) is not None
                ):
                    fresh[entry.name] = cached
                    fresh_argvs[entry.name] = record.argv
                    records.append(record if record.pid else _adopt_pidfile(record))
                    continue
            if argvs is None:  # the index must be rewritten, which needs every argv: read it whole
                return _records_indexed(root, with_argv=True)
            changed = True
            vm_dir = root / entry.name
            try:
                loaded = _read_record(vm_dir)
                if loaded is None:
                    continue
                record = VmRecord.from_json(loaded[1], vm_dir / "vm.json")
            except StateError as e:
                records.append(_adopt_pidfile(VmRecord.unknown(vm_dir, e.message)))  # a live QEMU of it can be stopped
                continue
            fresh[entry.name] = [*loaded[0], [getattr(record, name) for name in _indexed_fields()]]
            fresh_argvs[entry.name] = record.argv
            records.append(_adopt_pidfile(record))
    if changed or fresh.keys() != entries.keys():
        if argvs is None:
            return _records_indexed(root, with_argv=True)
        _write_index(root, fresh, fresh_argvs)
    return records


def _indexed_record(values: object, argv: object) -> VmRecord | None:
    """The record an index entry holds, None if the entry is not one.

    Made without VmRecord's frozen __init__ (one object.__setattr__ a field, a third of `vm.ps --all`'s cost per
    VM): the values come from a record this module saved, and VmRecord has no __post_init__ to skip."""
    names = _indexed_fields()
    if not isinstance(values, list) or len(values) != len(names) or not isinstance(argv, list):
        return None
    record = object.__new__(VmRecord)
    record.__dict__.update(zip(names, values, strict=True), argv=argv, problem="")
    return record


def _write_index(root: Path, entries: dict[str, list[Any]], argvs: dict[str, list[str]]) -> None:
    tmp = root / f".index.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"format": _index_format(), "records": entries}, f, separators=(",", ":"))
            f.write("\n")
            json.dump(argvs, f, separators=(",", ":"))
        os.replace(tmp, root / INDEX_FILE)
    except OSError as e:  # a read-only state dir: records are still read, just not cached
        log.debug("cannot write the VM index in %s: %s", root, e)
        with contextlib.suppress(OSError):
            tmp.unlink()


REMOVING = ".removing-"  # vms/.removing-p<pid>s<start>.XXXX/<id>: a VM dir being deleted (see remove_record)


def remove_record(record: VmRecord) -> None:
    """Forget a VM: its dir is renamed out of the listing in one step, then deleted. A removal that is killed
    half-way leaves either the whole VM or an owned `.removing-*` dir that the next removal or `vm.prune`
    reclaims; never a VM dir without its record, which nothing would list or remove again. Best effort (cleanup
    paths call it): what cannot be renamed is deleted in place."""
    from lkctl.leftovers import owned_tempdir, reclaim

    reclaim(vms_dir(), REMOVING)
    try:
        tomb = owned_tempdir(vms_dir(), REMOVING)
    except OSError:
        shutil.rmtree(record.dir, ignore_errors=True)
        return
    try:
        os.rename(record.dir, tomb / record.id)
    except OSError:
        shutil.rmtree(record.dir, ignore_errors=True)
    shutil.rmtree(tomb, ignore_errors=True)


def forget_ended(record: VmRecord) -> bool:
    """`vm.run --rm`'s one rule, wherever a VM is seen to have ended (its foreground run returned, `vm.stop`, a
    `vm.ps` that finds it stopped): a VM started with --rm is forgotten once it is neither running nor still being
    created, re-checked under the lock (it may have been started again meanwhile). True when its record is gone.
    Local records only: a libvirt VM's domain and volumes go through `lifecycle.remove_vm`."""
    if not record.auto_remove or record.libvirt:
        return False
    with vms_lock():
        current = load_record(record.dir)
        if current is None:
            return True
        if vm_status(current) == "running" or being_created(current):
            return False
        remove_record(current)
    return True


def find_vm(target: str, *, unknown: bool = False) -> VmRecord:
    """The VM whose id or name is `target`, or whose id or name starts with it (uniquely).

    A VM whose record cannot be read is an error unless `unknown` is True (for `vm.inspect` and `vm.rm --force`).
    """
    if not target:
        raise VmNotFound("no VM given: name a VM by its ID, name or a unique ID prefix (see vm.ps --all)")
    records = listed_records()
    found = next((r for r in records if target in (r.id, r.name)), None)
    matches = [r for r in records if r.id.startswith(target) or r.name.startswith(target)]
    if found is None and len(matches) == 1:
        found = matches[0]
    if found is not None:
        if found.problem:
            if not unknown:
                raise StateError(f"VM {found.id} is unknown: {found.problem}; vm.rm --force {found.id} forgets it")
            return found
        whole = load_record(found.dir)  # the listing left the argvs out: read the one record found whole
        if whole is None:
            raise VmNotFound(f"VM {found.name} was removed meanwhile (see vm.ps --all)")
        return whole
    if not matches:
        raise VmNotFound(f"no VM matches {target!r} (see vm.ps --all)")
    listing = ", ".join(f"{r.id} ({r.name})" for r in matches)
    raise VmNotFound(f"{target!r} is ambiguous: it matches {listing}; give more characters")


@functools.cache
def _have_proc() -> bool:
    return os.path.exists("/proc/self/stat")


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        pass
    with contextlib.suppress(OSError):
        return subprocess.run(
            ["ps", "-o", "command=", "-p", str(pid)], capture_output=True, text=True, check=False
        ).stdout
    return ""


def is_our_process(record: VmRecord) -> bool:
    """True if the recorded QEMU is alive and is really ours (not a reused PID)."""
    ident = record.identity()
    if ident is None:
        return False
    live = process_identity(ident.pid)
    if live is None or live.start != ident.start:
        return False
    if ident.boot_id and live.boot_id and ident.boot_id != live.boot_id:
        return False
    return f"lkctl-{record.id}" in _cmdline(ident.pid)


def helper_entry(pid: int, argv: Sequence[str]) -> list[str] | None:
    """How a helper daemon lkctl just started is recorded: [pid, start time, boot id, command line], so that it is
    identified like QEMU before any signal (None: it is already gone)."""
    ident = process_identity(pid)
    if ident is None:
        return None
    return [str(pid), ident.start, ident.boot_id, " ".join(argv)]


def is_our_helper(entry: Sequence[str]) -> bool:
    """True only if `entry` (see helper_entry) names a live process with the same start time, boot and command
    line. Entries recorded by an older lkctl ([pid, start] only) are never trusted: a reused PID is never signalled."""
    if len(entry) < 4:
        return False
    pid_text, start, boot, command = entry[:4]
    try:
        live = process_identity(int(pid_text))
    except ValueError:
        return False
    if live is None or live.start != start or (boot and live.boot_id and boot != live.boot_id):
        return False
    return _cmdline(live.pid).rstrip() == command


def read_pidfile(vm_dir: Path) -> int:
    try:
        return int((vm_dir / "qemu.pid").read_text().strip() or 0)
    except (FileNotFoundError, ValueError):
        return 0


def creator_identity() -> list[str]:
    """What VmRecord.creator records for this process."""
    import os

    ident = process_identity(os.getpid())
    return [str(ident.pid), ident.start] if ident else []


def being_created(record: VmRecord) -> bool:
    """True while the lkctl process that made this record is alive and has not recorded a QEMU for it yet: the
    VM is being started, and `vm.ps`/`vm.prune` must leave its record alone."""
    if record.pid or record.exit_reason or len(record.creator) != 2:
        return False
    ident = process_identity(int(record.creator[0]))
    return ident is not None and ident.start == record.creator[1]


def live_pids() -> frozenset[int] | None:
    """Every process id alive now, read once from /proc (None without /proc): lets `vm.ps` skip the per-VM
    identity check of VMs whose QEMU is long gone."""
    if not _have_proc():
        return None
    return frozenset(int(name) for name in os.listdir("/proc") if name.isdigit())


def vm_status(record: VmRecord, live: frozenset[int] | None = None) -> str:
    """`running`, `stopped`, `error` (lkctl saw it fail), `created` (not started, or being started) or `unknown`
    (the record cannot be read, or its libvirt host does not answer).

    `live` (from live_pids) is a snapshot taken before: a pid missing from it is not running."""
    if record.problem:
        return "unknown"
    if record.libvirt:  # libvirt knows; a host that does not answer gives `unknown`
        from lkctl.runtime.libvirt.backend import domain_status

        return domain_status(record)
    if (live is None or record.pid in live) and is_our_process(record):
        return "running"
    if record.exit_reason:
        return "error"
    return "stopped" if record.pid else "created"


def require_running(record: VmRecord, *, then: str = "") -> None:
    """VmError `VM web is not running (status: stopped)` (+ `; then`) unless vm_status says running."""
    status = vm_status(record)
    if status != "running":
        raise VmError(f"VM {record.name} is not running (status: {status})" + (f"; {then}" if then else ""))

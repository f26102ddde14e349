"""lkctl's Python API: run, find and drive VMs from Python, with types (`import lkctl`; see docs/api.md).

    import lkctl

    with lkctl.run("minimal", env={"GREETING": "hi"}) as vm:
        print(vm.exec(["sh", "-c", "echo $GREETING"], check=True).stdout.decode())

Every function here is a thin layer over the library the invoke tasks use (lkctl.runtime.*), so a script gets the
same validation, state and safety as `lkctl vm.run`. Errors are `lkctl.errors.LkError` subclasses; nothing here
prints or exits.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import signal
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lkctl.errors import ExecFailed

if TYPE_CHECKING:
    from lkctl import ssh
    from lkctl.build import BuildResult
    from lkctl.runtime.model import PortForward, Volume
    from lkctl.runtime.state import VmRecord
    from lkctl.settings import Settings

__all__ = ["ExecFailed", "ExecResult", "Session", "Vm", "build", "get", "ps", "run"]


@dataclass(frozen=True)
class ExecResult:
    """What a command in the guest did: its exit code and its output, byte for byte."""

    exit_code: int
    stdout: bytes
    stderr: bytes

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    @property
    def text(self) -> str:
        """stdout decoded as UTF-8 (undecodable bytes replaced)."""
        return self.stdout.decode(errors="replace")


class _Commands:
    """`exec` for whatever can run a command in the guest: a `Vm` (one connection per command, or its holder's)
    and a `Session` (one kept connection)."""

    def exec(
        self,
        argv: Sequence[str],
        *,
        input: bytes | str | None = None,
        env: Mapping[str, str] | None = None,
        workdir: str | None = None,
        check: bool = False,
        timeout: float | None = None,
    ) -> ExecResult:
        """Run argv in the guest over SSH (quoted exactly, never re-parsed; host key pinned) and collect its exit
        code, stdout and stderr.

        `input` is fed to its stdin; `check=True` raises ExecFailed on a non-zero exit."""
        data = input.encode() if isinstance(input, str) else input
        code, out, err = self._run(list(argv), data, dict(env) if env else None, workdir, timeout)
        result = ExecResult(code, out, err)
        if check and code != 0:
            raise ExecFailed(argv, result)
        return result

    def _run(
        self, argv: list[str], input: bytes | None, env: dict[str, str] | None, workdir: str | None,
        timeout: float | None,
    ) -> tuple[int, bytes, bytes]:  # fmt: skip
        raise NotImplementedError


class Session(_Commands):
    """One SSH connection to a VM kept for many `exec`s (from `Vm.session()`): `lkctl.ssh.Session` underneath."""

    def __init__(self, held: ssh.Session) -> None:
        self._ssh = held

    def _run(
        self, argv: list[str], input: bytes | None, env: dict[str, str] | None, workdir: str | None,
        timeout: float | None,
    ) -> tuple[int, bytes, bytes]:  # fmt: skip
        return self._ssh.exec(argv, input=input, env=env, workdir=workdir, timeout=timeout)


class Vm(_Commands):
    """A VM lkctl knows about. Facts that change (status, port after a restart) are read fresh each time.

    As a context manager (`with lkctl.run(...) as vm:`) it is stopped and removed on exit.
    """

    def __init__(self, record: VmRecord, settings: Settings | None = None) -> None:
        self._record = record
        self._settings = settings

    # -- facts --
    @property
    def id(self) -> str:
        return self._record.id

    @property
    def name(self) -> str:
        return self._record.name

    @property
    def record(self) -> VmRecord:
        """The VM's current on-disk record (re-read; VmNotFound once it was removed)."""
        from lkctl.errors import VmNotFound
        from lkctl.runtime.state import load_record

        record = load_record(self._record.dir)
        if record is None:
            raise VmNotFound(f"VM {self.name} ({self.id}) has been removed")
        self._record = record
        return record

    @property
    def status(self) -> str:
        """`running`, `stopped`, `error` or `created` (derived from the live process, never stored)."""
        from lkctl.runtime.state import vm_status

        return vm_status(self.record)

    @property
    def ssh_port(self) -> int:
        return self.record.ssh_port

    def settings(self) -> Settings:
        from lkctl.settings import load_settings

        if self._settings is None:
            self._settings = load_settings()
        return self._settings

    def inspect(self) -> dict[str, Any]:
        """What `vm.inspect` prints: argv, ports, paths of keys, console and QMP socket, image digest, status."""
        from lkctl.runtime.lifecycle import inspect_vm

        return inspect_vm(self.record).to_json()

    def __repr__(self) -> str:
        return f"<Vm {self.name} ({self.id})>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vm) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    # -- commands (`exec` is _Commands') --
    def _run(
        self, argv: list[str], input: bytes | None, env: dict[str, str] | None, workdir: str | None,
        timeout: float | None,
    ) -> tuple[int, bytes, bytes]:  # fmt: skip
        from lkctl.runtime.vm import exec_in_vm

        out, err = io.BytesIO(), io.BytesIO()
        stdin = None if input is None else io.BytesIO(input)
        code = exec_in_vm(
            self.record, argv, stdin=stdin, stdout=out, stderr=err, env=env, workdir=workdir, timeout=timeout
        )
        return code, out.getvalue(), err.getvalue()

    @contextlib.contextmanager
    def session(self) -> Iterator[Session]:
        """One SSH connection held open for many `exec`s (connecting is most of a short command's cost)."""
        from lkctl.runtime.state import require_running
        from lkctl.runtime.vm import ssh_target
        from lkctl.ssh import session

        record = self.record
        require_running(record)
        with session(ssh_target(record)) as held:
            yield Session(held)

    def cp_to(self, local: str | os.PathLike[str], remote: str) -> None:
        """Copy a host file or directory tree into the guest (as `vm.cp LOCAL VM:REMOTE`)."""
        from lkctl.runtime.lifecycle import copy_path

        copy_path(os.path.abspath(local), f"{self.id}:{remote}")

    def cp_from(self, remote: str, local: str | os.PathLike[str]) -> None:
        """Copy a guest file or directory tree to the host (as `vm.cp VM:REMOTE LOCAL`)."""
        from lkctl.runtime.lifecycle import copy_path

        copy_path(f"{self.id}:{remote}", os.path.abspath(local))

    def logs(self, *, tail: int | None = None) -> str:
        """The console output so far (the last `tail` lines if given)."""
        from lkctl.runtime.watch import read_console

        return b"".join(line.text for line in read_console(self.record, tail=tail)).decode(errors="replace")

    def stats(self) -> dict[str, Any]:
        """CPU %, RSS, guest memory, vCPUs and uptime (QMP plus /proc of its QEMU)."""
        from lkctl.runtime.watch import vm_stats

        return vm_stats(self.record)

    def ssh_config(self) -> str:
        """An OpenSSH `Host` block for `ssh -F FILE NAME` with the VM's pinned host key."""
        from lkctl.runtime.control import ssh_config

        return ssh_config(self.record)

    # -- lifecycle --
    def stop(self, *, timeout: float | None = None) -> str:
        """ACPI power-off, then SIGTERM, then SIGKILL; returns how it ended (`powered off`, `killed`...)."""
        from lkctl.runtime.vm import stop_vm

        return stop_vm(self.record, timeout=timeout if timeout is not None else self.settings().vm.stop_timeout)

    def start(self, *, timeout: float | None = None) -> Vm:
        """Boot a stopped VM again (same keys, ports, volumes, disks); returns once SSH answers."""
        from lkctl.runtime.control import start_vm

        ready = timeout if timeout is not None else self.settings().vm.ready_timeout
        self._record = start_vm(self.record, ready_timeout=ready)
        return self

    def kill(self, sig: signal.Signals = signal.SIGKILL) -> bool:
        """Signal the VM's QEMU (no guest shutdown); False if it was not running."""
        from lkctl.runtime.lifecycle import kill_vm

        return kill_vm(self.record, sig)

    def wait(self, *, timeout: float | None = None) -> int:
        """Block until the VM stops; its exit status (0 for a clean power-off, see `vm.wait`)."""
        from lkctl.runtime.watch import wait_vm

        return wait_vm(self.record, timeout=timeout)

    def rm(self, *, force: bool = False) -> None:
        """Forget the VM (keys, logs, disks); `force=True` stops it first if it runs."""
        from lkctl.runtime.lifecycle import remove_vm

        remove_vm(self.record, force=force, stop_timeout=self.settings().vm.stop_timeout)

    def __enter__(self) -> Vm:
        return self

    def __exit__(self, *exc: object) -> None:
        from lkctl.errors import VmNotFound

        with contextlib.suppress(VmNotFound):
            self.rm(force=True)


def _ports(ports: Sequence[str | PortForward]) -> tuple[PortForward, ...]:
    from lkctl.runtime.model import parse_port

    return tuple(parse_port(p) if isinstance(p, str) else p for p in ports)


def _volumes(volumes: Sequence[str | Volume]) -> tuple[Volume, ...]:
    from lkctl.runtime.model import parse_volume

    return tuple(parse_volume(v) if isinstance(v, str) else v for v in volumes)


def run(
    image: str,
    *,
    name: str | None = None,
    memory: int | None = None,
    cpus: int | None = None,
    ports: Sequence[str | PortForward] = (),
    volumes: Sequence[str | Volume] = (),
    env: Mapping[str, str] | None = None,
    hostname: str | None = None,
    disk: str | None = None,
    variables: Mapping[str, str] | None = None,
    ssh_port: int = 0,
    timeout: float | None = None,
    settings: Settings | None = None,
    snapshot: bool = False,
) -> Vm:
    """Boot `image` (a template name, installed image, LinuxKit YAML or image path) as a new detached VM and
    return it once the guest answers SSH. `ports` like `"8080:80"`, `volumes` like `"./src:/src:ro"`;
    `snapshot=True` restores it from a memory snapshot of the image (README: Warm starts)."""
    from lkctl.runtime.disks import parse_data_disk
    from lkctl.runtime.launch import run_image
    from lkctl.runtime.vm import RunOptions
    from lkctl.settings import load_settings

    settings = settings or load_settings()
    opts = RunOptions(
        name=name or "",
        memory=memory or 0,
        cpus=cpus or 0,
        ssh_port=ssh_port,
        ports=_ports(ports),
        detach=True,
        ready_timeout=float(timeout or 0),
        volumes=_volumes(volumes),
        data_disk=parse_data_disk(disk) if disk else None,
        hypervisor=settings.vm.hypervisor,
        virtiofs=settings.vm.virtiofs,
        hostname=hostname or "",
        env=tuple((env or {}).items()),
        snapshot=snapshot,
    )
    record, _ = run_image(image, opts, settings, variables=variables)
    return Vm(record, settings)


def get(name_or_id: str) -> Vm:
    """The VM with this ID or name, or a unique ID/name prefix (VmNotFound otherwise)."""
    from lkctl.runtime.state import find_vm

    return Vm(find_vm(name_or_id))


def ps(all: bool = False) -> list[Vm]:
    """Running VMs, oldest first (`all=True`: stopped ones too)."""
    from lkctl.runtime.launch import list_vms
    from lkctl.runtime.state import find_vm

    return [Vm(find_vm(row.id)) for row in list_vms(include_stopped=all)]


def build(
    source: str,
    *,
    files: Sequence[str | os.PathLike[str]] = (),
    variables: Mapping[str, str] | None = None,
    name: str = "",
    out: str | os.PathLike[str] | None = None,
    formats: Sequence[str] = (),
    **options: Any,
) -> BuildResult:
    """Build a template or LinuxKit YAML files as `image.build` does (cached by content); `formats` like
    `["iso-efi", "qcow2-bios"]` (default kernel+initrd), other options as `lkctl.build.build_image`'s."""
    from lkctl.build import BuildOptions
    from lkctl.errors import ConfigError
    from lkctl.images import build_source

    if formats:
        options["formats"] = tuple(formats)
    try:
        built_with = BuildOptions(**options)
    except TypeError:
        known = ", ".join(f.name for f in dataclasses.fields(BuildOptions))
        raise ConfigError(f"unknown build option in {sorted(options)}; known: {known}") from None
    return build_source(
        source, [Path(f) for f in files], variables=variables, name=name,
        out_dir=Path(out) if out is not None else None, options=built_with,
    )  # fmt: skip

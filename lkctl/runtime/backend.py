"""Hypervisor backends behind one protocol, chosen in one place (`backend_for`).

A backend turns the neutral model (lkctl.runtime.model) into running processes: it probes the host, makes the
files its argv names in the VM's state dir, builds the argv (a pure function of the spec), says what the one
start path (lkctl.runtime.start) must run around it, and where its console lands. Adding a backend means adding
a class here and a row to `_BACKENDS`; `vm.run` never branches on the hypervisor's name.
(libvirt is a different shape, a remote daemon that owns its QEMU: lkctl.runtime.libvirt.)
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from lkctl.runtime.hyperkit import Hypervisor

if TYPE_CHECKING:
    from lkctl.runtime.host import HostCaps
    from lkctl.runtime.model import VmSpec
    from lkctl.runtime.start import StartPlan
    from lkctl.runtime.state import VmRecord
    from lkctl.settings import Settings

__all__ = ["Backend", "HyperkitBackend", "QemuBackend", "backend_for", "choose_backend"]


class Backend(Protocol):
    """What `vm.run` needs from a hypervisor."""

    @property
    def hypervisor(self) -> Hypervisor: ...

    def probe(self, settings: Settings, kernel: Path | None) -> HostCaps:
        """The host's facts for this hypervisor (accelerator, arch, binary); cached per boot."""
        ...

    def prepare_files(self, spec: VmSpec, vm_dir: Path, host: HostCaps) -> None:
        """Make what the argv names in the VM's state dir (overlays, data disk, firmware vars, guest files)."""
        ...

    def argv(self, spec: VmSpec, host: HostCaps) -> list[str]:
        """The hypervisor's command line: pure, golden-tested."""
        ...

    def start_plan(self, spec: VmSpec, argv: list[str]) -> StartPlan:
        """What the start path runs: helper daemons, then `argv`."""
        ...

    def after_start(self, record: VmRecord, spec: VmSpec) -> None:
        """Work once the hypervisor runs and before the start counts as done (a failure rolls the start back)."""
        ...

    def console_path(self, vm_dir: Path) -> Path:
        """Where the guest's console output lands."""
        ...


class QemuBackend:
    """QEMU: argv from lkctl.runtime.qemu, daemonized (`-daemonize`) for detached runs, virtiofsd for virtiofs."""

    hypervisor = Hypervisor.QEMU

    def probe(self, settings: Settings, kernel: Path | None) -> HostCaps:
        from lkctl.runtime.host import probe_host

        return probe_host(accel=settings.vm.accel, qemu=settings.vm.qemu, kernel=kernel, hypervisor=self.hypervisor)

    def prepare_files(self, spec: VmSpec, vm_dir: Path, host: HostCaps) -> None:
        from lkctl.runtime.disks import prepare_vm_files

        prepare_vm_files(spec, vm_dir, host, hypervisor=self.hypervisor)

    def argv(self, spec: VmSpec, host: HostCaps) -> list[str]:
        from lkctl.runtime.qemu import qemu_argv

        return qemu_argv(spec, host)

    def start_plan(self, spec: VmSpec, argv: list[str]) -> StartPlan:
        from lkctl.runtime.start import StartPlan, virtiofs_daemons

        return StartPlan(tuple(argv), virtiofs_daemons(spec))

    def after_start(self, record: VmRecord, spec: VmSpec) -> None:
        return None

    def console_path(self, vm_dir: Path) -> Path:
        from lkctl.runtime.qemu import CONSOLE_LOG

        return vm_dir / CONSOLE_LOG


class HyperkitBackend:
    """hyperkit on Intel Macs, as LinuxKit's `run hyperkit`: its own vpnkit for networking and port publishing,
    the console in a ring file. NEVER EXECUTED here: no hyperkit or vpnkit runs on Linux (argv golden-tested)."""

    hypervisor = Hypervisor.HYPERKIT

    def probe(self, settings: Settings, kernel: Path | None) -> HostCaps:
        from lkctl.runtime.host import probe_host

        return probe_host(accel=settings.vm.accel, qemu=settings.vm.qemu, kernel=kernel, hypervisor=self.hypervisor)

    def prepare_files(self, spec: VmSpec, vm_dir: Path, host: HostCaps) -> None:
        from lkctl.runtime.disks import prepare_vm_files

        prepare_vm_files(spec, vm_dir, host, hypervisor=self.hypervisor)

    def argv(self, spec: VmSpec, host: HostCaps) -> list[str]:
        from lkctl.runtime.hyperkit import hyperkit_argv

        return hyperkit_argv(spec, host)

    def start_plan(self, spec: VmSpec, argv: list[str]) -> StartPlan:
        from lkctl.runtime.hyperkit import vpnkit_link
        from lkctl.runtime.start import StartPlan, virtiofs_daemons

        link = vpnkit_link(spec)
        return StartPlan(tuple(argv), virtiofs_daemons(spec), vpnkit=link is not None and link.own)

    def after_start(self, record: VmRecord, spec: VmSpec) -> None:
        """Forward the SSH port and --port forwards through the VM's vpnkit, as LinuxKit's vpnkitPublishPorts
        does. NEVER EXECUTED against a real vpnkit (tested against an HTTP server on a unix socket)."""
        from lkctl.runtime.hyperkit import vpnkit_link
        from lkctl.runtime.model import PortForward
        from lkctl.runtime.vpnkit import expose_port

        link = vpnkit_link(spec)
        if link is None or not link.port_control:
            return
        forwards = [PortForward(spec.ssh_port, 22)] if spec.ssh_port else []
        for p in [*forwards, *spec.ports]:
            expose_port(record.dir / link.port_control, proto=p.proto, host_ip=p.host_ip, host_port=p.host_port,
                        guest_ip=link.guest_ip, guest_port=p.guest_port)  # fmt: skip

    def console_path(self, vm_dir: Path) -> Path:
        from lkctl.runtime.hyperkit import CONSOLE_RING

        return vm_dir / CONSOLE_RING


_BACKENDS: dict[Hypervisor, type[QemuBackend] | type[HyperkitBackend]] = {
    Hypervisor.QEMU: QemuBackend,
    Hypervisor.HYPERKIT: HyperkitBackend,
}


def backend_for(hypervisor: Hypervisor) -> Backend:
    """The backend of `hypervisor`: the one place a hypervisor's name becomes code."""
    return _BACKENDS[hypervisor]()


def choose_backend(requested: str, settings: Settings) -> Backend:
    """The backend `vm.run --hypervisor REQUESTED` uses (auto | qemu | hyperkit), or a one-line error now, before
    anything is built or created (see lkctl.runtime.hyperkit.require_hypervisor)."""
    from lkctl.runtime.hyperkit import require_hypervisor

    return backend_for(require_hypervisor(requested, settings.vm.qemu))

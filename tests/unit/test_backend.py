"""Hypervisor backends behind one protocol: each Hypervisor has exactly one, chosen in one place."""

from __future__ import annotations

from pathlib import Path

import pytest

from lkctl.errors import ConfigError
from lkctl.runtime.backend import Backend, HyperkitBackend, QemuBackend, backend_for, choose_backend
from lkctl.runtime.host import Accel, HostCaps
from lkctl.runtime.hyperkit import CONSOLE_RING, Hypervisor, hyperkit_argv
from lkctl.runtime.model import BootImage, ImageFormat, Network, VmSpec
from lkctl.runtime.qemu import CONSOLE_LOG, qemu_argv
from lkctl.settings import Settings

MAC_INTEL = HostCaps(os="darwin", arch="x86_64", accel=Accel.HVF, qemu="/usr/local/bin/qemu-system-x86_64")
SPEC = VmSpec("0a1b2c3d", BootImage(ImageFormat.KERNEL_INITRD, Path("/i/x"), kernel=Path("/k"), initrd=Path("/r")),
              ssh_port=40022)  # fmt: skip


@pytest.mark.parametrize("hypervisor", list(Hypervisor))
def test_every_hypervisor_has_a_backend_that_says_which_it_is(hypervisor: Hypervisor) -> None:
    backend: Backend = backend_for(hypervisor)
    assert backend.hypervisor is hypervisor


def test_each_backend_builds_its_own_argv_and_names_its_console() -> None:
    qemu, hyperkit = backend_for(Hypervisor.QEMU), backend_for(Hypervisor.HYPERKIT)
    assert isinstance(qemu, QemuBackend) and isinstance(hyperkit, HyperkitBackend)
    assert qemu.argv(SPEC, MAC_INTEL) == qemu_argv(SPEC, MAC_INTEL)
    assert hyperkit.argv(SPEC, MAC_INTEL) == hyperkit_argv(SPEC, MAC_INTEL)
    assert qemu.console_path(Path("/vm")) == Path("/vm") / CONSOLE_LOG
    assert hyperkit.console_path(Path("/vm")) == Path("/vm") / CONSOLE_RING


def test_hyperkit_starts_its_own_vpnkit_for_user_networking_and_qemu_none() -> None:
    argv = ["x"]
    assert backend_for(Hypervisor.HYPERKIT).start_plan(SPEC, argv).vpnkit
    assert not backend_for(Hypervisor.HYPERKIT).start_plan(VmSpec("0a1b2c3d", SPEC.boot, network=Network.NONE),
                                                            argv).vpnkit  # fmt: skip
    plan = backend_for(Hypervisor.QEMU).start_plan(SPEC, argv)
    assert plan.argv == ("x",) and not plan.vpnkit and plan.daemons == ()


def test_choosing_hyperkit_on_linux_fails_in_one_line_before_anything_starts() -> None:
    import platform

    if platform.system() == "Darwin":
        pytest.skip("on macOS hyperkit may exist")
    with pytest.raises(ConfigError, match=r"hyperkit requires macOS on Intel \(this host is linux/"):
        choose_backend("hyperkit", Settings())
    with pytest.raises(ConfigError, match="unknown hypervisor 'xhyve'"):
        choose_backend("xhyve", Settings())

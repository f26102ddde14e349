"""`vm.run --network user|restricted|none`: the QEMU network arguments each mode gives, and what each refuses."""

from __future__ import annotations

import re

import pytest

from lkctl.errors import ConfigError
from lkctl.runtime.hyperkit import hyperkit_argv
from lkctl.runtime.model import Network, PortForward, parse_network
from lkctl.runtime.network import check_run_network, network_mode
from lkctl.runtime.qemu import qemu_argv
from lkctl.runtime.vm import RunOptions
from lkctl.settings import Settings, VmSettings
from tests.unit.test_hyperkit_argv import MAC_INTEL
from tests.unit.test_qemu_argv import LINUX_TCG, after, spec

DEVICE = ["-device", "virtio-net-pci,netdev=net0,mac=52:54:0a:1b:2c:3d"]


def _net(argv: list[str]) -> list[str]:
    i = argv.index("-netdev")
    return argv[i : i + 4]


def test_user_network_forwards_ssh_on_loopback_and_leaves_the_guest_unrestricted() -> None:
    argv = qemu_argv(spec(network=Network.USER), LINUX_TCG)
    assert _net(argv) == ["-netdev", "user,id=net0,hostfwd=tcp:127.0.0.1:40022-:22", *DEVICE]


def test_restricted_network_is_slirp_restrict_on_with_the_same_forwards() -> None:
    argv = qemu_argv(spec(network=Network.RESTRICTED, ports=(PortForward(8080, 80),)), LINUX_TCG)
    assert _net(argv) == [
        "-netdev",
        "user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:40022-:22,hostfwd=tcp:127.0.0.1:8080-:80",
        *DEVICE,
    ]
    assert argv.count("-netdev") == 1 and not any("guestfwd" in a for a in argv)


def test_no_network_has_no_nic_at_all() -> None:
    argv = qemu_argv(spec(network=Network.NONE, ssh_port=0), LINUX_TCG)
    assert after(argv, "-netdev") == [] and after(argv, "-nic") == []
    assert not any("virtio-net" in a for a in argv)


@pytest.mark.parametrize(("text", "mode"), [("user", Network.USER), ("Restricted", Network.RESTRICTED),
                                            ("none", Network.NONE)])  # fmt: skip
def test_parse_network_accepts_the_modes(text: str, mode: Network) -> None:
    assert parse_network(text) is mode


@pytest.mark.parametrize("text", ["", "bridge", "host", "user,restrict=on"])
def test_parse_network_refuses_anything_else_in_one_line(text: str) -> None:
    with pytest.raises(ConfigError, match=r"^--network .*: expected user, restricted or none") as e:
        parse_network(text)
    assert "\n" not in e.value.message


def test_hyperkit_refuses_restricted_rather_than_silently_opening_the_network() -> None:
    with pytest.raises(ConfigError, match="--network restricted needs QEMU's user network"):
        hyperkit_argv(spec(network=Network.RESTRICTED), MAC_INTEL)


def _settings(network: str = "user") -> Settings:
    return Settings(vm=VmSettings(network=network))


def test_the_mode_comes_from_the_flag_else_the_setting() -> None:
    assert network_mode(RunOptions(), _settings()) is Network.USER
    assert network_mode(RunOptions(), _settings("restricted")) is Network.RESTRICTED
    assert network_mode(RunOptions(network=Network.NONE, detach=False), _settings("restricted")) is Network.NONE
    with pytest.raises(ConfigError, match=r"^lkctl\.vm\.network: bridge: expected user, restricted or none"):
        network_mode(RunOptions(), _settings("bridge"))


@pytest.mark.parametrize(
    ("opts", "says"),
    [
        (RunOptions(network=Network.NONE, detach=True), "run it in the foreground, or with -d --no-wait"),
        (RunOptions(network=Network.NONE, ssh_port=2222, detach=False), "drop --ssh-port/--port"),
        (RunOptions(network=Network.NONE, ports=(PortForward(8080, 80),), detach=False), "drop --ssh-port/--port"),
    ],
)
def test_no_network_refuses_what_needs_one(opts: RunOptions, says: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(says)):
        check_run_network(opts, _settings())


def test_no_network_allows_the_foreground_and_a_detached_run_that_does_not_wait() -> None:
    for opts in (RunOptions(network=Network.NONE, detach=False), RunOptions(network=Network.NONE, wait_ssh=False)):
        assert check_run_network(opts, _settings()) is Network.NONE
    assert check_run_network(RunOptions(network=Network.RESTRICTED), _settings()) is Network.RESTRICTED

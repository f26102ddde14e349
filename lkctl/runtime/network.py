"""What a VM's network may reach, and what each mode rules out (README "Safety").

`user` (QEMU's slirp) reaches the outside and every service on the host's 127.0.0.1 through 10.0.2.2;
`restricted` adds slirp's `restrict=on`, so the guest reaches nothing while lkctl's forwards (SSH, --port) still
work; `none` has no NIC at all, hence no SSH: no forwards, no detached wait for the guest to answer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lkctl.errors import ConfigError
from lkctl.runtime.model import Network, parse_network

if TYPE_CHECKING:
    from lkctl.runtime.vm import RunOptions
    from lkctl.settings import Settings

__all__ = ["check_run_network", "network_mode"]


def network_mode(opts: RunOptions, settings: Settings) -> Network:
    """The mode asked for with --network, else the `lkctl.vm.network` setting."""
    if opts.network is not None:
        return opts.network
    try:
        return parse_network(settings.vm.network)
    except ConfigError as e:
        raise ConfigError(f"lkctl.vm.network: {e.message.removeprefix('--network ')}") from None


def check_run_network(opts: RunOptions, settings: Settings) -> Network:
    """The VM's network mode, after refusing what it cannot do (before anything is built or made)."""
    mode = network_mode(opts, settings)
    if mode is not Network.NONE:
        return mode
    if opts.ssh_port or opts.ports:
        raise ConfigError("--network none gives the VM no network: drop --ssh-port/--port, or use --network restricted")
    if opts.detach and opts.wait_ssh:
        raise ConfigError(
            "--network none gives the VM no network, so lkctl cannot reach its SSH (no vm.exec, vm.cp or ready "
            "check): run it in the foreground, or with -d --no-wait"
        )
    return mode

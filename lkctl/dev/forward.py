"""Port forwards added to and removed from a running VM (QEMU's user-mode network, netdev `net0`), over QMP.

QEMU's own table (`info usernet`) is the truth about what is forwarded: nothing is remembered on our side.
"""

from __future__ import annotations

import re

from lkctl.errors import ConfigError, VmError
from lkctl.runtime.model import PortForward
from lkctl.runtime.ports import port_free
from lkctl.runtime.qemu import QMP_SOCKET
from lkctl.runtime.qmp import hmp_command
from lkctl.runtime.state import VmRecord

__all__ = ["add_forward", "live_forwards", "parse_usernet", "remove_forward"]

_NETDEV = "net0"
# `  TCP[HOST_FORWARD]  13       127.0.0.1  8000       10.0.2.15  8000     0     0`
_ROW = re.compile(r"^\s*(TCP|UDP)\[HOST_FORWARD\]\s+\S+\s+(\S+)\s+(\d+)\s+(\S+)\s+(\d+)", re.MULTILINE)


def parse_usernet(text: str, *, skip_guest_ports: tuple[int, ...] = (22,)) -> list[PortForward]:
    """The host forwards in `info usernet` output (the SSH forward left out)."""
    out = []
    for proto, host_ip, host_port, _guest_ip, guest_port in _ROW.findall(text):
        if int(guest_port) in skip_guest_ports:
            continue
        out.append(PortForward(int(host_port), int(guest_port), host_ip, proto.lower()))
    return out


def live_forwards(record: VmRecord) -> list[PortForward]:
    """What QEMU forwards for this VM right now, besides SSH."""
    return parse_usernet(hmp_command(record.dir / QMP_SOCKET, "info usernet"))


def add_forward(record: VmRecord, forward: PortForward) -> None:
    """Forward host `host_ip:host_port` to the guest's `guest_port` on the running VM (no reboot)."""
    if not port_free(forward.host_ip, forward.host_port, forward.proto):
        raise ConfigError(
            f"port {forward.host_ip}:{forward.host_port} is already in use on this host; choose another with --port"
        )
    rule = f"{forward.proto}:{forward.host_ip}:{forward.host_port}-:{forward.guest_port}"
    answer = hmp_command(record.dir / QMP_SOCKET, f"hostfwd_add {_NETDEV} {rule}").strip()
    if answer:  # HMP is silent on success
        raise VmError(f"QEMU could not forward {forward}: {answer.splitlines()[0]}")


def remove_forward(record: VmRecord, forward: PortForward) -> None:
    """Remove a forward added by add_forward (a VM that is gone has nothing left to remove)."""
    rule = f"{forward.proto}:{forward.host_ip}:{forward.host_port}"
    answer = hmp_command(record.dir / QMP_SOCKET, f"hostfwd_remove {_NETDEV} {rule}").strip()
    if answer and "removed" not in answer:
        raise VmError(f"QEMU could not remove the forward {forward}: {answer.splitlines()[0]}")

"""Host ports a VM forwards: free-port picking and the checks made before QEMU binds them."""

from __future__ import annotations

import errno
import socket
from collections.abc import Sequence

from lkctl.errors import ConfigError
from lkctl.runtime.model import PortForward

__all__ = ["check_ports", "free_port", "port_free"]


def port_free(ip: str, port: int, proto: str = "tcp") -> bool:
    """True if `ip:port` can be bound now, as QEMU binds its forwards."""
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET, kind) as s:
        if kind == socket.SOCK_STREAM:
            # as QEMU binds its forwards: a port whose last connection lingers in TIME_WAIT is free (the VM's
            # connection holder keeps one open, and it ends in TIME_WAIT when QEMU goes); a listener is not
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((ip, port))
        except OSError as e:
            if e.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise ConfigError(f"cannot bind {ip}:{port}: {e.strerror}") from None
    return True


def free_port() -> int:
    """A loopback TCP port free right now (someone may take it before QEMU binds it: callers retry)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _clash(a: PortForward, b: PortForward) -> bool:
    """Whether QEMU could not bind both: the same port and protocol on the same address, or on any address and
    0.0.0.0 (which takes the port on every address)."""
    import ipaddress

    same_port = a.host_port == b.host_port and a.proto == b.proto
    return same_port and (
        a.host_ip == b.host_ip or any(ipaddress.ip_address(ip).is_unspecified for ip in (a.host_ip, b.host_ip))
    )


def check_ports(ssh_port: int, ports: Sequence[PortForward]) -> None:
    """Refuse a host port forwarded twice (also 0.0.0.0:P beside 127.0.0.1:P) or already in use (`ssh_port` 0: no
    SSH forward)."""
    seen: list[PortForward] = []
    wanted = [PortForward(ssh_port, 22)] if ssh_port else []
    for p in [*wanted, *ports]:
        other = next((q for q in seen if _clash(p, q)), None)
        if other is not None:
            also = "" if other.host_ip == p.host_ip else f" (as {other.host_ip}:{other.host_port} too)"
            raise ConfigError(f"host port {p.host_ip}:{p.host_port}/{p.proto} is forwarded twice{also}")
        seen.append(p)
        if not port_free(p.host_ip, p.host_port, p.proto):
            raise ConfigError(f"port {p.host_ip}:{p.host_port}/{p.proto} is already in use; choose another host port")

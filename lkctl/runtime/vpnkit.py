"""vpnkit for hyperkit VMs: user-mode networking and port forwards, the way `linuxkit run hyperkit` does them.

hyperkit has no user networking of its own. Like LinuxKit's `--networking vpnkit` (no socket paths given), lkctl
starts one vpnkit per VM in the VM's state dir, handing it two listening unix sockets: the ethernet socket that
hyperkit's `virtio-vpnkit` device connects to, and the port socket that serves both the guest's 9P `port` mount and
the HTTP API the host uses to publish ports (`POST /forwards/expose/port`). Host→guest traffic reaches the guest
over vsock port 62373 (LinuxKit's vpnkit-forwarder must run in the guest to accept it).

Unlike LinuxKit, lkctl asks vpnkit for a fixed guest address (hyperkit's `preferred_ipv4=`, LinuxKit's `--ip`):
the vpnkit is private to the VM, so the address cannot clash, and lkctl knows where to forward ports without
registering a VIF and running DHCP over vpnkit's vmnet protocol the way LinuxKit's `vpnkitPublishPorts` does.

NEVER EXECUTED against a real vpnkit or hyperkit (this project is developed on Linux, where neither runs). What is
exercised here: the argv (golden tests against LinuxKit's), the listening sockets handed over as fds 3 and 4 (to a
real child process), and the HTTP expose request (against a real HTTP server on a unix socket).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import socket
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from lkctl import proc
from lkctl.errors import ConfigError, VmError

if TYPE_CHECKING:
    import http.client

__all__ = [
    "VPNKIT_ETH_SOCKET",
    "VPNKIT_FORWARDER_VSOCK_PORT",
    "VPNKIT_GUEST_IP",
    "VPNKIT_PORT_SOCKET",
    "VPNKIT_VSOCK_SOCKET",
    "VpnkitLink",
    "expose_port",
    "expose_request",
    "find_vpnkit",
    "own_vpnkit_link",
    "start_vpnkit",
    "vpnkit_argv",
    "vpnkit_uuid",
]

# LinuxKit's names (run_hyperkit.go), relative to the VM's state dir where hyperkit and vpnkit run
VPNKIT_ETH_SOCKET = "vpnkit_eth.sock"
VPNKIT_PORT_SOCKET = "vpnkit_port.sock"
VPNKIT_VSOCK_SOCKET = "connect"  # hyperkit creates it: vpnkit dials the guest's vsock ports through it
VPNKIT_FORWARDER_VSOCK_PORT = 62373  # the guest's vpnkit-forwarder listens here for host→guest connections
# vpnkit's default subnet is 192.168.65.0/24 (gateway .1, host .2, guests from .3): the first guest address
VPNKIT_GUEST_IP = "192.168.65.3"
_UUID_NAMESPACE = uuid.UUID("6c6b6374-7670-4e6b-8000-76706e6b6974")
_SUN_PATH_MAX = 104  # macOS's sockaddr_un.sun_path (Linux: 108)
_FIRST_FD = 3  # vpnkit is told `--ethernet fd:3 --port fd:4`, as Go's ExtraFiles numbers them for LinuxKit


@dataclass(frozen=True)
class VpnkitLink:
    """How a hyperkit VM reaches its vpnkit: the sockets (relative to the state dir, or absolute), the UUID vpnkit
    knows the VM by, the address it gives the guest, and whether lkctl runs this vpnkit (then the guest also gets
    the 9P `port` mount and the vsock forward, as LinuxKit sets up)."""

    ethernet: str
    port_control: str = ""  # "" when unknown: ports cannot be published
    uuid: str = ""
    guest_ip: str = ""
    own: bool = False


def vpnkit_uuid(vm_id: str) -> str:
    """The UUID vpnkit knows the VM by. vpnkit derives the guest's MAC from it, so it is stable per VM: LinuxKit
    persists a random one in `<state>/vpnkit.uuid`; lkctl derives it from the VM id."""
    return str(uuid.uuid5(_UUID_NAMESPACE, vm_id))


def own_vpnkit_link(vm_id: str) -> VpnkitLink:
    """The link to the vpnkit lkctl starts for VM `vm_id` in its state dir (what `start_vpnkit` creates)."""
    return VpnkitLink(VPNKIT_ETH_SOCKET, VPNKIT_PORT_SOCKET, vpnkit_uuid(vm_id), VPNKIT_GUEST_IP, own=True)


def find_vpnkit() -> str:
    """vpnkit's path: on PATH, else the copy Docker Desktop ships. ConfigError saying how to get one."""
    found = shutil.which("vpnkit") or shutil.which("com.docker.vpnkit")
    if found:
        return found
    for candidate in (
        "/Applications/Docker.app/Contents/Resources/bin/com.docker.vpnkit",
        "/Applications/Docker.app/Contents/MacOS/vpnkit",
    ):
        if os.access(candidate, os.X_OK):
            return candidate
    raise ConfigError(
        "hyperkit's user networking needs vpnkit and none was found: put `vpnkit` on PATH (Docker Desktop ships "
        "one; releases at github.com/moby/vpnkit), or use --hypervisor qemu"
    )


def vpnkit_argv(binary: str) -> list[str]:
    """vpnkit's argv as LinuxKit's launchVPNKit builds it: the two listening sockets arrive as fds 3 and 4."""
    return [binary, "--ethernet", "fd:3", "--vsock-path", VPNKIT_VSOCK_SOCKET, "--port", "fd:4"]


def _listen(path: Path) -> socket.socket:
    if len(os.fsencode(path)) >= _SUN_PATH_MAX:
        raise ConfigError(
            f"{path}: too long for a unix socket ({_SUN_PATH_MAX - 1} bytes at most on macOS); "
            f"use a shorter state directory (LKCTL_STATE_DIR)"
        )
    path.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(os.fspath(path))
        sock.listen()
    except BaseException:
        sock.close()
        raise
    return sock


def start_vpnkit(state_dir: Path, binary: str, *, log: Path | None = None) -> subprocess.Popen[bytes]:
    """Start the VM's own vpnkit in `state_dir`, in its own session, listening on VPNKIT_ETH_SOCKET and
    VPNKIT_PORT_SOCKET (created here, as LinuxKit does, so hyperkit can connect as soon as it starts)."""
    sockets = [_listen(state_dir / VPNKIT_ETH_SOCKET)]
    try:
        sockets.append(_listen(state_dir / VPNKIT_PORT_SOCKET))
    except BaseException:
        sockets[0].close()
        raise
    # fds >= 5 in the parent, so that moving them to 3 and 4 in the child never overwrites one with the other
    high = [fcntl.fcntl(s.fileno(), fcntl.F_DUPFD_CLOEXEC, _FIRST_FD + len(sockets)) for s in sockets]

    def to_fixed_fds() -> None:
        for i, fd in enumerate(high):
            os.dup2(fd, _FIRST_FD + i)  # dup2 clears close-on-exec: vpnkit inherits exactly these

    try:
        with open(log or os.devnull, "wb") as out:
            return subprocess.Popen(
                vpnkit_argv(binary), cwd=state_dir, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                env=proc.minimal_env(), start_new_session=True,
                pass_fds=tuple(range(_FIRST_FD, _FIRST_FD + len(sockets))), preexec_fn=to_fixed_fds,
            )  # fmt: skip
    finally:
        for fd in high:
            os.close(fd)
        for s in sockets:
            s.close()  # the child holds them now; a dead vpnkit leaves nothing listening


def _unix_http_connection(path: str, timeout: float) -> http.client.HTTPConnection:
    """An HTTP connection over the unix socket `path` (http.client is imported here: every `vm.run` imports this
    module through the backends, and http.client with ssl and email costs ~20 ms of its start-up before QEMU)."""
    import http.client

    class UnixHTTPConnection(http.client.HTTPConnection):
        def connect(self) -> None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.timeout)
            try:
                sock.connect(path)
            except OSError:
                sock.close()
                raise
            self.sock = sock

    return UnixHTTPConnection("unix", timeout=timeout)  # vpnkit's client uses http://unix/... too


def expose_request(proto: str, host_ip: str, host_port: int, guest_ip: str, guest_port: int) -> bytes:
    """The JSON body vpnkit's Go client (`vpnkit.Port`) posts to publish a port: host side "out", guest side "in"."""
    port = {"proto": proto, "out_ip": host_ip, "out_port": host_port, "in_ip": guest_ip, "in_port": guest_port}
    return (json.dumps(port, separators=(",", ":")) + "\n").encode()


def expose_port(
    port_socket: Path,
    *,
    proto: str,
    host_ip: str,
    host_port: int,
    guest_ip: str,
    guest_port: int,
    timeout: float = 10.0,
) -> None:
    """Ask vpnkit (over its port socket) to forward host_ip:host_port to the guest. VmError with vpnkit's reason."""
    body = expose_request(proto, host_ip, host_port, guest_ip, guest_port)
    what = f"{host_ip}:{host_port}->{guest_port}/{proto}"
    conn = _unix_http_connection(os.fspath(port_socket), timeout)
    try:
        conn.request("POST", "/forwards/expose/port", body, {"Content-Type": "application/json"})
        response = conn.getresponse()
        answer = response.read()
    except OSError as e:
        raise VmError(f"cannot publish port {what}: vpnkit's port socket {port_socket}: {e}") from None
    finally:
        conn.close()
    if response.status == 400:
        message = answer.decode(errors="replace").strip()
        with contextlib.suppress(ValueError, AttributeError):
            message = str(json.loads(message)["message"])
        raise VmError(f"cannot publish port {what}: vpnkit says: {message}")
    if response.status != 200:
        raise VmError(f"cannot publish port {what}: vpnkit answered HTTP {response.status}")

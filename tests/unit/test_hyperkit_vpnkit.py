"""vpnkit for hyperkit VMs, and `--hypervisor hyperkit` on Linux.

vpnkit and hyperkit never run here (Linux): the argv is golden-tested against LinuxKit's, the listening sockets
are handed to a real child process (a Python stand-in for vpnkit that reports what it inherited), and the port
publishing request goes to a real HTTP server on a unix socket that answers as vpnkit's forwards API does.

LinuxKit source: linuxkit/linuxkit@3bf33c3a11fc20b459195294a7d8980cbca4195b src/cmd/linuxkit/run_hyperkit.go
(`launchVPNKit`, `vpnkitPublishPorts`), and its vendored github.com/moby/vpnkit/go/pkg/vpnkit client.go/port.go.
"""

from __future__ import annotations

import json
import os
import platform
import socketserver
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from lkctl.errors import ConfigError, VmError
from lkctl.runtime.host import Accel, probe_host
from lkctl.runtime.hyperkit import Hypervisor, require_hypervisor
from lkctl.runtime.state import VmRecord
from lkctl.runtime.vm import console_tail, follow_console
from lkctl.runtime.vpnkit import (
    VPNKIT_ETH_SOCKET,
    VPNKIT_PORT_SOCKET,
    expose_port,
    expose_request,
    own_vpnkit_link,
    start_vpnkit,
    vpnkit_argv,
)


def test_vpnkit_argv_matches_linuxkits_launch_vpnkit() -> None:
    # launchVPNKit(vpnkitPath, <state>/vpnkit_eth.sock, <state>/connect, <state>/vpnkit_port.sock) with --state .:
    # exec.Command(vpnkitPath, "--ethernet", "fd:3", "--vsock-path", vsockSock, "--port", "fd:4")
    # with ExtraFiles=[eth, port]
    assert vpnkit_argv("/usr/local/bin/vpnkit") == [
        "/usr/local/bin/vpnkit", "--ethernet", "fd:3", "--vsock-path", "connect", "--port", "fd:4",
    ]  # fmt: skip


def test_own_vpnkit_link_names_linuxkits_sockets_and_a_fixed_guest_address() -> None:
    link = own_vpnkit_link("0a1b2c3d")
    assert (link.ethernet, link.port_control, link.guest_ip, link.own) == (
        "vpnkit_eth.sock", "vpnkit_port.sock", "192.168.65.3", True,
    )  # fmt: skip


# Stands in for vpnkit: reports what fds 3 and 4 are (listening unix sockets, and where), then exits.
_REPORT_FDS = """
import json, socket, sys
out = {}
for fd in (3, 4):
    s = socket.socket(fileno=fd)
    out[fd] = [s.family == socket.AF_UNIX, s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN), s.getsockname()]
    s.detach()
json.dump({"argv": sys.argv[1:], "fds": out}, open("report.json", "w"))
"""


def test_start_vpnkit_hands_over_the_listening_sockets_as_fds_3_and_4(tmp_path: Path) -> None:
    stand_in = tmp_path / "vpnkit"
    stand_in.write_text(f"#!{sys.executable}\n{_REPORT_FDS}")
    stand_in.chmod(0o755)
    child = start_vpnkit(tmp_path, os.fspath(stand_in))
    assert child.wait(timeout=30) == 0, (tmp_path / "report.json").exists()
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["argv"] == ["--ethernet", "fd:3", "--vsock-path", "connect", "--port", "fd:4"]
    assert report["fds"] == {
        "3": [True, 1, str(tmp_path / VPNKIT_ETH_SOCKET)],
        "4": [True, 1, str(tmp_path / VPNKIT_PORT_SOCKET)],
    }


def test_start_vpnkit_refuses_a_socket_path_too_long_for_macos(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 100)
    deep.mkdir()
    with pytest.raises(ConfigError, match="too long for a unix socket"):
        start_vpnkit(deep, "/bin/true")
    assert list(deep.iterdir()) == []


class _Forwards(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    requests: list[tuple[str, str, dict[str, object]]]
    answer: tuple[int, bytes]


class _Handler(BaseHTTPRequestHandler):
    server: _Forwards

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.requests.append((self.path, self.headers["Content-Type"], json.loads(body)))
        status, payload = self.server.answer
        self.send_response(status)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if payload:  # an empty write to a client that read its 0-byte answer and left fails with EPIPE
            self.wfile.write(payload)

    def log_message(self, format: str, *args: object) -> None:
        pass

    def address_string(self) -> str:
        return "unix"


@pytest.fixture
def forwards(tmp_path: Path) -> Iterator[_Forwards]:
    server = _Forwards(os.fspath(tmp_path / VPNKIT_PORT_SOCKET), _Handler)
    server.requests, server.answer = [], (200, b"")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


def test_expose_port_posts_what_vpnkits_go_client_posts(tmp_path: Path, forwards: _Forwards) -> None:
    # vpnkitPublishPorts: vpnkit.Port{Proto, OutIP: 127.0.0.1, OutPort: host, InIP: vif.IP, InPort: guest}
    # posted as JSON to http://unix/forwards/expose/port
    expose_port(tmp_path / VPNKIT_PORT_SOCKET, proto="tcp", host_ip="127.0.0.1", host_port=40022,
                guest_ip="192.168.65.3", guest_port=22)  # fmt: skip
    assert forwards.requests == [
        (
            "/forwards/expose/port",
            "application/json",
            {"proto": "tcp", "out_ip": "127.0.0.1", "out_port": 40022, "in_ip": "192.168.65.3", "in_port": 22},
        )
    ]
    assert expose_request("udp", "127.0.0.1", 5353, "192.168.65.3", 53).endswith(b"}\n")  # json.Encoder's newline


def test_expose_port_reports_vpnkits_refusal_in_one_line(tmp_path: Path, forwards: _Forwards) -> None:
    forwards.answer = (400, b'{"message":"Bind for 127.0.0.1:40022 failed: port is already allocated"}\n')
    with pytest.raises(VmError, match=r"127.0.0.1:40022->22/tcp: vpnkit says: Bind for .* already allocated$"):
        expose_port(tmp_path / VPNKIT_PORT_SOCKET, proto="tcp", host_ip="127.0.0.1", host_port=40022,
                    guest_ip="192.168.65.3", guest_port=22)  # fmt: skip


def test_expose_port_without_a_vpnkit_says_which_socket(tmp_path: Path) -> None:
    with pytest.raises(VmError, match=r"vpnkit.s port socket .*vpnkit_port\.sock"):
        expose_port(tmp_path / VPNKIT_PORT_SOCKET, proto="tcp", host_ip="127.0.0.1", host_port=1,
                    guest_ip="192.168.65.3", guest_port=22)  # fmt: skip


@pytest.mark.skipif(platform.system() != "Linux", reason="the refusal is for non-Mac hosts")
def test_hyperkit_is_refused_on_linux_in_one_line() -> None:
    with pytest.raises(ConfigError) as info:
        require_hypervisor("hyperkit")
    assert str(info.value).count("\n") == 0
    assert "hyperkit requires macOS on Intel" in str(info.value)


@pytest.mark.skipif(platform.system() != "Linux", reason="Linux hosts run QEMU")
def test_auto_and_qemu_choose_qemu_on_linux(qemu_available: None) -> None:
    assert require_hypervisor("auto") is Hypervisor.QEMU
    assert require_hypervisor("qemu") is Hypervisor.QEMU


@pytest.mark.skipif(platform.system() != "Linux", reason="the refusal is for non-Mac hosts")
def test_vm_run_hyperkit_on_linux_fails_in_one_line_before_anything_is_made(tmp_path: Path) -> None:
    env = {**os.environ, "LKCTL_HOME": str(tmp_path / "home")}
    lkctl = Path(sys.executable).parent / "lkctl"
    result = subprocess.run(
        [os.fspath(lkctl), "vm.run", "--hypervisor", "hyperkit", "--image", "minimal"],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "hyperkit requires macOS on Intel (this host is linux/" in lines[0]
    made = [p for p in (tmp_path / "home").rglob("*") if p.is_file()] if (tmp_path / "home").exists() else []
    assert made == []  # no VM state, no build, no cache


def _hyperkit_record() -> VmRecord:
    record = VmRecord(id="0a1b2c3d", name="hk", image="minimal", image_format="kernel+initrd",
                      created="2026-01-01T00:00:00.000+00:00", memory=1024, cpus=1, ssh_port=40022)  # fmt: skip
    record.dir.mkdir(parents=True)
    return record


def test_console_readers_read_hyperkits_ring_as_hyperkit_writes_it() -> None:
    record = _hyperkit_record()
    ring = record.dir / "console-ring"
    written = bytearray(65536)  # hyperkit: O_TRUNC, ftruncate to 64 KiB, then bytes at the next offset

    def write(text: bytes) -> None:
        start = len(bytes(written).rstrip(b"\0"))
        written[start : start + len(text)] = text
        ring.write_bytes(bytes(written))

    chunks = [b"Linux version 6.6\n", b"lkctl-init: started\n", b"lkctl-init: ready\n"]
    write(chunks[0])
    calls = iter(range(10))

    def alive() -> bool:  # each poll, hyperkit has written the next line; then it exits
        i = next(calls)
        if i + 1 < len(chunks):
            write(chunks[i + 1])
        return i + 1 < len(chunks)

    assert b"".join(follow_console(record, alive=alive, poll=0)) == b"".join(chunks)
    assert console_tail(record, lines=2) == "lkctl-init: started\nlkctl-init: ready"


def test_probe_host_for_hyperkit_needs_no_qemu() -> None:
    host = probe_host(qemu="/nonexistent/qemu-system-x86_64", hypervisor="hyperkit")
    assert (host.accel, host.qemu) == (Accel.HVF, "")
    with pytest.raises(ConfigError, match="does not exist"):
        probe_host(qemu="/nonexistent/qemu-system-x86_64")

"""`vm.run --network`: under `user` the guest reaches a server on the host's 127.0.0.1 through 10.0.2.2; under
`restricted` it does not, while SSH exec and --port forwards still work; `none` has no NIC and says so."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.boot.conftest import BIN, Cli, qemu_pids_for
from tests.conftest import require_qemu
from tests.integration._loopback import QuietHandler, serve_http

pytestmark = pytest.mark.boot

TOKEN = "lkctl-loopback-token"


class _Token(QuietHandler):
    def do_GET(self) -> None:
        body = TOKEN.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def loopback_server() -> Iterator[int]:
    """A service bound to the host's 127.0.0.1 only, as a developer's database or dev server would be."""
    with serve_http(_Token) as server:
        yield server.server_address[1]


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, shared_cache: Path) -> Iterator[Cli]:
    require_qemu()
    root = tmp_path_factory.mktemp("net")
    lkhome = root / "lkhome"
    env = dict(os.environ, LKCTL_HOME=str(lkhome), LKCTL_CACHE_DIR=str(shared_cache))
    env["PATH"] = f"{BIN}:{env.get('PATH', '/usr/bin:/bin')}"
    env.pop("INVOKE_RUNTIME_CONFIG", None)
    (root / "work").mkdir()
    cli = Cli(env, root / "work")
    yield cli
    left = qemu_pids_for(lkhome)
    for pid in left:
        os.kill(pid, 9)
    assert not left, f"test left QEMU processes running: {left}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def vms(home: Cli, loopback_server: int) -> Iterator[tuple[Cli, int]]:
    """Two VMs booted side by side: `open` (--network user) and `shut` (--network restricted, with a --port)."""
    forwarded = _free_port()
    modes = {"open": ["--network", "user"], "shut": ["--network", "restricted", "--port", f"{forwarded}:8080"]}
    runs = {}
    for name, extra in modes.items():
        argv = [str(BIN / "lkctl"), "vm.run", "--image=minimal", "-d", "--name", name, "--memory", "256", *extra]
        runs[name] = subprocess.Popen(argv, env=home.env, cwd=home.cwd, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        for name, proc in runs.items():
            out, err = proc.communicate(timeout=900)
            assert proc.returncode == 0, f"vm.run {name} failed:\n{out}\n{err}"
        yield home, forwarded
    finally:
        for name, proc in runs.items():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            home("vm.rm", "--force", name, check=False)


def _fetch_from_guest(cli: Cli, vm: str, port: int) -> subprocess.CompletedProcess[str]:
    # busybox nc, not wget: the static busybox's wget gives nothing (or crashes) without the C library's resolver
    request = f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5 10.0.2.2 {port}"
    return cli("vm.exec", vm, "--", "sh", "-c", request, check=False)


def test_user_network_lets_the_guest_reach_host_loopback(vms: tuple[Cli, int], loopback_server: int) -> None:
    proc = _fetch_from_guest(vms[0], "open", loopback_server)
    assert proc.returncode == 0 and TOKEN in proc.stdout, proc.stderr


def test_restricted_network_keeps_the_guest_off_host_loopback_but_ssh_and_ports_work(
    vms: tuple[Cli, int], loopback_server: int
) -> None:
    cli, forwarded = vms
    proc = _fetch_from_guest(cli, "shut", loopback_server)
    assert proc.returncode != 0 and TOKEN not in proc.stdout
    assert cli("vm.exec", "shut", "--", "uname", "-s").stdout == "Linux\n"  # lkctl's SSH forward still works
    cli("vm.exec", "shut", "--", "sh", "-c",
        "mkdir -p /tmp/www && echo served > /tmp/www/index.html && httpd -p 8080 -h /tmp/www")  # fmt: skip
    with urllib.request.urlopen(f"http://127.0.0.1:{forwarded}/", timeout=30) as r:  # a --port forward still works
        assert r.read() == b"served\n"
    argv = json.loads(cli("vm.inspect", "shut").stdout)["argv"]
    assert any(a.startswith("user,id=net0,restrict=on,") for a in argv)


def test_no_network_refuses_a_detached_wait_and_forwards_in_one_line(home: Cli) -> None:
    for extra in (["-d"], ["--port", "8080:80"], ["-d", "--no-wait", "--ssh-port", "40222"]):
        proc = home("vm.run", "--image=minimal", "--network", "none", "--name", "nonet", *extra, check=False)
        assert proc.returncode == 2, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and "--network none" in proc.stderr
    assert "nonet" not in [r["name"] for r in json.loads(home("vm.ps", "--all", "--json").stdout)]
    bad = home("vm.run", "--image=minimal", "--network", "bridge", check=False)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "lkctl: --network bridge: expected user, restricted or none (vmnet on macOS); see README Safety"
    ]


def test_no_network_boots_without_a_nic_and_exec_says_why(home: Cli) -> None:
    home("vm.run", "--image=minimal", "--network", "none", "-d", "--no-wait", "--name", "nonet", "--memory", "256")
    try:
        info = json.loads(home("vm.inspect", "nonet").stdout)
        assert info["ssh_port"] == 0 and "-netdev" not in info["argv"]
        assert not any("virtio-net" in a for a in info["argv"])
        proc = home("vm.exec", "nonet", "--", "true", check=False)
        assert proc.returncode != 0
        assert proc.stderr.strip().splitlines() == [
            "lkctl: VM nonet has no network (--network none), so lkctl cannot reach it over SSH"
        ]
    finally:
        home("vm.kill", "nonet", check=False)
        home("vm.rm", "--force", "nonet")

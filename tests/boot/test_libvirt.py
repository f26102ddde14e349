"""VMs through libvirt, with the real thing: this machine's libvirtd (started the way the README tells a user when
it is not running), and the same libvirtd as a "remote" host reached as qemu+ssh:// through an OpenSSH server on
loopback with throwaway, pinned keys. Every test uses its own storage pool, removed afterwards."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.boot.conftest import Cli
from tests.conftest import IN_CI, require_qemu

pytestmark = [pytest.mark.boot, pytest.mark.timeout(1500)]


def _missing(what: str) -> None:
    if IN_CI:
        pytest.fail(f"{what} and CI=true: libvirt tests must run in CI")
    pytest.skip(what)


def _virsh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["virsh", "-c", "qemu:///system", *args], capture_output=True, text=True, timeout=60,
                          check=check)  # fmt: skip


def _answers() -> bool:
    try:
        return _virsh("version", check=False).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def _pid_alive(pidfile: Path) -> int:
    try:
        pid = int(pidfile.read_text(encoding="utf-8").strip())
    except (OSError, ValueError):
        return 0
    try:  # a zombie is dead (PID 1 here does not reap, so exited daemons linger as zombies)
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8")
    except OSError:
        return 0
    return 0 if stat[stat.rindex(")") + 2] in "ZX" else pid


@pytest.fixture(scope="module")
def libvirtd() -> Iterator[None]:
    """libvirtd answering on qemu:///system; started as README's "Scaling out" says, and stopped, if it was not."""
    require_qemu()
    if os.geteuid() != 0:
        _missing("qemu:///system needs root")
    if shutil.which("libvirtd") is None or shutil.which("virsh") is None:
        _missing("libvirt-daemon-system and libvirt-clients are not installed")
    try:
        import libvirt  # noqa: F401
    except ImportError:
        _missing("libvirt-python is not installed (pip install 'lkctl[libvirt]')")
    started: list[int] = []
    if not _answers():
        Path("/run/dbus").mkdir(parents=True, exist_ok=True)
        if not _pid_alive(Path("/run/dbus/pid")):
            Path("/run/dbus/pid").unlink(missing_ok=True)
            out = subprocess.run(["dbus-daemon", "--system", "--fork", "--print-pid"], capture_output=True,
                                 text=True, check=True).stdout  # fmt: skip
            started.append(int(out.split()[0]))
        for daemon in ("virtlogd", "libvirtd"):
            pidfile = Path(f"/run/{daemon}.pid")
            if not _pid_alive(pidfile):
                subprocess.run([daemon, "-d"], check=True, timeout=30)
                deadline = time.monotonic() + 30
                while not _pid_alive(pidfile) and time.monotonic() < deadline:
                    time.sleep(0.1)
                started.append(_pid_alive(pidfile))
        deadline = time.monotonic() + 60
        while not _answers():
            assert time.monotonic() < deadline, "libvirtd did not answer within 60 s"
            time.sleep(0.5)
    yield
    for pid in reversed(started):
        if pid:
            os.kill(pid, signal.SIGTERM)


@dataclass(frozen=True)
class SshServer:
    port: int
    client_key: Path
    known_hosts: Path

    @property
    def uri(self) -> str:
        return f"qemu+ssh://root@127.0.0.1:{self.port}/system?keyfile={self.client_key}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    """An OpenSSH server on loopback standing in for a remote hypervisor host (this machine's libvirtd)."""
    binary = shutil.which("sshd") or "/usr/sbin/sshd"
    if not Path(binary).exists():
        _missing("openssh-server is not installed")
    d = tmp_path_factory.mktemp("sshd")
    for name in ("host", "client"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)], check=True)
    shutil.copy(d / "client.pub", d / "authorized_keys")
    port = _free_port()
    key_type, key = (d / "host.pub").read_text().split()[:2]
    (d / "known_hosts").write_text(f"[127.0.0.1]:{port} {key_type} {key}\n")
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host\nPidFile {d}/sshd.pid\n"
        f"AuthorizedKeysFile {d}/authorized_keys\nPermitRootLogin prohibit-password\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nAllowTcpForwarding local\nX11Forwarding no\n"
    )
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    subprocess.run([binary, "-f", str(d / "sshd_config"), "-E", str(d / "sshd.log")], check=True, timeout=30)
    deadline = time.monotonic() + 20
    while not _pid_alive(d / "sshd.pid"):
        assert time.monotonic() < deadline, (d / "sshd.log").read_text()
        time.sleep(0.1)
    yield SshServer(port, d / "client", d / "known_hosts")
    os.kill(_pid_alive(d / "sshd.pid"), signal.SIGTERM)


@pytest.fixture
def pool(libvirtd: None) -> Iterator[str]:
    """A storage pool of the test's own; whatever is left in it (and the pool) is removed afterwards."""
    name = f"lkctl-test-{secrets.token_hex(3)}"
    yield name
    for dom in _virsh("list", "--all", "--name").stdout.split():
        if dom.startswith("lkctl-") and name in _virsh("dumpxml", dom, check=False).stdout:
            _virsh("destroy", dom, check=False)
            _virsh("undefine", dom, "--nvram", check=False)
    if _virsh("pool-info", name, check=False).returncode == 0:
        _virsh("pool-refresh", name, check=False)
        for line in _virsh("vol-list", name, check=False).stdout.splitlines()[2:]:
            if line.split():
                _virsh("vol-delete", line.split()[0], "--pool", name, check=False)
        _virsh("pool-destroy", name, check=False)
        _virsh("pool-delete", name, check=False)
        _virsh("pool-undefine", name, check=False)


def _configure(cli: Cli, pool: str, hosts: list[dict[str, str]]) -> None:
    cli.env.update(LKCTL_LIBVIRT_POOL=pool, LKCTL_LIBVIRT_POOL_PATH=f"/var/lib/libvirt/{pool}",
                   LKCTL_HOSTS=json.dumps(hosts))  # fmt: skip


def _volumes(pool: str) -> list[str]:
    _virsh("pool-refresh", pool)
    return [line.split()[0] for line in _virsh("vol-list", pool).stdout.splitlines()[2:] if line.split()]


def _down(ssh: SshServer) -> dict[str, str]:
    uri = f"qemu+ssh://root@127.0.0.1:{_free_port()}/system?keyfile={ssh.client_key}"
    return {"name": "down", "uri": uri, "known_hosts": str(ssh.known_hosts)}


def test_vms_run_exec_cp_stop_rm_on_local_and_remote_libvirt_with_the_image_uploaded_once(
    cli: Cli, pool: str, sshd: SshServer, tmp_path: Path
) -> None:
    remote = {"name": "remote", "uri": sshd.uri, "known_hosts": str(sshd.known_hosts), "accel": "tcg"}
    _configure(cli, pool, [{"name": "here", "uri": "qemu:///system"}, remote])  # --connect finds "here" by URI
    local = cli("vm.run", "--image=minimal", "-d", "--name", "lv1", "--connect", "qemu:///system",
                "--memory", "256", timeout=900)  # fmt: skip
    assert local.stderr.count("lkctl: uploaded") == 2, local.stderr  # kernel and initrd, streamed into the pool
    far = cli("vm.run", "--image=minimal", "-d", "--name", "lv2", "--host", "remote", "--memory", "256", timeout=900)
    assert "uploaded" not in far.stderr, far.stderr  # the same host already holds them: never sent again
    images = [v for v in _volumes(pool) if v.startswith("sha256-") and not v.endswith(".ok")]
    assert 2 <= len(images) <= 3, images  # kernel, initrd (and the KVM probe's boot sector for --connect)
    ids = {"lv1": local.stdout.strip(), "lv2": far.stdout.strip()}
    assert any(v.startswith(f"lkctl-{ids['lv2']}-") for v in _volumes(pool))  # its own volumes (the host key)

    assert cli("vm.exec", "lv1", "--", "uname", "-n").stdout.strip() == f"linuxkit-5254{ids['lv1']}"
    # lv2's SSH forward is on the "remote" host's loopback: reached through its sshd, guest key still pinned
    assert cli("vm.exec", "lv2", "--", "uname", "-n").stdout.strip() == f"linuxkit-5254{ids['lv2']}"
    src = tmp_path / "hello.txt"
    src.write_text("through the jump host\n")
    cli("vm.cp", str(src), "lv2:/tmp/hello.txt")
    cli("vm.cp", "lv2:/tmp/hello.txt", str(tmp_path / "back.txt"))
    assert (tmp_path / "back.txt").read_text() == "through the jump host\n"

    _configure(cli, pool, [{"name": "here", "uri": "qemu:///system"}, remote, _down(sshd)])
    ps = cli("vm.ps", "--json")
    rows = {r["name"]: r for r in json.loads(ps.stdout) if r["name"] in ("lv1", "lv2")}
    assert {n: (r["host"], r["status"]) for n, r in rows.items()} == {"lv1": ("here", "running"),
                                                                       "lv2": ("remote", "running")}  # fmt: skip
    assert [line for line in ps.stderr.splitlines() if "down" in line] == [ps.stderr.strip()]
    assert "host down is unreachable" in ps.stderr
    assert "lv2" in cli("vm.ps", "--host", "remote").stdout
    assert "lv1" not in cli("vm.ps", "--host", "remote").stdout

    info = json.loads(cli("vm.inspect", "lv2").stdout)
    assert (info["uri"], info["domain"], info["host"]) == (sshd.uri, f"lkctl-{ids['lv2']}", "remote")
    exported = ET.fromstring(cli("vm.export", "lv2", "--format", "libvirt").stdout)
    assert exported.findtext("name") == f"lkctl-{ids['lv2']}" and exported.findtext("uuid") == info["uuid"]
    assert b"lkctl-init: ready" in cli("vm.logs", "lv1").stdout.encode()

    assert "powered off" in cli("vm.stop", "lv1", timeout=120).stderr
    listed = json.loads(cli("vm.ps", "--all", "--json", "--host", "here").stdout)
    assert [r["status"] for r in listed if r["name"] == "lv1"] == ["stopped"]
    cli("vm.rm", "lv1")
    assert "sent SIGKILL to lv2" in cli("vm.kill", "lv2").stderr  # libvirt destroys the domain at once
    assert json.loads(cli("vm.inspect", "lv2").stdout)["status"] == "stopped"
    cli("vm.rm", "lv2")
    domains = _virsh("list", "--all", "--name").stdout.split()
    assert not {f"lkctl-{i}" for i in ids.values()} & set(domains)
    assert not [v for v in _volumes(pool) if v.startswith(tuple(f"lkctl-{i}" for i in ids.values()))]
    assert images == [v for v in _volumes(pool) if v.startswith("sha256-") and not v.endswith(".ok")]


def test_auto_placement_refuses_a_vm_no_host_can_take_in_one_line(cli: Cli, pool: str, sshd: SshServer) -> None:
    _configure(cli, pool, [{"name": "here", "uri": "qemu:///system"}, _down(sshd)])
    before = _virsh("list", "--all", "--name").stdout.split()
    r = cli("vm.run", "--image=minimal", "-d", "--host", "auto", "--memory", "100000000", check=False, timeout=300)
    assert r.returncode == 2, r.stderr
    [line] = r.stderr.strip().splitlines()[-1:]
    assert "no host can take a VM of 100000000 MiB" in line and "unreachable: down" in line
    assert "Traceback" not in r.stderr
    assert _virsh("list", "--all", "--name").stdout.split() == before
    assert not list((Path(cli.env["LKCTL_HOME"]) / "state" / "vms").glob("[!.]*"))


def test_remote_host_with_an_unknown_host_key_is_refused_never_trusted(
    cli: Cli, pool: str, sshd: SshServer, tmp_path: Path
) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    _configure(cli, pool, [{"name": "stranger", "uri": sshd.uri, "known_hosts": str(empty)}])
    r = cli("vm.run", "--image=minimal", "-d", "--host", "stranger", check=False, timeout=300)
    assert r.returncode != 0
    assert "cannot reach libvirt" in r.stderr and "host key" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert not list((Path(cli.env["LKCTL_HOME"]) / "state" / "vms").glob("[!.]*"))  # no record was left behind
    assert empty.read_text() == ""  # nothing was added to the pin file


def test_a_start_that_fails_leaves_no_domain_volume_or_record(cli: Cli, pool: str) -> None:
    _configure(cli, pool, [])
    before = _virsh("list", "--all", "--name").stdout.split()
    r = cli("vm.run", "--image=minimal", "-d", "--name", "late", "--connect", "qemu:///system", "--timeout", "1",
            check=False, timeout=600)  # fmt: skip
    assert r.returncode == 1, r.stderr
    assert "did not become ready" in r.stderr and "Traceback" not in r.stderr
    assert _virsh("list", "--all", "--name").stdout.split() == before  # destroyed and undefined
    assert [v for v in _volumes(pool) if v.startswith("lkctl-")] == []  # its key, console: gone; images stay
    assert [v for v in _volumes(pool) if v.startswith("sha256-")]
    assert not list((Path(cli.env["LKCTL_HOME"]) / "state" / "vms").glob("[!.]*"))

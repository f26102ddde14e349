"""lkctl's guest init and sshd image, booted for real under QEMU (TCG).

The initramfs is assembled by hand from the base images, the way lkctl's builder lays a LinuxKit image out:
the init image at /, the kernel image's kernel.tar, and a containers/services/sshd bundle (config.json +
runtime.json + lower/tmp/rootfs) made from the sshd image and its org.mobyproject.config label. The host key
and authorized_keys reach the guest through QEMU fw_cfg, as lkctl passes them.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lkctl.baseimages import _ldd, build_all
from lkctl.oci.layout import Store
from tests.conftest import IN_CI, require_qemu

pytestmark = pytest.mark.boot

READY = b"lkctl-init: ready"
# what lkctl's builder writes for `capabilities: [all]` (the sshd label)
_CAP_NAMES = (
    "CHOWN DAC_OVERRIDE DAC_READ_SEARCH FOWNER FSETID KILL SETGID SETUID SETPCAP LINUX_IMMUTABLE NET_BIND_SERVICE "
    "NET_BROADCAST NET_ADMIN NET_RAW IPC_LOCK IPC_OWNER SYS_MODULE SYS_RAWIO SYS_CHROOT SYS_PTRACE SYS_PACCT "
    "SYS_ADMIN SYS_BOOT SYS_NICE SYS_RESOURCE SYS_TIME SYS_TTY_CONFIG MKNOD LEASE AUDIT_WRITE AUDIT_CONTROL "
    "SETFCAP MAC_OVERRIDE MAC_ADMIN SYSLOG WAKE_ALARM BLOCK_SUSPEND AUDIT_READ PERFMON BPF CHECKPOINT_RESTORE"
)
ALL_CAPS = [f"CAP_{c}" for c in _CAP_NAMES.split()]
RUNC = Path("/usr/sbin/runc")


def _require(program: str, package: str) -> None:
    if shutil.which(program) is None:
        if IN_CI:
            pytest.fail(f"{program} is missing and CI=true (apt-get install {package})")
        pytest.skip(f"{program} not installed (apt-get install {package})")


def extract_image(store: Store, ref: str, dest: Path) -> None:
    """Unpack every layer of `ref` into `dest` (the base images have no whiteouts)."""
    dest.mkdir(parents=True, exist_ok=True)
    for layer in store.resolve(ref).layers:
        with tarfile.open(fileobj=io.BytesIO(gzip.decompress(store.read_blob(layer.digest)))) as tf:
            tf.extractall(dest, filter="fully_trusted")


_DEFAULT_MOUNTS = {
    "/proc": {"type": "proc", "source": "proc", "options": ["nosuid", "nodev", "noexec", "relatime"]},
    "/dev": {"type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
    "/dev/pts": {
        "type": "devpts",
        "source": "devpts",
        "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"],
    },
    "/sys": {"type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev"]},
    "/sys/fs/cgroup": {"type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "ro"]},
}


def bundle(
    store: Store,
    root: Path,
    path: str,
    ref: str,
    *,
    args: list[str] | None = None,
    binds: list[str] | None = None,
    readonly: bool = False,
    pid_namespace: bool | None = None,
) -> None:
    """A bundle dir as lkctl's builder writes it: config.json + runtime.json + rootfs (readonly) or lower/tmp."""
    base = root / path.lstrip("/")
    image = store.resolve(ref)
    label = json.loads(image.labels.get("org.mobyproject.config", "{}"))
    cfg = image.config["config"]
    mounts = dict(_DEFAULT_MOUNTS)
    for bind in label.get("binds", []) if binds is None else binds:
        src, dst, *opts = bind.split(":")
        options = [*opts[0].split(","), "rbind"] if opts else ["rw", "rbind", "rshared"]
        mounts[dst] = {"type": "bind", "source": src, "options": options}
    namespaces = [{"type": "mount"}]
    if pid_namespace if pid_namespace is not None else label.get("pid") != "host":
        namespaces.append({"type": "pid"})
    config = {
        "ociVersion": "1.1.0",
        "process": {
            "user": {"uid": 0, "gid": 0},
            "args": args or cfg["Cmd"],
            "env": cfg.get("Env") or ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"],
            "cwd": "/",
            "capabilities": {k: ALL_CAPS for k in ("bounding", "effective", "permitted")},
        },
        "root": {"path": "rootfs", "readonly": readonly},
        "mounts": [{"destination": d, **m} for d, m in sorted(mounts.items())],
        "linux": {
            "namespaces": namespaces,
            "resources": {"devices": [{"allow": True, "type": "a", "access": "rwm"}]},
        },
    }
    if readonly:
        extract_image(store, ref, base / "rootfs")
        rootfs_mounts = [
            {"destination": f"{path}/rootfs", "type": "bind", "source": f"{path}/rootfs", "options": ["rw", "rbind"]}
        ]
    else:
        extract_image(store, ref, base / "lower")
        (base / "tmp").mkdir()
        (base / "rootfs").mkdir()
        rootfs_mounts = [
            {"destination": f"{path}/tmp", "type": "tmpfs", "source": "tmpfs"},
            {"destination": f"{path}/tmp", "options": ["remount", "private"]},
            {
                "destination": f"{path}/rootfs",
                "type": "overlay",
                "source": "overlay",
                "options": [f"lowerdir={path}/lower", f"upperdir={path}/tmp/upper", f"workdir={path}/tmp/work"],
            },
        ]
    runtime = {"cgroups": [], "mounts": rootfs_mounts, "mkdir": ["/run/probe"], "interfaces": [], "bindNS": {}}
    (base / "config.json").write_text(json.dumps(config, indent=4))
    (base / "runtime.json").write_text(json.dumps(runtime, indent=4))


def assemble_initrd(store: Store, work: Path, *, runc: bool = False) -> tuple[Path, Path]:
    """(kernel, initrd.img) for a VM with lkctl's init, an sshd service, onboot containers and a pid-ns service.

    With `runc`, the host's runc (and the libraries it needs) goes in as /usr/bin/runc, so init runs the
    containers with it instead of its own unshare + chroot.
    """
    root = work / "root"
    extract_image(store, "lkctl.local/init", root)
    if runc:
        for src, dest in [(RUNC, Path("usr/bin/runc")), *((lib, lib.relative_to("/")) for lib in _ldd(RUNC))]:
            (root / dest).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, root / dest)
            (root / dest).chmod(0o755)
    kdir = work / "kernel-image"
    extract_image(store, "lkctl.local/kernel", kdir)
    with tarfile.open(kdir / "kernel.tar") as tf:
        tf.extractall(root, filter="fully_trusted")
    bundle(store, root, "/containers/services/sshd", "lkctl.local/sshd")
    # a writable volume, as the builder lays it out: init overlays lower + tmp on merged before onboot
    volume = root / "containers" / "volumes" / "data"
    (volume / "lower").mkdir(parents=True)
    (volume / "lower" / "hello").write_text("from the volume\n")
    (volume / "tmp").mkdir()
    (volume / "merged").mkdir()
    # two onboot containers, in order, on a read-only rootfs: the second sees what the first wrote
    for path, script in (
        (
            "/containers/onboot/000-first",
            "echo first > /probe/order; cat /data/hello > /probe/volume; echo w > /data/new",
        ),
        (
            "/containers/onboot/001-second",
            "echo second >> /probe/order; touch /cannot-write || echo ro >> /probe/order",
        ),
    ):
        bundle(
            store,
            root,
            path,
            "lkctl.local/sshd",
            args=["/bin/sh", "-c", script],
            binds=["/run/probe:/probe", "/containers/volumes/data/merged:/data"],
            readonly=True,
        )
    # a service in its own pid namespace, with tricky arguments that must arrive byte for byte
    tricky = 'it\'s "quoted" \\ $HOME `x` \u00e9'
    bundle(
        store,
        root,
        "/containers/services/pidns",
        "lkctl.local/sshd",
        pid_namespace=True,
        binds=["/run/probe:/probe"],
        args=[
            "/bin/sh",
            "-c",
            'echo "$$" > /probe/pid; printf "%s" "$1" > /probe/arg; trap "exit 0" TERM; sleep 3600 & wait',
            "sh",
            tricky,
        ],
    )
    initrd = work / "initrd.img"
    subprocess.run(
        ["sh", "-c", f"find . | cpio -o -H newc --quiet | gzip -6 -n > {initrd}"], cwd=root, check=True, timeout=120
    )
    assert initrd.stat().st_size > 1 << 20
    return kdir / "kernel", initrd


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def qmp(sock_path: Path, command: str) -> None:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(sock_path))
        f = s.makefile("rwb")
        f.readline()  # greeting
        for cmd in ("qmp_capabilities", command):
            f.write(json.dumps({"execute": cmd}).encode() + b"\n")
            f.flush()
            while True:
                reply = json.loads(f.readline())
                if "return" in reply or "error" in reply:
                    assert "error" not in reply, reply
                    break


@dataclass
class Vm:
    proc: subprocess.Popen[bytes]
    console: Path
    qmp: Path
    port: int
    key: Path
    known_hosts: Path

    def console_text(self) -> bytes:
        return self.console.read_bytes() if self.console.exists() else b""

    def wait_console(self, marker: bytes, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if marker in self.console_text():
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        tail = self.console_text()[-3000:].decode(errors="replace")
        pytest.fail(f"no {marker!r} on the console within {timeout:.0f}s; console tail:\n{tail}")

    def ssh(self, *command: str, timeout: float = 30) -> subprocess.CompletedProcess[bytes]:
        argv = [
            "ssh", "-i", str(self.key), "-p", str(self.port),
            "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "StrictHostKeyChecking=yes",
            "-o", "GlobalKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10",
            "-o", "LogLevel=ERROR", "root@127.0.0.1", *command,
        ]  # fmt: skip
        return subprocess.run(argv, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False)

    def ssh_when_up(self, *command: str, timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
        deadline = time.monotonic() + timeout
        while True:
            result = self.ssh(*command)
            if result.returncode != 255 or time.monotonic() > deadline:
                return result
            time.sleep(1)


@pytest.fixture(scope="session")
def guest_store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    require_qemu()
    _require("cpio", "cpio")
    store = Store(tmp_path_factory.mktemp("oci"))
    build_all(store)
    return store


@pytest.fixture(scope="session", params=["chroot", "runc"])
def guest_files(
    request: pytest.FixtureRequest, guest_store: Store, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path]:
    """(kernel, initrd), once per session for each way init can run containers."""
    runc = request.param == "runc"
    if runc and not RUNC.exists():
        # runc is optional for lkctl (init falls back to unshare + chroot), so its absence skips, even in CI
        pytest.skip("runc not installed (apt-get install runc) to test init's runc path")
    return assemble_initrd(guest_store, tmp_path_factory.mktemp(request.param), runc=runc)


@pytest.fixture
def vm(guest_files: tuple[Path, Path], tmp_path: Path) -> Iterator[Vm]:
    _require("ssh-keygen", "openssh-client")
    kernel, initrd = guest_files
    for name in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / name)], check=True)
    port = free_port()
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{port} {(tmp_path / 'host_key.pub').read_text()}")
    console, qmp_sock = tmp_path / "console.log", tmp_path / "qmp.sock"
    argv = [
        "qemu-system-x86_64", "-accel", "tcg", "-M", "q35", "-m", "512", "-nographic", "-no-reboot",
        "-kernel", str(kernel), "-initrd", str(initrd), "-append", "console=ttyS0 panic=-1",
        "-fw_cfg", f"name=opt/lkctl/ssh/authorized_keys,file={tmp_path / 'client_key.pub'}",
        "-fw_cfg", f"name=opt/lkctl/ssh/ssh_host_ed25519_key,file={tmp_path / 'host_key'}",
        "-netdev", f"user,id=n0,hostfwd=tcp:127.0.0.1:{port}-:22", "-device", "virtio-net-pci,netdev=n0",
        "-qmp", f"unix:{qmp_sock},server=on,wait=off",
    ]  # fmt: skip
    with open(console, "wb") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True)
    try:
        yield Vm(proc, console, qmp_sock, port, tmp_path / "client_key", known_hosts)
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def test_guest_boots_serves_ssh_with_pinned_host_key_and_powers_off_on_acpi(vm: Vm) -> None:
    vm.wait_console(READY, timeout=180)
    assert b"lkctl-init: error" not in vm.console_text(), vm.console_text().decode(errors="replace")[-3000:]

    uname = vm.ssh_when_up("uname", "-a")
    assert uname.returncode == 0, uname.stderr.decode(errors="replace")
    assert uname.stdout.startswith(b"Linux ")
    version = vm.ssh("cat", "/proc/version")
    assert version.returncode == 0 and b"Linux version" in version.stdout
    assert vm.ssh("true").returncode == 0
    # root's login shell (lkctl-vmshell) runs commands in the VM's own root, like docker exec
    shell = vm.ssh("echo $((6 * 7)) && test -d /containers/services/sshd && echo 'a b' | wc -w")
    assert shell.stdout.split() == [b"42", b"2"], shell

    # onboot ran in order before services, read-only; the pid-namespaced service is pid 1 there
    assert vm.ssh("cat /run/probe/order").stdout == b"first\nsecond\nro\n"
    assert vm.ssh("cat /run/probe/volume /containers/volumes/data/merged/new").stdout == (b"from the volume\nw\n")
    assert vm.ssh("cat /run/probe/pid").stdout == b"1\n"
    assert vm.ssh("cat /run/probe/arg").stdout == 'it\'s "quoted" \\ $HOME `x` é'.encode()
    # containers never rename the VM (no UTS namespace asked for)
    assert vm.ssh("hostname").stdout.startswith(b"linuxkit-")
    # a service's output goes to its log file as well as to the console; overlay was loaded beside coldplug
    assert b"Not backgrounding" in vm.ssh("cat /var/log/sshd.log").stdout
    assert b"[sshd] " in vm.console_text()
    assert vm.ssh("grep -q '^overlay ' /proc/modules").returncode == 0

    start = time.monotonic()
    qmp(vm.qmp, "system_powerdown")
    vm.proc.wait(timeout=30)
    assert time.monotonic() - start < 15
    assert b"lkctl-init: shutting down" in vm.console_text()
    assert b"reboot: Power down" in vm.console_text()


@pytest.mark.parametrize("guest_files", ["chroot"], indirect=True)
def test_ssh_refuses_a_guest_whose_host_key_differs_from_the_pinned_one(vm: Vm, tmp_path: Path) -> None:
    vm.wait_console(READY, timeout=180)
    assert vm.ssh_when_up("true").returncode == 0
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "other")], check=True)
    vm.known_hosts.write_text(f"[127.0.0.1]:{vm.port} {(tmp_path / 'other.pub').read_text()}")
    refused = vm.ssh("true")
    assert refused.returncode == 255
    assert b"HOST IDENTIFICATION HAS CHANGED" in refused.stderr or b"verification failed" in refused.stderr

"""hyperkit hands the guest its SSH keys on an ISO (it has no fw_cfg); here QEMU boots lkctl's minimal image with
exactly that ISO, made by lkctl's own `guest_files_iso`, as an AHCI CD (hyperkit's `ahci-cd`) and no fw_cfg, and
SSH with the pinned host key must work. hyperkit itself never runs here; this proves the guest side of its path."""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from lkctl import ssh
from lkctl.runtime.hyperkit import GUEST_FILES_ISO, guest_files_iso
from lkctl.ssh import SshTarget
from tests.boot.conftest import Cli

pytestmark = pytest.mark.boot


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _planned_boot(cli: Cli) -> tuple[str, str, str]:
    """(kernel, initrd, cmdline) of the minimal image, from the argv `vm.run --dry-run` prints (builds once)."""
    done = cli("vm.run", "--image=minimal", "--dry-run", timeout=1200)
    argv = shlex.split(done.stdout.strip().splitlines()[-1])
    return argv[argv.index("-kernel") + 1], argv[argv.index("-initrd") + 1], argv[argv.index("-append") + 1]


def test_guest_gets_its_ssh_keys_from_the_guest_files_cd_without_fw_cfg(cli: Cli, tmp_path: Path) -> None:
    kernel, initrd, cmdline = _planned_boot(cli)
    vm_dir = tmp_path / "vm"
    vm_dir.mkdir(mode=0o700)
    ssh.generate_keys(vm_dir)
    iso = guest_files_iso(
        (("ssh/authorized_keys", Path("id_ed25519.pub")), ("ssh/ssh_host_ed25519_key", Path("ssh_host_ed25519_key"))),
        vm_dir,
    )
    assert iso == vm_dir / GUEST_FILES_ISO
    port = _free_port()
    ssh.write_known_hosts(vm_dir / "known_hosts", "127.0.0.1", port, vm_dir / "ssh_host_ed25519_key.pub")
    argv = [
        "qemu-system-x86_64", "-accel", "tcg", "-M", "q35", "-m", "512", "-smp", "1", "-nodefaults",
        "-display", "none", "-no-reboot", "-serial", "file:console.log",
        "-kernel", kernel, "-initrd", initrd, "-append", cmdline,
        "-drive", f"if=none,id=cd0,file={GUEST_FILES_ISO},format=raw,media=cdrom,readonly=on",
        "-device", "ide-cd,drive=cd0,bus=ide.1",  # q35's built-in AHCI controller, like hyperkit's ahci-cd
        "-netdev", f"user,id=n0,hostfwd=tcp:127.0.0.1:{port}-:22", "-device", "virtio-net-pci,netdev=n0",
        "-device", "virtio-rng-pci",
    ]  # fmt: skip
    assert "fw_cfg" not in " ".join(argv)
    qemu = subprocess.Popen(argv, cwd=vm_dir, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    try:
        target = SshTarget(host="127.0.0.1", port=port, user="root", client_key=vm_dir / "id_ed25519",
                           known_hosts=vm_dir / "known_hosts", label="hyperkit-iso")  # fmt: skip
        try:
            ssh.wait_ready(target, timeout=300, alive=lambda: qemu.poll() is None)
        except Exception:
            console = (vm_dir / "console.log").read_text(errors="replace")
            pytest.fail(f"no SSH with the keys from the CD; console:\n{console[-3000:]}")
        out = vm_dir / "out"
        with open(out, "wb") as f:
            status = ssh.exec_command(target, ["sh", "-c", "ls -ln /run/config/ssh/ && hostname"], stdout=f)
        assert status == 0
        listing = out.read_text()
        assert "authorized_keys" in listing and "ssh_host_ed25519_key" in listing
        assert all(line.startswith("-rw-------") for line in listing.splitlines() if "ssh" in line.split()[-1])
    finally:
        if qemu.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(qemu.pid, signal.SIGKILL)
        qemu.wait(timeout=30)

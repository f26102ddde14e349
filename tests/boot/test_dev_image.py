"""The dev image booted for real: lkctl's kernel and init, the ext4 root disk through a per-VM overlay, /app."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lkctl.dev.image import DevImage, install_dev_image
from tests.boot.conftest import Cli

pytestmark = pytest.mark.boot


@pytest.fixture
def dev_image(cli: Cli, monkeypatch: pytest.MonkeyPatch, shared_cache: Path) -> DevImage:
    monkeypatch.setenv("LKCTL_CACHE_DIR", str(shared_cache))  # the root disk is built once per cache
    return install_dev_image(source="local")


@pytest.mark.timeout(2400)  # two boots under TCG, on a machine shared with other boots
def test_dev_image_boots_with_vm_run_an_app_volume_and_a_root_that_persists_and_leaves_the_base_unwritten(
    cli: Cli, dev_image: DevImage, tmp_path: Path
) -> None:
    # the dev image through the generic runtime (vm.run --image, vm.stop, vm.restart); what dev.* adds, its
    # toolchains, --fresh (a new VM starts from the base) and a kill are tests/boot/test_dev.py's, on its shared VM
    app = tmp_path / "project"
    app.mkdir()
    (app / "hello.txt").write_text("from the host\n")
    image = dev_image.image
    base_before = dev_image.path.stat()
    cli("vm.run", f"--image={image}", "-d", "--name", "dev1", "--volume", f"{app}:/app", "--memory", "1024",
        timeout=900)  # fmt: skip
    try:
        # the root is the ext4 disk, with the project mounted inside it
        script = (
            "df -T / | tail -n1; hostname; cat /etc/hostname; grep -c nameserver /etc/resolv.conf; cat /app/hello.txt"
        )
        root, hostname, etc_hostname, nameservers, hello = cli(
            "vm.exec", "dev1", "--", "sh", "-c", script
        ).stdout.split("\n")[:5]
        assert root.split()[1] == "ext4" and hello == "from the host"
        assert hostname == etc_hostname and int(nameservers) >= 1  # the VM's name and resolver inside the root
        cli("vm.exec", "dev1", "--", "sh", "-c", "echo kept > /root/marker && echo made > /app/made-in-guest")
        made = app / "made-in-guest"
        assert made.read_text() == "made\n" and made.stat().st_uid == os.getuid()  # the host user owns it
        cli("vm.stop", "dev1", timeout=120)
        cli("vm.restart", "dev1", timeout=900)
        assert cli("vm.exec", "dev1", "--", "cat", "/root/marker").stdout == "kept\n"
    finally:
        cli("vm.stop", "dev1", timeout=120)
    base_after = dev_image.path.stat()  # the VM booted, wrote and restarted: the base was never written
    assert (base_after.st_mtime_ns, base_after.st_size) == (base_before.st_mtime_ns, base_before.st_size)

"""A disk image is untrusted like the guest: one whose header names another host file (a qcow2 backing file or
data file, a vmdk descriptor's extent) is refused before the VM is made. Booted, the guest would read that file
as its disk: a private key, /etc/shadow. qemu-img makes the images; no guest boots."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lkctl.errors import ImageError
from lkctl.runtime.disks import check_self_contained, foreign_files

LKCTL = str(Path(sys.executable).parent / "lkctl")

VMDK = """# Disk DescriptorFile
version=1
CID=fffffffe
parentCID=ffffffff
createType="monolithicFlat"

# Extent description
RW 8 FLAT "{secret}" 0

# The Disk Data Base
ddb.virtualHWVersion = "4"
ddb.adapterType = "ide"
"""


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    path = tmp_path / "id_host_key"
    path.write_bytes(b"TOPSECRET-HOST-KEY".ljust(4096, b"\0"))
    return path


def _qcow2_over(tmp_path: Path, secret: Path) -> Path:
    image = tmp_path / "innocent.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(secret), "-F", "raw", str(image), "1M"],
                   check=True)  # fmt: skip
    return image


def _vmdk_over(tmp_path: Path, secret: Path) -> Path:
    image = tmp_path / "innocent.vmdk"
    image.write_text(VMDK.format(secret=secret))
    return image


@pytest.mark.parametrize("make", [_qcow2_over, _vmdk_over])
def test_vm_run_refuses_an_image_that_names_a_host_file(
    make: object, secret: Path, lkctl_home: Path, tmp_path: Path
) -> None:
    image = make(tmp_path, secret)  # type: ignore[operator]
    env = {k: v for k, v in os.environ.items() if not k.startswith("LKCTL_")}
    env.update(LKCTL_HOME=str(lkctl_home), HOME=str(tmp_path))
    try:
        proc = subprocess.run([LKCTL, "vm.run", f"--image={image}", "-d", "--no-wait", "--name", "ev"], env=env,
                              capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
        assert "Traceback" not in proc.stderr, proc.stderr
        # before: the VM ran, and its disk read TOPSECRET-HOST-KEY from the host file
        assert proc.returncode == 1, proc.stderr
        last = proc.stderr.strip().splitlines()[-1]
        assert "is not a self-contained" in last and str(secret) in last, proc.stderr
        assert not [d for d in (lkctl_home / "state" / "vms").iterdir() if d.is_dir()]
    finally:
        subprocess.run([LKCTL, "vm.rm", "--force", "ev"], env=env, capture_output=True, timeout=120, check=False)


def test_a_self_contained_image_passes(tmp_path: Path, secret: Path) -> None:
    image = tmp_path / "plain.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "1M"], check=True)
    check_self_contained(image, "qcow2")
    check_self_contained(secret, "raw")  # raw has no header to name anything
    with pytest.raises(ImageError, match="not a self-contained qcow2 image"):
        check_self_contained(_qcow2_over(tmp_path, secret), "qcow2")


def test_foreign_files_reads_backing_data_file_and_extents() -> None:
    me = Path("/img/a.vmdk")
    assert foreign_files({"backing-filename": "b", "full-backing-filename": "/x/b"}, me) == ["/x/b"]
    assert foreign_files({"format-specific": {"type": "qcow2", "data": {"data-file": "/d"}}}, me) == ["/d"]
    sparse: dict[str, object] = {
        "format-specific": {"type": "vmdk", "data": {"extents": [{"filename": "/img/a.vmdk"}]}}
    }
    assert foreign_files(sparse, me) == []  # LinuxKit's monolithicSparse vmdk: its one extent is itself
    flat: dict[str, object] = {"format-specific": {"type": "vmdk", "data": {"extents": [{"filename": "/etc/shadow"}]}}}
    assert foreign_files(flat, me) == ["/etc/shadow"]

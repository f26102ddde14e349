"""How /app is shared: the choice (lkctl.dev.share) and what a VM's QEMU command line says it uses."""

import os
import shutil
import struct
import tempfile
from pathlib import Path

import pytest

from lkctl.dev.share import choose_share, only_root_reaches, share_of
from lkctl.errors import ConfigError
from lkctl.runtime.disks import find_virtiofsd
from lkctl.runtime.state import VmRecord


def _record(*argv: str) -> VmRecord:
    return VmRecord(id="0badc0de", name="dev-x", image="lkctl-dev", image_format="kernel+initrd", created="",
                    memory=1024, cpus=2, ssh_port=2222, argv=["qemu-system-x86_64", *argv])  # fmt: skip


def test_share_of_reads_the_filesystem_from_the_qemu_command_line() -> None:
    virtiofs = _record("-chardev", "socket,id=vfs0,path=virtiofs-lkvol0.sock", "-device",
                       "vhost-user-fs-pci,chardev=vfs0,tag=lkvol0")  # fmt: skip
    ninep = _record("-fsdev", "local,id=fsdev0,path=/p,security_model=mapped-xattr", "-device",
                    "virtio-9p-pci,fsdev=fsdev0,mount_tag=lkvol0")  # fmt: skip
    assert (share_of(virtiofs), share_of(ninep), share_of(_record())) == ("virtiofs", "9p", "")


def test_choose_share_takes_9p_when_asked_and_auto_follows_what_the_host_can_serve() -> None:
    assert choose_share("9p") == "9p"
    can = find_virtiofsd() is not None and os.geteuid() == 0
    assert choose_share("auto") == ("virtiofs" if can else "9p")
    if can:
        assert choose_share("virtiofs") == "virtiofs"
    else:
        with pytest.raises(ConfigError, match="set it to auto or 9p"):
            choose_share("virtiofs")


def test_an_unknown_share_is_one_line_naming_the_choices() -> None:
    with pytest.raises(ConfigError) as e:
        choose_share("nfs")
    assert e.value.message == "lkctl.dev.share is 'nfs'; use one of auto, virtiofs, 9p"


def _reachable_dir() -> Path:
    """A directory every user can reach (/tmp and a 0755 directory in it), unlike pytest's 0700 tmp dirs."""
    d = Path(tempfile.mkdtemp(prefix="lkctl-share-"))
    d.chmod(0o755)
    return d


def test_auto_shares_a_project_other_users_can_reach_over_9p_never_virtiofs(tmp_path: Path) -> None:
    # virtiofsd would let the guest's root leave setuid-root files and device nodes there for those users
    public = _reachable_dir()
    try:
        (public / "proj").mkdir()
        assert only_root_reaches(public / "proj") is False
        assert choose_share("auto", public / "proj") == "9p"
        closed = tmp_path / "proj"  # pytest's base tmp dir is 0700
        closed.mkdir()
        assert only_root_reaches(closed) is (os.geteuid() == 0)
        can = find_virtiofsd() is not None and os.geteuid() == 0
        assert choose_share("auto", closed) == ("virtiofs" if can else "9p")
        if can:
            assert choose_share("virtiofs", public / "proj") == "virtiofs"  # asked for explicitly: as asked
    finally:
        shutil.rmtree(public)


def _acl_granting(uid: int) -> bytes:
    """system.posix_acl_access in the kernel's format: owner rwx, `uid` r-x, group and others nothing."""
    entries = [
        (0x01, 7, 0xFFFFFFFF),
        (0x02, 5, uid),
        (0x04, 0, 0xFFFFFFFF),
        (0x10, 5, 0xFFFFFFFF),
        (0x20, 0, 0xFFFFFFFF),
    ]
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)


def test_a_closed_directory_that_an_acl_opens_again_does_not_count() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: a closed directory counts only when root owns it")
    public = _reachable_dir()
    try:
        closed = public / "closed"
        (closed / "proj").mkdir(parents=True)
        closed.chmod(0o700)
        assert only_root_reaches(closed / "proj") is True
        try:
            os.setxattr(closed, "system.posix_acl_access", _acl_granting(65534))
        except OSError as e:
            pytest.skip(f"this file system takes no ACLs: {e.strerror}")
        assert only_root_reaches(closed / "proj") is False
    finally:
        shutil.rmtree(public)

"""How /app is shared: the choice (lkctl.dev.share) and what a VM's QEMU command line says it uses."""

import os

import pytest

from lkctl.dev.share import choose_share, share_of
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

"""Every output format's structure, read back with other tools (xorriso, mtools, qemu-img): what the boot loaders
will find where, the sizes asked for, and all-or-nothing publishing. (tests/boot/test_build_formats.py boots them.)"""

from __future__ import annotations

import json
import struct
import subprocess
from pathlib import Path
from typing import Any

import pytest

from lkctl.build import FORMATS, BuildResult, build_image, build_paths, parse_spec
from lkctl.build.testing import add_image, file
from lkctl.errors import BuildError, LkError
from lkctl.oci.layout import Store
from tests.integration._loopback import require

pytestmark = pytest.mark.integration

KERNEL = b"MZ fake kernel " * 4096
SPEC = """
kernel:
  image: lkctl.local/kernel:1
  cmdline: "console=ttyS0 lk.test=$HOME"
  tar: none
init:
  - lkctl.local/init:1
"""
MIB = 1 << 20


@pytest.fixture(scope="module")
def tools() -> None:
    needed = {"xorriso": "xorriso", "mcopy": "mtools", "mkfs.fat": "dosfstools", "syslinux": "syslinux",
              "grub-mkimage": "grub-common", "qemu-img": "qemu-utils"}  # fmt: skip
    for program, package in needed.items():
        require(program, package)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    store = Store(tmp_path / "store").ensure()
    add_image(store, "lkctl.local/kernel:1", [[file("kernel", KERNEL)]])
    add_image(store, "lkctl.local/init:1", [[file("init", b"#!/bin/sh\n", 0o755), file("etc/issue", b"lk\n")]])
    return store


def build(store: Store, out: Path, formats: list[str], **kw: object) -> BuildResult:
    return build_image(parse_spec(SPEC), name="vm", out_dir=out, store=store, formats=formats, **kw)  # type: ignore[arg-type]


def sh(*argv: str | Path) -> str:
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, check=True).stdout


def img_info(path: Path) -> dict[str, Any]:
    return dict(json.loads(sh("qemu-img", "info", "--output=json", path)))


def iso_file(iso: Path, path: str, dest: Path) -> bytes:
    sh("xorriso", "-osirrox", "on", "-indev", iso, "-extract", path, dest)
    return dest.read_bytes()


def fat_file(image: str, path: str, dest: Path) -> bytes:
    sh("mcopy", "-n", "-i", image, f"::{path}", dest)
    return dest.read_bytes()


@pytest.mark.usefixtures("tools")
def test_isos_carry_kernel_initrd_and_the_right_boot_catalog(store: Store, tmp_path: Path) -> None:
    result = build(store, tmp_path / "out", ["kernel+initrd", "iso-bios", "iso-efi"])
    initrd = result.initrd.read_bytes()
    (bios,), (efi,) = result.outputs["iso-bios"], result.outputs["iso-efi"]
    assert (bios.name, efi.name) == ("vm.iso", "vm-efi.iso")

    assert "BIOS" in sh("xorriso", "-indev", bios, "-report_el_torito", "plain")
    assert iso_file(bios, "/boot/kernel", tmp_path / "k") == KERNEL
    assert iso_file(bios, "/boot/initrd.img", tmp_path / "i") == initrd
    cfg = iso_file(bios, "/isolinux/isolinux.cfg", tmp_path / "c").decode()
    assert "KERNEL /boot/kernel" in cfg and "APPEND console=ttyS0 lk.test=$HOME" in cfg
    assert bios.read_bytes()[510:512] == b"\x55\xaa"  # isohybrid: also bootable as a disk

    assert "UEFI" in sh("xorriso", "-indev", efi, "-report_el_torito", "plain")
    assert iso_file(efi, "/boot/initrd.img", tmp_path / "i2") == initrd
    grub = iso_file(efi, "/EFI/BOOT/grub.cfg", tmp_path / "g").decode()
    assert "linux /boot/kernel 'console=ttyS0' 'lk.test=$HOME'" in grub and "initrd /boot/initrd.img" in grub
    listing = sh("xorriso", "-indev", efi, "-ls", "/EFI/BOOT")
    assert "lkctl-" in listing and "efiboot.img" not in sh("xorriso", "-indev", efi, "-ls", "/")  # hidden


@pytest.mark.usefixtures("tools")
def test_bios_disk_has_an_active_fat_partition_with_syslinux(store: Store, tmp_path: Path) -> None:
    result = build(store, tmp_path / "out", ["raw-bios"])
    (disk,) = result.outputs["raw-bios"]
    data = disk.read_bytes()
    assert data[510:512] == b"\x55\xaa" and data[446] == 0x80 and data[450] == 0x0E
    start, sectors = struct.unpack_from("<II", data, 454)
    assert start == 2048 and (start + sectors) * 512 <= len(data)
    image = f"{disk}@@{start * 512}"
    names = sh("mdir", "-a", "-b", "-i", image, "::/")  # -a: ldlinux.sys is a hidden system file
    for name in ("KERNEL", "INITRD.IMG", "SYSLINUX.CFG", "LDLINUX.SYS"):
        assert name.lower() in names.lower()
    assert fat_file(image, "/kernel", tmp_path / "k") == KERNEL
    assert "APPEND console=ttyS0 lk.test=$HOME" in fat_file(image, "/syslinux.cfg", tmp_path / "c").decode()


@pytest.mark.usefixtures("tools")
def test_efi_disk_is_gpt_with_an_esp_holding_grub(store: Store, tmp_path: Path) -> None:
    result = build(store, tmp_path / "out", ["raw-efi"], size="64M")
    (disk,) = result.outputs["raw-efi"]
    data = disk.read_bytes()
    assert len(data) == 64 * MIB and data[512:520] == b"EFI PART" and data[-512:-504] == b"EFI PART"
    first = struct.unpack_from("<Q", data, 1024 + 32)[0]
    image = f"{disk}@@{first * 512}"
    boot = sh("mdir", "-b", "-i", image, "::/EFI/BOOT").lower()
    assert "bootx64.efi" in boot and "grub.cfg" in boot and "lkctl-" in boot
    assert (
        fat_file(image, "/boot/initrd.img", tmp_path / "i")
        == build_paths(result.outputs["raw-efi"][0].parent, "vm").parts.joinpath("initrd.img").read_bytes()
    )
    assert fat_file(image, "/EFI/BOOT/BOOTX64.EFI", tmp_path / "e")[:2] == b"MZ"  # a PE image


@pytest.mark.usefixtures("tools")
def test_qcow2_and_vmdk_are_converted_disks_of_the_asked_size(store: Store, tmp_path: Path) -> None:
    result = build(store, tmp_path / "out", ["qcow2-bios", "vmdk"])
    qcow2, vmdk = (img_info(result.outputs[f][0]) for f in ("qcow2-bios", "vmdk"))
    assert qcow2["format"] == "qcow2" and qcow2["virtual-size"] == 1024 * MIB
    assert vmdk["format"] == "vmdk" and vmdk["format-specific"]["data"]["create-type"] == "streamOptimized"
    assert result.outputs["qcow2-bios"][0].stat().st_size < 64 * MIB  # the empty space is not stored

    bigger = build(store, tmp_path / "out", ["qcow2-bios"], size="2G")
    assert bigger.built == ("qcow2-bios",)  # the vmdk is not redone
    assert img_info(bigger.outputs["qcow2-bios"][0])["virtual-size"] == 2 << 30
    with pytest.raises(BuildError, match=r"--size 1M is too small; the image needs at least \d+M"):
        build(store, tmp_path / "out", ["raw-bios"], size="1M")


def test_a_missing_tool_fails_the_build_naming_the_package_and_publishes_nothing(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    out = tmp_path / "out"
    with pytest.raises(LkError, match="xorriso not found on PATH; install it with: sudo apt-get install xorriso"):
        build(store, out, ["kernel+initrd", "iso-bios"])
    assert not out.exists()  # not even the kernel, nor lkctl's bookkeeping: the dir it made is gone again


def test_every_format_is_known_and_an_unknown_one_is_refused(store: Store, tmp_path: Path) -> None:
    assert set(FORMATS) == {"kernel+initrd", "tar", "iso-bios", "iso-efi", "raw-bios", "raw-efi", "qcow2-bios", "vmdk"}
    with pytest.raises(LkError, match="unsupported output format docker; supported: kernel"):
        build(store, tmp_path / "out", ["docker"])

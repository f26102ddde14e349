"""The files behind a VM's drives, made and checked with the real qemu-img, qemu-io and xorriso."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from lkctl.errors import ConfigError, ImageError, LkError
from lkctl.runtime.disks import (
    clone_file,
    create_data_disk,
    create_overlay,
    detect_format,
    detect_uefi,
    find_uefi_firmware,
    parse_data_disk,
    prepare_vm_files,
    virtiofsd_argv,
)
from lkctl.runtime.host import Accel, HostCaps
from lkctl.runtime.hyperkit import guest_files_iso
from lkctl.runtime.model import BootImage, DataDisk, ImageFormat, UefiFirmware, VmSpec, Volume, volume_mounts
from lkctl.runtime.qemu import BOOT_OVERLAY, UEFI_VARS, VOLUMES_FILE
from tests.conftest import IN_CI

pytestmark = pytest.mark.integration

HOST = HostCaps(os="linux", arch="x86_64", accel=Accel.TCG, qemu="/usr/bin/qemu-system-x86_64")


def need(*programs: str) -> None:
    missing = [p for p in programs if shutil.which(p) is None]
    if missing:
        if IN_CI:
            pytest.fail(f"{', '.join(missing)} missing and CI=true (packages qemu-utils, xorriso)")
        pytest.skip(f"{', '.join(missing)} not installed")


def sh(*argv: str | Path, cwd: Path | None = None) -> str:
    return subprocess.run([str(a) for a in argv], check=True, capture_output=True, text=True, cwd=cwd).stdout


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def qemu_io(fmt: str, path: Path, command: str) -> str:
    return sh("qemu-io", "-f", fmt, "-c", command, path)


def info(path: Path) -> dict[str, object]:
    result: dict[str, object] = json.loads(sh("qemu-img", "info", "--output=json", path))
    return result


@pytest.fixture
def qcow2_base(tmp_path: Path) -> Path:
    need("qemu-img", "qemu-io")
    base = tmp_path / "images" / "base.qcow2"
    base.parent.mkdir()
    sh("qemu-img", "create", "-q", "-f", "qcow2", base, "16M")
    qemu_io("qcow2", base, "write -P 0xab 0 64k")
    return base


def test_writes_through_the_overlay_leave_the_base_image_unchanged(qcow2_base: Path, tmp_path: Path) -> None:
    before = sha256(qcow2_base)
    overlay = tmp_path / "vm" / BOOT_OVERLAY
    overlay.parent.mkdir()
    create_overlay(qcow2_base, "qcow2", overlay)
    qemu_io("qcow2", overlay, "write -P 0xcd 0 64k")
    qemu_io("qcow2", overlay, "write -P 0xef 8M 1M")
    assert "failed" not in qemu_io("qcow2", overlay, "read -P 0xcd 0 64k").lower()
    assert sha256(qcow2_base) == before
    assert "failed" not in qemu_io("qcow2", qcow2_base, "read -P 0xab 0 64k").lower()
    meta = info(overlay)
    assert meta["format"] == "qcow2"
    assert meta["backing-filename"] == str(qcow2_base)
    assert meta["backing-filename-format"] == "qcow2"
    assert meta["virtual-size"] == 16 << 20


@pytest.mark.parametrize("fmt", ["raw", "vmdk"])
def test_overlay_records_the_base_format_it_was_given(fmt: str, tmp_path: Path) -> None:
    need("qemu-img", "qemu-io")
    base = tmp_path / f"base.{fmt}"
    sh("qemu-img", "create", "-q", "-f", fmt, base, "8M")
    before = sha256(base)
    overlay = tmp_path / BOOT_OVERLAY
    create_overlay(base, fmt, overlay)
    qemu_io("qcow2", overlay, "write -P 0x11 0 4k")
    assert info(overlay)["backing-filename-format"] == fmt
    assert sha256(base) == before


def test_overlay_with_a_relative_base_path_still_finds_its_base(qcow2_base: Path, tmp_path: Path) -> None:
    overlay = tmp_path / "elsewhere" / BOOT_OVERLAY
    overlay.parent.mkdir()
    cwd = os.getcwd()
    os.chdir(qcow2_base.parent.parent)
    try:
        create_overlay(Path("images/base.qcow2"), "qcow2", overlay)
    finally:
        os.chdir(cwd)
    assert info(overlay)["backing-filename"] == str(qcow2_base)


def test_overlay_refuses_a_missing_base_an_existing_overlay_and_a_wrong_base_format(
    qcow2_base: Path, tmp_path: Path
) -> None:
    with pytest.raises(ImageError, match="does not exist"):
        create_overlay(tmp_path / "nope.qcow2", "qcow2", tmp_path / "o1.qcow2")
    (tmp_path / "o2.qcow2").write_bytes(b"keep me")
    with pytest.raises(ImageError, match="already exists"):
        create_overlay(qcow2_base, "qcow2", tmp_path / "o2.qcow2")
    assert (tmp_path / "o2.qcow2").read_bytes() == b"keep me"
    raw = tmp_path / "raw.img"
    raw.write_bytes(b"\0" * (1 << 20))
    with pytest.raises(LkError, match="overlay"):
        create_overlay(raw, "qcow2", tmp_path / "o3.qcow2")
    assert not (tmp_path / "o3.qcow2").exists()
    assert not list(tmp_path.glob(".*.tmp"))


def test_qcow2_data_disk_has_the_requested_size(tmp_path: Path) -> None:
    need("qemu-img")
    disk = tmp_path / "data.qcow2"
    create_data_disk(disk, 2 << 30)
    assert info(disk)["virtual-size"] == 2 << 30
    assert disk.stat().st_size < 1 << 20
    with pytest.raises(ImageError, match="already exists"):
        create_data_disk(disk, 1 << 30)


def test_raw_data_disk_is_sparse(tmp_path: Path) -> None:
    disk = tmp_path / "data.img"
    create_data_disk(disk, 1 << 30, "raw")
    assert disk.stat().st_size == 1 << 30
    assert disk.stat().st_blocks * 512 < 1 << 20


def test_parse_data_disk(tmp_path: Path) -> None:
    assert parse_data_disk("10G") == DataDisk(10 << 30)
    assert parse_data_disk(f"size=1G,format=raw,path={tmp_path}/d.img") == DataDisk(1 << 30, "raw", tmp_path / "d.img")
    for bad in ("100K", "10", "-1G", "format=raw", "size=1G,format=vmdk", "size=1G,color=red"):
        with pytest.raises(ConfigError, match="--disk"):
            parse_data_disk(bad)


def _iso(tmp_path: Path, name: str, *boot: str) -> Path:
    """A tiny ISO from xorriso; `boot` adds El Torito entries over a dummy 2 KiB boot file."""
    need("xorriso")
    root = tmp_path / f"{name}-root"
    root.mkdir()
    (root / "hello.txt").write_text("hello\n")
    (root / "boot.bin").write_bytes(b"\x90" * 2048)
    out = tmp_path / name
    sh("xorriso", "-as", "mkisofs", "-quiet", "-R", "-o", out, *boot, root)
    return out


def test_formats_are_detected_by_content_on_real_files(tmp_path: Path) -> None:
    need("qemu-img")
    qcow2, vmdk = tmp_path / "disk.img", tmp_path / "disk.vmdk"  # a qcow2 whose name says raw
    sh("qemu-img", "create", "-q", "-f", "qcow2", qcow2, "1M")
    sh("qemu-img", "create", "-q", "-f", "vmdk", vmdk, "1M")
    iso = _iso(tmp_path, "image.raw")  # an ISO whose name says raw
    assert detect_format(qcow2) is ImageFormat.QCOW2
    assert detect_format(vmdk) is ImageFormat.VMDK
    assert detect_format(iso) is ImageFormat.ISO


def test_a_name_that_promises_qcow2_without_its_magic_is_not_trusted(tmp_path: Path) -> None:
    mbr = tmp_path / "really-raw.qcow2"
    mbr.write_bytes(b"\0" * 510 + b"\x55\xaa" + b"\0" * 4096)
    junk = tmp_path / "junk.qcow2"
    junk.write_bytes(b"not an image" * 100)
    assert detect_format(mbr) is ImageFormat.RAW
    assert detect_format(junk) is None


def test_raw_images_are_known_by_extension_or_boot_signature(tmp_path: Path) -> None:
    plain = tmp_path / "disk.img"
    plain.write_bytes(b"\0" * 4096)
    bootable = tmp_path / "disk.bin"
    bootable.write_bytes(b"\xeb\x3c" + b"\0" * 508 + b"\x55\xaa")
    unknown = tmp_path / "notes.txt"
    unknown.write_text("hello")
    assert detect_format(plain) is ImageFormat.RAW
    assert detect_format(bootable) is ImageFormat.RAW
    assert detect_format(unknown) is None
    assert detect_format(tmp_path / "missing.iso") is None


def test_uefi_is_detected_from_the_el_torito_catalog(tmp_path: Path) -> None:
    efi_only = _iso(tmp_path, "a.iso", "-e", "boot.bin", "-no-emul-boot")
    bios = _iso(tmp_path, "b.iso", "-b", "boot.bin", "-no-emul-boot")
    hybrid = _iso(tmp_path, "c.iso", "-b", "boot.bin", "-no-emul-boot", "-eltorito-alt-boot", "-e", "boot.bin",
                  "-no-emul-boot")  # fmt: skip
    assert detect_uefi(efi_only, ImageFormat.ISO) is True
    assert detect_uefi(bios, ImageFormat.ISO) is False
    assert detect_uefi(hybrid, ImageFormat.ISO) is False  # BIOS boots it without firmware files
    assert detect_uefi(_iso(tmp_path, "plain.iso"), ImageFormat.ISO) is False


def test_uefi_is_detected_from_linuxkit_names_and_gpt_disks(tmp_path: Path) -> None:
    gpt = tmp_path / "disk.img"
    gpt.write_bytes(b"\0" * 510 + b"\x55\xaa" + b"EFI PART" + b"\0" * 1000)
    mbr = tmp_path / "bios.img"
    mbr.write_bytes(b"\xfa\x31\xc0" + b"\0" * 507 + b"\x55\xaa" + b"EFI PART" + b"\0" * 1000)
    named = tmp_path / "linuxkit-efi.qcow2"
    named.write_bytes(b"QFI\xfb")
    assert detect_uefi(gpt, ImageFormat.RAW) is True
    assert detect_uefi(mbr, ImageFormat.RAW) is False
    assert detect_uefi(named, ImageFormat.QCOW2) is True
    assert detect_uefi(tmp_path / "linuxkit.qcow2", ImageFormat.QCOW2) is False


def _touch(root: Path, *paths: str) -> None:
    for p in paths:
        f = root / p.lstrip("/")
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(b"fw")


def test_firmware_lookup_prefers_a_code_and_vars_pair(tmp_path: Path) -> None:
    assert find_uefi_firmware("x86_64", root=tmp_path) is None
    _touch(tmp_path, "/usr/share/ovmf/OVMF.fd", "/usr/share/OVMF/OVMF_CODE.fd")
    assert find_uefi_firmware("x86_64", root=tmp_path) == UefiFirmware(tmp_path / "usr/share/ovmf/OVMF.fd")
    _touch(tmp_path, "/usr/share/OVMF/OVMF_VARS.fd")
    assert find_uefi_firmware("x86_64", root=tmp_path) == UefiFirmware(
        tmp_path / "usr/share/OVMF/OVMF_CODE.fd", tmp_path / "usr/share/OVMF/OVMF_VARS.fd"
    )


def test_firmware_lookup_knows_homebrew_edk2(tmp_path: Path) -> None:
    _touch(tmp_path, "/opt/homebrew/share/qemu/edk2-aarch64-code.fd", "/opt/homebrew/share/qemu/edk2-arm-vars.fd")
    _touch(tmp_path, "/usr/local/share/qemu/edk2-x86_64-code.fd", "/usr/local/share/qemu/edk2-i386-vars.fd")
    assert find_uefi_firmware("aarch64", root=tmp_path) == UefiFirmware(
        tmp_path / "opt/homebrew/share/qemu/edk2-aarch64-code.fd", tmp_path / "opt/homebrew/share/qemu/edk2-arm-vars.fd"
    )
    x86 = find_uefi_firmware("x86_64", root=tmp_path)
    assert x86 is not None and x86.code.name == "edk2-x86_64-code.fd"
    assert find_uefi_firmware("riscv64", root=tmp_path) is None


def test_prepare_makes_overlay_data_disk_vars_and_volume_list_and_keeps_them_on_restart(
    qcow2_base: Path, tmp_path: Path
) -> None:
    vars_template = tmp_path / "VARS.fd"
    vars_template.write_bytes(b"\0" * (1 << 20) + b"vars" + b"\0" * 1020)
    share = tmp_path / "share"
    share.mkdir()
    spec = VmSpec(
        "0a1b2c3d",
        BootImage(ImageFormat.QCOW2, qcow2_base, uefi=True),
        data_disk=DataDisk(64 << 20),
        firmware=UefiFirmware(Path("/fw/CODE.fd"), vars_template),
        volumes=(Volume(share, "/mnt/share", readonly=True),),
    )
    vm = tmp_path / "vm"
    vm.mkdir()
    prepare_vm_files(spec, vm, HOST)
    assert info(vm / BOOT_OVERLAY)["backing-filename"] == str(qcow2_base)
    assert info(vm / "data.qcow2")["virtual-size"] == 64 << 20
    assert (vm / UEFI_VARS).read_bytes() == vars_template.read_bytes()
    assert (vm / VOLUMES_FILE).read_text() == "lkvol0\t9p\tro\t/mnt/share\n"
    qemu_io("qcow2", vm / BOOT_OVERLAY, "write -P 0x42 0 4k")
    qemu_io("qcow2", vm / "data.qcow2", "write -P 0x43 0 4k")
    prepare_vm_files(spec, vm, HOST)  # a restart keeps what the VM wrote
    assert "failed" not in qemu_io("qcow2", vm / BOOT_OVERLAY, "read -P 0x42 0 4k").lower()
    assert "failed" not in qemu_io("qcow2", vm / "data.qcow2", "read -P 0x43 0 4k").lower()


def test_prepare_for_a_kernel_boot_makes_nothing(tmp_path: Path) -> None:
    boot = BootImage(ImageFormat.KERNEL_INITRD, tmp_path / "x", kernel=tmp_path / "k", initrd=tmp_path / "i")
    vm = tmp_path / "vm"
    vm.mkdir()
    prepare_vm_files(VmSpec("0a1b2c3d", boot, firmware=UefiFirmware(Path("/c"), Path("/v"))), vm, HOST)
    assert list(vm.iterdir()) == []


def test_prepare_for_hyperkit_clones_a_raw_image_and_writes_the_guest_files_iso(tmp_path: Path) -> None:
    need("xorriso")
    base = tmp_path / "linuxkit-efi.img"
    base.write_bytes(os.urandom(1 << 20))
    before = sha256(base)
    vm = tmp_path / "vm"
    vm.mkdir()
    (vm / "id_ed25519.pub").write_text("ssh-ed25519 AAAA test\n")
    spec = VmSpec("0a1b2c3d", BootImage(ImageFormat.RAW, base), guest_files=(("ssh/authorized_keys",
                  Path("id_ed25519.pub")),))  # fmt: skip
    prepare_vm_files(spec, vm, HOST, hypervisor="hyperkit")
    assert sha256(vm / "boot.img") == before
    with open(vm / "boot.img", "r+b") as f:
        f.write(b"guest writes")
    assert sha256(base) == before
    assert detect_format(vm / "guest-files.iso") is ImageFormat.ISO
    out = tmp_path / "out"
    sh("xorriso", "-osirrox", "on", "-indev", vm / "guest-files.iso", "-extract", "/", out)
    assert (out / "ssh" / "authorized_keys").read_text() == "ssh-ed25519 AAAA test\n"


def test_guest_file_names_cannot_escape_the_iso(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="relative path"):
        guest_files_iso((("../etc/passwd", Path("x")),), tmp_path)


def test_clone_copies_the_content(tmp_path: Path) -> None:
    src = tmp_path / "src.img"
    src.write_bytes(os.urandom(4096) + b"\0" * (1 << 20))
    clone_file(src, tmp_path / "dst.img")
    assert (tmp_path / "dst.img").read_bytes() == src.read_bytes()


def test_virtiofsd_serves_each_read_write_volume_on_its_own_socket(tmp_path: Path) -> None:
    spec = VmSpec("0a1b2c3d", BootImage(ImageFormat.ISO, Path("/i.iso")), virtiofs=True,
                  volumes=(Volume(tmp_path, "/a"), Volume(tmp_path, "/b", readonly=True)))  # fmt: skip
    rw, ro = volume_mounts(spec)
    assert virtiofsd_argv("/usr/libexec/virtiofsd", rw) == [
        "/usr/libexec/virtiofsd", "--socket-path=virtiofs-lkvol0.sock", "-o", f"source={tmp_path}", "-o", "cache=auto"
    ]  # fmt: skip
    with pytest.raises(ConfigError, match="not virtiofs"):
        virtiofsd_argv("/usr/libexec/virtiofsd", ro)

"""Every image format boots under QEMU (TCG) with lkctl's argv, from images made here without lkctl's builder.

The images are made from the machine's packages: the Debian kernel, a busybox initrd whose /init prints a marker
(and, given the modules, exercises the guest side of volumes and disks), isolinux/syslinux for BIOS boots and a
standalone GRUB for UEFI boots. aarch64 guests use Debian's arm64 kernel, busybox and GRUB, downloaded once with
apt-get into the shared test cache.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from lkctl.runtime.disks import find_uefi_firmware, find_virtiofsd, prepare_vm_files, virtiofsd_argv
from lkctl.runtime.host import Accel, HostCaps
from lkctl.runtime.model import BootImage, DataDisk, ImageFormat, VmSpec, Volume, volume_mounts
from lkctl.runtime.qemu import BOOT_OVERLAY, qemu_argv
from tests.conftest import IN_CI

pytestmark = pytest.mark.boot

MARKER = "LKCTL-FORMAT-BOOTED"
X86_MODULES = ["virtio_pci", "virtio_blk", "9pnet_virtio", "9p", "qemu_fw_cfg", "virtiofs", "ahci", "sd_mod",
               "crct10dif_generic"]  # fmt: skip

# /init: load the modules, run the checks the kernel command line asks for (lktest=...), print the marker, power off.
INIT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in $(cat /mods/order 2>/dev/null); do insmod /mods/$m 2>/dev/null; done
case " $(cat /proc/cmdline) " in
*" lktest=disk "*)
    sleep 1
    echo guest-was-here | dd of=/dev/sda bs=512 seek=100 conv=notrunc,sync 2>/dev/null && sync
    echo "LKCTL-DISK-WRITTEN" ;;
*" lktest=volumes "*)
    echo "LKCTL-VOLUMES: $(tr '\t\n' '|;' < /sys/firmware/qemu_fw_cfg/by_name/opt/lkctl/volumes/raw)"
    mkdir -p /mnt/rw /mnt/ro
    mount -t 9p -o trans=virtio,version=9p2000.L lkvol0 /mnt/rw && echo "LKCTL-HOSTFILE: $(cat /mnt/rw/from-host.txt)"
    echo written-in-guest > /mnt/rw/from-guest.txt && sync
    mount -t 9p -o trans=virtio,version=9p2000.L lkvol1 /mnt/ro
    if echo x > /mnt/ro/refused.txt; then echo LKCTL-RO-WRITABLE; else echo LKCTL-RO-REFUSED; fi
    echo "LKCTL-DATA: $(cat /sys/block/vda/serial) $(cat /sys/block/vda/size)"
    echo data-disk-bytes | dd of=/dev/vda bs=512 count=1 conv=sync 2>/dev/null && sync ;;
*" lktest=virtiofs "*)
    mkdir -p /mnt/rw
    mount -t virtiofs lkvol0 /mnt/rw && echo "LKCTL-HOSTFILE: $(cat /mnt/rw/from-host.txt)"
    echo written-in-guest > /mnt/rw/from-guest.txt && sync ;;
esac
echo "LKCTL-FORMAT-BOOTED $(cat /proc/cmdline)"
poweroff -f
"""

GRUB_CFG = """set timeout=0
search --no-floppy --set=root --file {kernel}
linux {kernel} {cmdline}
initrd {initrd}
boot
"""


def need(*things: str) -> None:
    """Programs (names) or files (absolute paths) a test needs: a skip on a developer machine, a failure in CI."""
    missing = [t for t in things if not (Path(t).exists() if t.startswith("/") else shutil.which(t))]
    if missing:
        msg = f"missing {', '.join(missing)} (packages: qemu-system-x86 qemu-utils ovmf xorriso isolinux syslinux"
        msg += " mtools dosfstools grub-efi-amd64-bin; aarch64: qemu-system-arm qemu-efi-aarch64)"
        if IN_CI:
            pytest.fail(msg + " and CI=true")
        pytest.skip(msg)


def sh(*argv: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run([str(a) for a in argv], capture_output=True, text=True, cwd=cwd, env=env, check=False)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, argv))} failed: {proc.stderr.strip()[-2000:]}")
    return proc.stdout


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def module_order(moddir: Path, names: Iterable[str]) -> list[str]:
    """Module files (relative to moddir) in load order, dependencies first, from modules.dep."""
    deps: dict[str, list[str]] = {}
    for line in (moddir / "modules.dep").read_text().splitlines():
        mod, _, rest = line.partition(":")
        deps[mod] = rest.split()
    by_name = {Path(m).name.removesuffix(".ko"): m for m in deps}
    order: list[str] = []

    def add(mod: str) -> None:
        for dep in reversed(deps[mod]):
            add(dep)
        if mod not in order:
            order.append(mod)

    for name in names:
        if name in by_name:
            add(by_name[name])
    return order


def make_initrd(out: Path, busybox: Path, moddir: Path | None = None, modules: Iterable[str] = ()) -> Path:
    root = out.with_suffix(".d")
    shutil.rmtree(root, ignore_errors=True)
    for d in ("bin", "proc", "sys", "dev", "mods"):
        (root / d).mkdir(parents=True)
    shutil.copy(busybox, root / "bin" / "busybox")
    if moddir is not None:
        order = module_order(moddir, modules)
        for m in order:
            shutil.copy(moddir / m, root / "mods" / Path(m).name)
        (root / "mods" / "order").write_text("\n".join(Path(m).name for m in order) + "\n")
    (root / "init").write_text(INIT)
    (root / "init").chmod(0o755)
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
    cpio = subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"], input="\n".join(files).encode(), cwd=root,
                          capture_output=True, check=True).stdout  # fmt: skip
    out.write_bytes(gzip.compress(cpio, 1))
    return out


def fat_image(out: Path, size_mb: int, files: dict[str, Path]) -> Path:
    """A partitionless FAT image (a "superfloppy": SeaBIOS and OVMF both boot it) holding `files`."""
    out.unlink(missing_ok=True)
    sh("mkfs.vfat", "-n", "LKFMT", "-C", out, str(size_mb * 1024))
    for dest in sorted(files):
        parts = dest.strip("/").split("/")
        for i in range(1, len(parts)):
            subprocess.run(["mmd", "-i", str(out), "::/" + "/".join(parts[:i])], capture_output=True, check=False)
        sh("mcopy", "-i", out, files[dest], f"::/{dest.strip('/')}")
    return out


def grub_efi(out: Path, target: str, cfg: str, modules_dir: Path | None = None) -> Path:
    cfg_file = out.with_suffix(".cfg")
    cfg_file.write_text(cfg)
    extra = ["-d", str(modules_dir)] if modules_dir else []
    sh("grub-mkstandalone", *extra, "-O", target, "-o", out, "--locales=", "--themes=", "--fonts=",
       "--modules=part_gpt part_msdos fat iso9660 search search_fs_file linux normal gzio",
       f"boot/grub/grub.cfg={cfg_file}")  # fmt: skip
    return out


def efi_iso(out: Path, work: Path, kernel: Path, initrd: Path, loader: Path, loader_name: str) -> Path:
    tree = work / "efi-iso"
    (tree / "boot").mkdir(parents=True)
    shutil.copy(kernel, tree / "boot" / "kernel")
    shutil.copy(initrd, tree / "boot" / "initrd.img")
    fat_image(tree / "efiboot.img", 8, {f"EFI/BOOT/{loader_name}": loader})
    sh("xorriso", "-as", "mkisofs", "-quiet", "-R", "-V", "LKFMT", "-e", "efiboot.img", "-no-emul-boot",
       "-o", out, tree)  # fmt: skip
    return out


@dataclass(frozen=True)
class Images:
    kernel: Path
    initrd: Path
    bios_iso: Path
    efi_iso: Path
    bios_raw: Path
    efi_raw: Path


@pytest.fixture(scope="module")
def x86(tmp_path_factory: pytest.TempPathFactory) -> Images:
    need("qemu-system-x86_64", "qemu-img", "xorriso", "mkfs.vfat", "mcopy", "syslinux", "grub-mkstandalone", "cpio",
         "/usr/lib/ISOLINUX/isolinux.bin", "/usr/lib/syslinux/modules/bios/ldlinux.c32", "/usr/lib/grub/x86_64-efi",
         "/bin/busybox")  # fmt: skip
    kernels = sorted(Path("/boot").glob("vmlinuz-*"))
    if not kernels:
        need("/boot/vmlinuz (linux-image-amd64)")
    kernel = kernels[-1]
    moddir = Path("/lib/modules") / kernel.name.removeprefix("vmlinuz-")
    work = tmp_path_factory.mktemp("x86-images")
    initrd = make_initrd(work / "initrd.img", Path("/bin/busybox"), moddir if moddir.is_dir() else None, X86_MODULES)

    iso = work / "bios-iso"
    (iso / "isolinux").mkdir(parents=True)
    (iso / "boot").mkdir()
    shutil.copy(kernel, iso / "boot" / "kernel")
    shutil.copy(initrd, iso / "boot" / "initrd.img")
    shutil.copy("/usr/lib/ISOLINUX/isolinux.bin", iso / "isolinux")
    shutil.copy("/usr/lib/syslinux/modules/bios/ldlinux.c32", iso / "isolinux")
    (iso / "isolinux" / "isolinux.cfg").write_text(
        "DEFAULT linux\nLABEL linux\n  KERNEL /boot/kernel\n  INITRD /boot/initrd.img\n"
        "  APPEND console=ttyS0 lkfmt=iso-bios\n"
    )
    bios_iso = work / "linuxkit.iso"
    sh("xorriso", "-as", "mkisofs", "-quiet", "-R", "-V", "LKFMT", "-o", bios_iso, "-b", "isolinux/isolinux.bin",
       "-c", "isolinux/boot.cat", "-no-emul-boot", "-boot-load-size", "4", "-boot-info-table", iso)  # fmt: skip

    cfg = GRUB_CFG.format(kernel="/boot/kernel", initrd="/boot/initrd.img", cmdline="console=ttyS0 lkfmt=iso-efi")
    loader = grub_efi(work / "BOOTX64-iso.EFI", "x86_64-efi", cfg)
    iso_efi = efi_iso(work / "linuxkit-efi.iso", work, kernel, initrd, loader, "BOOTX64.EFI")

    syslinux_cfg = work / "syslinux.cfg"
    syslinux_cfg.write_text(
        "DEFAULT linux\nLABEL linux\n  KERNEL /kernel\n  INITRD /initrd.img\n"
        "  APPEND console=ttyS0 lkfmt=raw-bios lktest=disk\n"
    )
    bios_raw = fat_image(work / "linuxkit-bios.img", 24,
                         {"kernel": kernel, "initrd.img": initrd, "syslinux.cfg": syslinux_cfg})  # fmt: skip
    sh("syslinux", "--install", bios_raw)

    cfg = GRUB_CFG.format(kernel="/kernel", initrd="/initrd.img", cmdline="console=ttyS0 lkfmt=disk-efi lktest=disk")
    loader = grub_efi(work / "BOOTX64-disk.EFI", "x86_64-efi", cfg)
    efi_raw = fat_image(work / "linuxkit-efi.img", 24,
                        {"EFI/BOOT/BOOTX64.EFI": loader, "kernel": kernel, "initrd.img": initrd})  # fmt: skip
    return Images(kernel, initrd, bios_iso, iso_efi, bios_raw, efi_raw)


X86_TCG = HostCaps(os="linux", arch="x86_64", accel=Accel.TCG, qemu="qemu-system-x86_64")


def boot(spec: VmSpec, host: HostCaps, state: Path, *, timeout: float = 120, before_qemu: list[str] | None = None
         ) -> str:  # fmt: skip
    """Prepare the VM's files, run QEMU in the foreground (TCG) until the marker, kill it; return the console."""
    state.mkdir(parents=True, exist_ok=True)
    host = replace(host, qemu=shutil.which(host.qemu) or host.qemu)
    spec = replace(spec, daemonize=False, ssh_port=0)
    prepare_vm_files(spec, state, host)
    console = state / "console.log"
    helper = subprocess.Popen(before_qemu, cwd=state, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True) if before_qemu else None  # fmt: skip
    if helper is not None:
        sock = state / volume_mounts(spec)[0].socket
        deadline = time.monotonic() + 10
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    qemu = subprocess.Popen(qemu_argv(spec, host), cwd=state, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = console.read_text(errors="replace") if console.exists() else ""
            if MARKER in text:
                qemu.wait(timeout=10)  # the guest powers off right after the marker: let it flush its disks
                return text
            if qemu.poll() is not None:
                out = qemu.stdout.read().decode(errors="replace") if qemu.stdout else ""
                raise AssertionError(
                    f"QEMU exited {qemu.returncode} before the marker: {out}\nconsole:\n{text[-3000:]}"
                )
            time.sleep(0.1)
        raise AssertionError(f"no {MARKER} within {timeout:.0f}s; console:\n{text[-3000:]}")
    finally:
        for p in (qemu, helper):
            if p is not None and p.poll() is None:
                os.killpg(p.pid, 9)
            if p is not None:
                p.wait()
                if p.stdout is not None:
                    p.stdout.close()


def cmdline_of(console: str) -> str:
    m = re.search(rf"{MARKER} (.*)", console)
    assert m, console
    return m.group(1)


def overlay_sector_100(state: Path) -> str:
    """qemu-io's hex dump of 16 bytes at sector 100 of the overlay (printable text shows, "-" as ".")."""
    return sh("qemu-io", "-f", "qcow2", "-c", "read -v 51200 16", state / BOOT_OVERLAY)


def test_bios_iso_boots_from_the_cdrom(x86: Images, tmp_path: Path) -> None:
    console = boot(VmSpec("isobios", BootImage(ImageFormat.ISO, x86.bios_iso)), X86_TCG, tmp_path / "vm")
    assert "lkfmt=iso-bios" in cmdline_of(console)


def test_efi_iso_boots_through_ovmf(x86: Images, tmp_path: Path) -> None:
    need("/usr/share/OVMF")
    firmware = find_uefi_firmware("x86_64")
    assert firmware is not None and firmware.vars_template is not None
    code_before = sha256(firmware.code)
    spec = VmSpec("isoefi", BootImage(ImageFormat.ISO, x86.efi_iso, uefi=True), firmware=firmware)
    console = boot(spec, X86_TCG, tmp_path / "vm")
    assert "lkfmt=iso-efi" in cmdline_of(console)
    assert (tmp_path / "vm" / "efivars.fd").stat().st_size == firmware.vars_template.stat().st_size
    assert sha256(firmware.code) == code_before


@pytest.mark.parametrize("fmt", [ImageFormat.RAW, ImageFormat.QCOW2, ImageFormat.VMDK])
def test_bios_disk_boots_through_an_overlay_and_the_image_is_never_written(
    fmt: ImageFormat, x86: Images, tmp_path: Path
) -> None:
    image = x86.bios_raw
    if fmt is not ImageFormat.RAW:
        image = tmp_path / f"linuxkit.{fmt}"
        sh("qemu-img", "convert", "-f", "raw", "-O", fmt.value, x86.bios_raw, image)
    before = sha256(image)
    state = tmp_path / "vm"
    console = boot(VmSpec("disk", BootImage(fmt, image)), X86_TCG, state)
    assert "lkfmt=raw-bios" in cmdline_of(console)
    assert "LKCTL-DISK-WRITTEN" in console
    assert "guest.was.here" in overlay_sector_100(state)  # the guest's write landed in the overlay...
    assert sha256(image) == before  # ...and not in the image


def test_efi_qcow2_boots_through_ovmf_with_a_per_vm_vars_copy(x86: Images, tmp_path: Path) -> None:
    need("/usr/share/OVMF")
    image = tmp_path / "linuxkit-efi.qcow2"
    sh("qemu-img", "convert", "-f", "raw", "-O", "qcow2", x86.efi_raw, image)
    before = sha256(image)
    spec = VmSpec("diskefi", BootImage(ImageFormat.QCOW2, image, uefi=True), firmware=find_uefi_firmware("x86_64"))
    state = tmp_path / "vm"
    console = boot(spec, X86_TCG, state)
    assert "lkfmt=disk-efi" in cmdline_of(console)
    assert "guest.was.here" in overlay_sector_100(state)
    assert sha256(image) == before


def test_volumes_round_trip_files_and_the_data_disk_persists(x86: Images, tmp_path: Path) -> None:
    rw, ro = tmp_path / "share,rw", tmp_path / "share-ro"  # a comma, escaped in the argv
    rw.mkdir()
    ro.mkdir()
    (rw / "from-host.txt").write_text("hello-from-host\n")
    kernel_boot = BootImage(ImageFormat.KERNEL_INITRD, tmp_path / "x", kernel=x86.kernel, initrd=x86.initrd,
                            cmdline="console=ttyS0 lktest=volumes")  # fmt: skip
    spec = VmSpec("volumes", kernel_boot, data_disk=DataDisk(64 << 20),
                  volumes=(Volume(rw, "/mnt/rw"), Volume(ro, "/mnt/read only", readonly=True)))  # fmt: skip
    state = tmp_path / "vm"
    console = boot(spec, X86_TCG, state)
    assert "LKCTL-VOLUMES: lkvol0|9p|rw|/mnt/rw;lkvol1|9p|ro|/mnt/read only;" in console
    assert "LKCTL-HOSTFILE: hello-from-host" in console
    assert (rw / "from-guest.txt").read_text() == "written-in-guest\n"
    assert "LKCTL-RO-REFUSED" in console
    assert not (ro / "refused.txt").exists()
    assert "LKCTL-DATA: lkctl-data 131072" in console  # 64 MiB in 512-byte sectors, found by its serial
    assert "data.disk.bytes" in sh("qemu-io", "-f", "qcow2", "-c", "read -v 0 16", state / "data.qcow2")


def test_virtiofs_volume_round_trips_files(x86: Images, tmp_path: Path) -> None:
    virtiofsd = find_virtiofsd()
    if virtiofsd is None or os.geteuid() != 0:
        pytest.skip("virtiofsd (run as root) is not available")
    share = tmp_path / "share"
    share.mkdir()
    (share / "from-host.txt").write_text("hello-over-virtiofs\n")
    kernel_boot = BootImage(ImageFormat.KERNEL_INITRD, tmp_path / "x", kernel=x86.kernel, initrd=x86.initrd,
                            cmdline="console=ttyS0 lktest=virtiofs")  # fmt: skip
    spec = VmSpec("vfs", kernel_boot, memory=512, virtiofs=True, volumes=(Volume(share, "/mnt/rw"),))
    daemon = virtiofsd_argv(virtiofsd, volume_mounts(spec)[0])
    console = boot(spec, X86_TCG, tmp_path / "vm", before_qemu=daemon)
    assert "LKCTL-HOSTFILE: hello-over-virtiofs" in console
    assert (share / "from-guest.txt").read_text() == "written-in-guest\n"


# ---- aarch64 under TCG: Debian's arm64 kernel, busybox and GRUB, fetched once into the shared cache ----


@dataclass(frozen=True)
class Arm64:
    kernel: Path
    initrd: Path
    efi_iso: Path
    efi_raw: Path


def _fetch_arm64_debs(cache: Path) -> Path:
    """Extract Debian's arm64 kernel, busybox-static and grub-efi-arm64-bin into cache/root (apt-get download,
    with a private package list so the host's apt configuration is untouched)."""
    root = cache / "root"
    if (cache / ".done").exists():
        return root
    need("apt-get", "apt-cache", "dpkg-deb")
    lists, debs = cache / "lists", cache / "debs"
    for d in (lists / "partial", cache / "apt" / "archives" / "partial", debs):
        d.mkdir(parents=True, exist_ok=True)
    opts = ["-o", "APT::Architecture=arm64", "-o", "APT::Architectures::=arm64", "-o", f"Dir::State::Lists={lists}",
            "-o", f"Dir::Cache={cache / 'apt'}", "-o", "Debug::NoLocking=1"]  # fmt: skip
    try:
        sh("apt-get", *opts, "-qq", "update")
        depends = sh("apt-cache", *opts, "depends", "linux-image-arm64")
        kernel_pkg = re.search(r"Depends: (linux-image-\S+-arm64)", depends)
        assert kernel_pkg, depends
        sh("apt-get", *opts, "-qq", "download", kernel_pkg.group(1), "busybox-static", "grub-efi-arm64-bin", cwd=debs)
    except AssertionError as e:
        if IN_CI:
            raise
        pytest.skip(f"cannot fetch Debian's arm64 packages: {e}")
    for deb in debs.glob("*.deb"):
        sh("dpkg-deb", "-x", deb, root)
    # keep the kernel image, busybox and GRUB's modules (~40 MB), not 400 MB of kernel modules and the .debs
    for bulky in (root / "lib" / "modules", root / "usr" / "lib" / "modules", debs, cache / "apt"):
        shutil.rmtree(bulky, ignore_errors=True)
    (cache / ".done").touch()
    return root


@pytest.fixture(scope="module")
def arm64(shared_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Arm64:
    need("qemu-system-aarch64", "qemu-img", "xorriso", "mkfs.vfat", "mcopy", "grub-mkstandalone", "cpio",
         "/usr/share/AAVMF/AAVMF_CODE.fd")  # fmt: skip
    root = _fetch_arm64_debs(shared_cache / "arm64-debs")
    kernel = sorted((root / "boot").glob("vmlinuz-*"))[-1]
    work = tmp_path_factory.mktemp("arm64-images")
    initrd = make_initrd(work / "initrd.img", root / "bin" / "busybox")
    grub_modules = root / "usr" / "lib" / "grub" / "arm64-efi"
    cfg = GRUB_CFG.format(kernel="/boot/kernel", initrd="/boot/initrd.img", cmdline="console=ttyAMA0 lkfmt=iso-efi")
    loader = grub_efi(work / "BOOTAA64-iso.EFI", "arm64-efi", cfg, grub_modules)
    iso = efi_iso(work / "linuxkit-efi.iso", work, kernel, initrd, loader, "BOOTAA64.EFI")
    cfg = GRUB_CFG.format(kernel="/kernel", initrd="/initrd.img", cmdline="console=ttyAMA0 lkfmt=disk-efi")
    loader = grub_efi(work / "BOOTAA64-disk.EFI", "arm64-efi", cfg, grub_modules)
    raw = fat_image(work / "linuxkit-efi.img", 64,
                    {"EFI/BOOT/BOOTAA64.EFI": loader, "kernel": kernel, "initrd.img": initrd})  # fmt: skip
    return Arm64(kernel, initrd, iso, raw)


ARM_TCG = HostCaps(os="linux", arch="aarch64", accel=Accel.TCG, qemu="qemu-system-aarch64")


def test_aarch64_kernel_initrd_boots_under_tcg(arm64: Arm64, tmp_path: Path) -> None:
    kernel_boot = BootImage(ImageFormat.KERNEL_INITRD, tmp_path / "x", kernel=arm64.kernel, initrd=arm64.initrd,
                            cmdline="lkfmt=kernel")  # fmt: skip
    started = time.monotonic()
    console = boot(VmSpec("arm", kernel_boot), ARM_TCG, tmp_path / "vm", timeout=60)
    assert cmdline_of(console) == "lkfmt=kernel console=ttyAMA0"
    assert time.monotonic() - started < 60


def test_aarch64_efi_iso_boots_through_aavmf(arm64: Arm64, tmp_path: Path) -> None:
    spec = VmSpec("armiso", BootImage(ImageFormat.ISO, arm64.efi_iso), firmware=find_uefi_firmware("aarch64"))
    assert "lkfmt=iso-efi" in cmdline_of(boot(spec, ARM_TCG, tmp_path / "vm"))


def test_aarch64_qcow2_boots_through_aavmf_and_an_overlay(arm64: Arm64, tmp_path: Path) -> None:
    image = tmp_path / "linuxkit-efi.qcow2"
    sh("qemu-img", "convert", "-f", "raw", "-O", "qcow2", arm64.efi_raw, image)
    before = sha256(image)
    spec = VmSpec("armdisk", BootImage(ImageFormat.QCOW2, image), firmware=find_uefi_firmware("aarch64"))
    assert "lkfmt=disk-efi" in cmdline_of(boot(spec, ARM_TCG, tmp_path / "vm"))
    assert sha256(image) == before

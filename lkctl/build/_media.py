"""Bootable media from a kernel + initrd, with ordinary host tools, without root or loop devices.

- ISO, BIOS: isolinux loads /boot/kernel and /boot/initrd.img (xorriso, El Torito, isohybrid MBR).
- ISO, EFI: GRUB (grub-mkimage, standalone EFI binary) in a FAT El Torito image loads them from the ISO.
- disk, BIOS: MBR + one FAT partition (mkfs.fat --offset, mtools `img@@offset`) with syslinux installed into it
  by its mtools installer (`syslinux --offset`); syslinux's mbr.bin boots the active partition.
- disk, EFI: GPT + an EFI system partition holding GRUB as EFI/BOOT/BOOTX64.EFI.
- qcow2 / vmdk: the BIOS disk converted by `qemu-img convert`.

Why the kernel always boots with an initrd, never `root=/dev/sr0` as LinuxKit's ISOs do: lkctl's init is the
initramfs `/init` (it moves the root to a tmpfs so runc can pivot_root, then starts busybox init), and a
distribution kernel has the CD-ROM, AHCI, isofs and FAT drivers as modules that only the initramfs can load. The
initrd is the same file the `kernel+initrd` format makes, so every format boots the same root filesystem.

GRUB finds its medium by a marker file named after the build (`/EFI/BOOT/lkctl-<tag>`), searched by an embedded
early config, so it boots the right disk when several are attached and whether OVMF hands it the CD or the El
Torito image.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from lkctl.build._disk import gpt_layout, mbr, partition_for
from lkctl.errors import BuildError
from lkctl.proc import ProgramMissing, find_program, minimal_env, run

__all__ = ["BootFiles", "convert_disk", "disk_bios", "disk_efi", "iso_bios", "iso_efi"]

_MIB = 1 << 20
_EPOCH = "1492533000"  # LinuxKit's fixed mtime, for xorriso's reproducible volume dates
_GRUB = {
    "amd64": ("x86_64-efi", "BOOTX64.EFI", "grub-efi-amd64-bin"),
    "arm64": ("arm64-efi", "BOOTAA64.EFI", "grub-efi-arm64-bin"),
}
_GRUB_MODULES = ("part_gpt", "part_msdos", "fat", "iso9660", "search", "search_fs_file", "normal", "configfile",
                 "linux", "gzio", "echo", "test", "efi_gop")  # fmt: skip
# (Debian/Ubuntu path, other distributions' paths...), package
_FILES = {
    "isolinux.bin": (("/usr/lib/ISOLINUX/isolinux.bin", "/usr/share/syslinux/isolinux.bin"), "isolinux"),
    "isohdpfx.bin": (("/usr/lib/ISOLINUX/isohdpfx.bin", "/usr/share/syslinux/isohdpfx.bin"), "isolinux"),
    "ldlinux.c32": (
        ("/usr/lib/syslinux/modules/bios/ldlinux.c32", "/usr/share/syslinux/ldlinux.c32"),
        "syslinux-common",
    ),
    "mbr.bin": (("/usr/lib/syslinux/mbr/mbr.bin", "/usr/share/syslinux/mbr.bin"), "syslinux-common"),
}
_PROGRAM_PACKAGES = {"xorriso": "xorriso", "mkfs.fat": "dosfstools", "mmd": "mtools", "mcopy": "mtools",
                     "syslinux": "syslinux", "grub-mkimage": "grub-common", "qemu-img": "qemu-utils"}  # fmt: skip


@dataclass(frozen=True)
class BootFiles:
    """What every medium boots: the build's kernel, initrd and command line. `tag` (hex, from the build key)
    seeds the medium's identifiers: GRUB's marker file, the disk signature and GUIDs, the FAT volume id."""

    kernel: Path
    initrd: Path
    cmdline: str
    tag: str
    arch: str = "amd64"


def _file(name: str) -> Path:
    paths, package = _FILES[name]
    for p in paths:
        if os.path.isfile(p):
            return Path(p)
    raise BuildError(
        f"{name} not found (looked in {', '.join(paths)}); install it with: sudo apt-get install {package}"
    )


def _program(name: str) -> str:
    try:
        return find_program(name)
    except ProgramMissing:
        raise ProgramMissing(
            f"{name} not found on PATH; install it with: sudo apt-get install {_PROGRAM_PACKAGES.get(name, name)}"
        ) from None


def _run(argv: Sequence[str | os.PathLike[str]], what: str, env: Mapping[str, str] | None = None) -> None:
    run([os.fspath(a) for a in argv], env=minimal_env({"MTOOLS_SKIP_CHECK": "1", "SOURCE_DATE_EPOCH": _EPOCH,
                                                       **(env or {})}), what=what)  # fmt: skip


def _link(src: Path, dest: Path) -> None:
    """`dest` as a hard link to `src` (a copy across file systems): staging trees cost no copies."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dest)
    except OSError:
        shutil.copyfile(src, dest)


def _align(n: int, to: int = _MIB) -> int:
    return (n + to - 1) // to * to


def _grub_quote(cmdline: str) -> str:
    """GRUB's config language would expand `$`, eat quotes and split on `;`: quote each word literally."""
    return " ".join("'" + w.replace("'", "'\\''") + "'" for w in cmdline.split())


def _grub(boot: BootFiles, work: Path) -> tuple[Path, Path, str]:
    """(GRUB EFI binary, its grub.cfg, the marker's file name) for `boot.arch`."""
    if boot.arch not in _GRUB:
        raise BuildError(f"EFI formats support amd64 and arm64, not {boot.arch}")
    target, binary, package = _GRUB[boot.arch]
    moddir = Path("/usr/lib/grub") / target
    if not (moddir / "kernel.img").is_file():
        raise BuildError(
            f"GRUB for {target} is not installed ({moddir}); install it with: sudo apt-get install {package}"
        )
    marker = f"lkctl-{boot.tag[:16]}"
    early = work / "grub-early.cfg"
    early.write_text(
        f"search --no-floppy --file --set=root /EFI/BOOT/{marker}\nset prefix=($root)/EFI/BOOT\n", encoding="utf-8"
    )
    cfg = work / "grub.cfg"
    cfg.write_text(
        "set timeout=0\nset gfxpayload=text\n"
        f"linux /boot/kernel {_grub_quote(boot.cmdline)}\ninitrd /boot/initrd.img\nboot\n",
        encoding="utf-8",
    )
    out = work / binary
    grub_mkimage = _program("grub-mkimage")
    _run([grub_mkimage, "-d", moddir, "-O", target, "-o", out, "-p", "/EFI/BOOT", "-c", early, *_GRUB_MODULES],
         "grub-mkimage")  # fmt: skip
    return out, cfg, marker


def _syslinux_cfg(kernel: str, initrd: str, cmdline: str) -> str:
    return f"DEFAULT linux\nPROMPT 0\nLABEL linux\n  KERNEL {kernel}\n  INITRD {initrd}\n  APPEND {cmdline}\n"


def iso_bios(out: Path, boot: BootFiles, work: Path) -> None:
    """A BIOS-bootable (and isohybrid: also as a disk) ISO: isolinux loads the kernel and initrd."""
    if boot.arch != "amd64":
        raise BuildError(f"iso-bios boots x86 PCs only; the build is for {boot.arch} (use iso-efi)")
    tree = work / "iso"
    _link(boot.kernel, tree / "boot" / "kernel")
    _link(boot.initrd, tree / "boot" / "initrd.img")
    (tree / "isolinux").mkdir()
    shutil.copyfile(_file("isolinux.bin"), tree / "isolinux" / "isolinux.bin")  # xorriso patches it: a copy
    shutil.copyfile(_file("ldlinux.c32"), tree / "isolinux" / "ldlinux.c32")
    (tree / "isolinux" / "isolinux.cfg").write_text(
        _syslinux_cfg("/boot/kernel", "/boot/initrd.img", boot.cmdline), encoding="utf-8"
    )
    _run([_program("xorriso"), "-as", "mkisofs", "-quiet", "-o", out, "-R", "-J", "-V", "LinuxKit",
          "-b", "isolinux/isolinux.bin", "-c", "isolinux/boot.cat", "-no-emul-boot", "-boot-load-size", "4",
          "-boot-info-table", "-isohybrid-mbr", _file("isohdpfx.bin"), tree], "xorriso (iso-bios)")  # fmt: skip


def _fat_image(path: Path, size_kib: int, label: str) -> None:
    _run([_program("mkfs.fat"), "-C", "-n", label, path, str(size_kib)], "mkfs.fat")


def iso_efi(out: Path, boot: BootFiles, work: Path) -> None:
    """A UEFI-bootable ISO: GRUB in a FAT El Torito image; the kernel and initrd on the ISO itself."""
    loader, cfg, marker = _grub(boot, work)
    tree = work / "iso"
    _link(boot.kernel, tree / "boot" / "kernel")
    _link(boot.initrd, tree / "boot" / "initrd.img")
    _link(cfg, tree / "EFI" / "BOOT" / "grub.cfg")
    (tree / "EFI" / "BOOT" / marker).write_text(boot.tag + "\n", encoding="utf-8")
    efiboot = tree / "efiboot.img"
    _fat_image(efiboot, max(1440, _align(loader.stat().st_size + (256 << 10), 64 << 10) >> 10), "EFIBOOT")
    img = os.fspath(efiboot)
    _run([_program("mmd"), "-i", img, "::/EFI", "::/EFI/BOOT"], "mmd")
    _run([_program("mcopy"), "-i", img, loader, f"::/EFI/BOOT/{loader.name}"], "mcopy")
    _run([_program("xorriso"), "-as", "mkisofs", "-quiet", "-o", out, "-R", "-J", "-V", "LinuxKit",
          "-e", "efiboot.img", "-no-emul-boot", "-hide", "efiboot.img", "-hide", "boot.catalog", tree],
         "xorriso (iso-efi)")  # fmt: skip


def _disk_size(payload: int, size: int | None, *, gpt: bool, what: str) -> int:
    """The whole disk: 1 MiB gap + a FAT partition with room for `payload` bytes (+ GPT's backup), or `size`."""
    fat = max(16 * _MIB, _align(payload + payload // 16 + 4 * _MIB))  # mkfs.fat's FAT16 needs 9 MiB or more
    needed = _MIB + fat + (_MIB if gpt else 0)
    if size is None:
        return needed
    if size < needed:
        raise BuildError(f"{what}: --size {size // _MIB}M is too small; the image needs at least {needed // _MIB}M")
    return _align(size)


def _fat_partition(disk: Path, disk_size: int, *, gpt: bool, boot: BootFiles) -> tuple[str, int]:
    """Make the FAT file system of the disk's partition in place; returns (mtools image spec, MBR type)."""
    part = partition_for(disk_size, gpt=gpt)
    fat32 = part.size >= 512 * _MIB
    volid = boot.tag[:8]
    _run([_program("mkfs.fat"), "-F", "32" if fat32 else "16", "-n", "LINUXKIT", "-i", volid,
          "-h", str(part.start), "--offset", str(part.start), disk, str(part.size // 1024)], "mkfs.fat")  # fmt: skip
    return f"{disk}@@{part.offset}", 0x0C if fat32 else 0x0E


def _write_at(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def disk_bios(out: Path, boot: BootFiles, work: Path, size: int | None) -> None:
    """A BIOS disk: MBR (syslinux's mbr.bin) + an active FAT partition with syslinux, the kernel and initrd."""
    if boot.arch != "amd64":
        raise BuildError(f"BIOS disks boot x86 PCs only; the build is for {boot.arch} (use raw-efi)")
    payload = boot.kernel.stat().st_size + boot.initrd.stat().st_size
    disk_size = _disk_size(payload, size, gpt=False, what="raw-bios")
    with open(out, "wb") as f:
        f.truncate(disk_size)
    image, part_type = _fat_partition(out, disk_size, gpt=False, boot=boot)
    cfg = work / "syslinux.cfg"
    cfg.write_text(
        f"DEFAULT linux\nPROMPT 0\nLABEL linux\n  KERNEL /kernel\n  INITRD /initrd.img\n  APPEND {boot.cmdline}\n",
        encoding="utf-8",
    )
    mcopy = _program("mcopy")
    _run([mcopy, "-i", image, cfg, "::/syslinux.cfg"], "mcopy")
    _run([mcopy, "-i", image, boot.kernel, "::/kernel"], "mcopy")
    _run([mcopy, "-i", image, boot.initrd, "::/initrd.img"], "mcopy")
    part = partition_for(disk_size, gpt=False)
    _run([_program("syslinux"), "--offset", str(part.offset), "--install", out], "syslinux")
    code = _file("mbr.bin").read_bytes()[:440]
    _write_at(out, 0, mbr(disk_size, part, part_type=part_type, signature=int(boot.tag[:8], 16), boot_code=code))


def disk_efi(out: Path, boot: BootFiles, work: Path, size: int | None) -> None:
    """A UEFI disk: GPT + an EFI system partition with GRUB (EFI/BOOT/BOOTX64.EFI), the kernel and initrd."""
    loader, cfg, marker = _grub(boot, work)
    payload = boot.kernel.stat().st_size + boot.initrd.stat().st_size + loader.stat().st_size
    disk_size = _disk_size(payload, size, gpt=True, what="raw-efi")
    with open(out, "wb") as f:
        f.truncate(disk_size)
    part = partition_for(disk_size, gpt=True)
    seed = uuid.UUID(boot.tag[:32].ljust(32, "0"))
    layout = gpt_layout(disk_size, part, disk_guid=uuid.uuid5(seed, "disk"), part_guid=uuid.uuid5(seed, "esp"))
    _write_at(out, 0, layout.head)
    _write_at(out, layout.tail_offset, layout.tail)
    image, _ = _fat_partition(out, disk_size, gpt=True, boot=boot)
    marker_file = work / marker
    marker_file.write_text(boot.tag + "\n", encoding="utf-8")
    _run([_program("mmd"), "-i", image, "::/EFI", "::/EFI/BOOT", "::/boot"], "mmd")
    mcopy = _program("mcopy")
    _run([mcopy, "-i", image, loader, cfg, marker_file, "::/EFI/BOOT/"], "mcopy")
    _run([mcopy, "-i", image, boot.kernel, "::/boot/kernel"], "mcopy")
    _run([mcopy, "-i", image, boot.initrd, "::/boot/initrd.img"], "mcopy")


def convert_disk(raw: Path, out: Path, fmt: str) -> None:
    """`qemu-img convert` a raw disk to qcow2 or (stream-optimized, like LinuxKit's) vmdk."""
    opts = ["-o", "adapter_type=lsilogic,subformat=streamOptimized,compat6"] if fmt == "vmdk" else []
    _run([_program("qemu-img"), "convert", "-q", "-f", "raw", "-O", fmt, *opts, raw, out], f"qemu-img ({fmt})")

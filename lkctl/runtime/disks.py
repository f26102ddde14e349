"""The files behind a VM's drives: overlays, data disks, UEFI firmware and variable stores, image formats.

The argv builders only name these files; this module makes them, so that a boot never writes to an image:
- `create_overlay` puts a qcow2 overlay in the VM's state dir whose backing file is the image, opened read-only by
  QEMU with its real format (never probed, so a raw image cannot pass itself off as qcow2);
- `create_data_disk` makes the persistent `--disk SIZE` disk (sparse);
- `prepare_vm_files` makes everything a `VmSpec` needs before its hypervisor starts.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import socket
from pathlib import Path

from lkctl import proc
from lkctl.errors import ConfigError, ImageError
from lkctl.flags import parse_size
from lkctl.fsutil import atomic_write, unix_address
from lkctl.runtime.host import HostCaps
from lkctl.runtime.model import DataDisk, ImageFormat, UefiFirmware, VmSpec, VolumeMount, needs_uefi, volumes_manifest
from lkctl.runtime.qemu import BOOT_OVERLAY, UEFI_VARS, VOLUMES_FILE

__all__ = [
    "check_self_contained",
    "clone_file",
    "create_data_disk",
    "create_overlay",
    "detect_format",
    "detect_uefi",
    "find_uefi_firmware",
    "find_virtiofsd",
    "foreign_files",
    "listen_unix",
    "parse_data_disk",
    "prepare_vm_files",
    "virtiofsd_argv",
]

_EXTENSIONS = {
    ".iso": ImageFormat.ISO,
    ".qcow2": ImageFormat.QCOW2,
    ".vmdk": ImageFormat.VMDK,
    ".raw": ImageFormat.RAW,
    ".img": ImageFormat.RAW,
}
_MIN_DISK = 1 << 20


def parse_data_disk(text: str) -> DataDisk:
    """Parse `--disk SIZE` or `--disk size=SIZE[,format=qcow2|raw][,path=FILE]`."""
    if "=" not in text:
        size = parse_size(text, what="--disk", bare=None)
        fmt, path = "qcow2", None
    else:
        opts: dict[str, str] = {}
        for part in text.split(","):
            key, sep, value = part.partition("=")
            if not sep or key not in ("size", "format", "path"):
                raise ConfigError(f"--disk {text}: expected SIZE or size=SIZE[,format=qcow2|raw][,path=FILE]")
            opts[key] = value
        if "size" not in opts:
            raise ConfigError(f"--disk {text}: a size is required, e.g. size=10G")
        size, fmt = parse_size(opts["size"], what="--disk", bare=None), opts.get("format", "qcow2")
        path = Path(opts["path"]).expanduser().absolute() if opts.get("path") else None
    if fmt not in ("qcow2", "raw"):
        raise ConfigError(f"--disk {text}: format must be qcow2 or raw")
    if size < _MIN_DISK:
        raise ConfigError(f"--disk {text}: a data disk needs at least 1M")
    return DataDisk(size, fmt, path)


def detect_format(path: Path) -> ImageFormat | None:
    """Format of an image file, by content where it is recognisable and by extension otherwise.

    Content wins over the name: a `.img` that is really qcow2 boots as qcow2, and a `.qcow2` without qcow2's magic
    is not handed to QEMU as qcow2 (a raw disk with a boot signature is raw whatever its name says).
    """
    try:
        with open(path, "rb") as f:
            head = f.read(512)
            f.seek(0x8001)
            iso = f.read(5)
    except OSError:
        return None
    if head[:4] == b"QFI\xfb":
        return ImageFormat.QCOW2
    if iso == b"CD001":
        return ImageFormat.ISO
    if head[:4] == b"KDMV" or head.startswith(b"# Disk DescriptorFile"):
        return ImageFormat.VMDK
    by_name = _EXTENSIONS.get(path.suffix.lower())
    if by_name in (ImageFormat.QCOW2, ImageFormat.VMDK, ImageFormat.ISO):
        # the name promises a format whose magic is missing: trust only a disk's boot signature
        return ImageFormat.RAW if head[510:512] == b"\x55\xaa" else None
    if by_name is None and head[510:512] == b"\x55\xaa":
        return ImageFormat.RAW
    return by_name


def _el_torito_platforms(f: os.PathLike[str] | str) -> set[int]:
    """Platform ids (0 = BIOS, 0xEF = UEFI) of an ISO's El Torito boot catalog."""
    platforms: set[int] = set()
    with open(f, "rb") as fh:
        fh.seek(17 * 2048)
        brvd = fh.read(2048)
        if brvd[0:1] != b"\x00" or brvd[1:6] != b"CD001" or not brvd[7:30].startswith(b"EL TORITO"):
            return platforms
        fh.seek(int.from_bytes(brvd[0x47:0x4B], "little") * 2048)
        catalog = fh.read(2048)
    if catalog[0:1] != b"\x01":
        return platforms
    platforms.add(catalog[1])
    for off in range(64, len(catalog), 32):
        entry = catalog[off : off + 32]
        if entry[0] in (0x90, 0x91):  # section header: platform id in byte 1
            platforms.add(entry[1])
    return platforms


def detect_uefi(path: Path, fmt: ImageFormat) -> bool:
    """Whether an image must boot through UEFI: LinuxKit's `-efi` names, else an ISO with only an EFI El Torito
    entry, or a raw GPT disk without BIOS boot code."""
    stem = path.name.lower()
    if re.search(r"(^|[-_.])efi([-_.]|$)", stem):
        return True
    try:
        if fmt is ImageFormat.ISO:
            platforms = _el_torito_platforms(path)
            return 0xEF in platforms and 0 not in platforms
        if fmt is ImageFormat.RAW:
            with open(path, "rb") as f:
                head = f.read(1024)
            gpt = head[512:520] == b"EFI PART"
            bios_code = any(head[:440])
            return gpt and not bios_code
    except OSError:
        return False
    return False


def foreign_files(info: dict[str, object], image: Path) -> list[str]:
    """The other files an image's own metadata makes QEMU open (`qemu-img info --output=json` of it): a qcow2's
    backing file or external data file, a vmdk descriptor's extents."""
    found: list[str] = []
    if info.get("backing-filename"):
        found.append(str(info.get("full-backing-filename") or info["backing-filename"]))
    specific = info.get("format-specific")
    data = specific.get("data") if isinstance(specific, dict) else None
    if isinstance(data, dict):
        if data.get("data-file"):
            found.append(str(data["data-file"]))
        for extent in data.get("extents") or ():
            name = extent.get("filename") if isinstance(extent, dict) else None
            if name and Path(os.path.abspath(name)) != Path(os.path.abspath(image)):
                found.append(str(name))
    return found


def check_self_contained(base: Path, base_format: str) -> None:
    """Refuse a disk image whose metadata names other files: booted, the guest would read (and, through a backing
    chain or an extent, see) whatever host file the image's author chose, such as a private key. Images are
    booted as the self-contained files LinuxKit makes; an image from elsewhere is untrusted like the guest."""
    import json

    result = proc.run(
        [proc.find_program("qemu-img"), "info", "--output=json", "-U", "-f", base_format, os.fspath(base)],
        what=f"reading {base.name}'s header", timeout=60,
    )  # fmt: skip
    try:
        info = json.loads(result.stdout)
    except ValueError:
        raise ImageError(f"{base}: qemu-img could not describe it") from None
    others = foreign_files(info if isinstance(info, dict) else {}, base)
    if others:
        raise ImageError(
            f"{base} is not a self-contained {base_format} image: it makes QEMU open {others[0]!r} (a backing file, "
            f"data file or extent); lkctl boots only self-contained images (qemu-img convert -O {base_format} makes "
            "one)"
        )


def create_overlay(base: Path, base_format: str, overlay: Path) -> None:
    """Make `overlay` a qcow2 file backed by `base` (absolute path, explicit format): writes land in the overlay.
    `base` must be self-contained (check_self_contained)."""
    if not base.is_file():
        raise ImageError(f"image {base} does not exist")
    check_self_contained(base, base_format)
    if overlay.exists():
        raise ImageError(f"{overlay} already exists; refusing to replace a VM's disk")
    tmp = overlay.with_name(f".{overlay.name}.tmp")
    tmp.unlink(missing_ok=True)
    proc.run(
        [proc.find_program("qemu-img"), "create", "-q", "-f", "qcow2",
         "-b", os.fspath(base.absolute()), "-F", base_format, os.fspath(tmp)],
        what=f"creating an overlay over {base.name}",
    )  # fmt: skip
    os.replace(tmp, overlay)


def create_data_disk(path: Path, size: int, fmt: str = "qcow2") -> None:
    """Make an empty `size`-byte data disk (qcow2 through qemu-img, raw as a sparse file). Never overwrites."""
    if path.exists():
        raise ImageError(f"{path} already exists; refusing to replace a data disk")
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    if fmt == "raw":
        with open(tmp, "wb") as f:
            f.truncate(size)
    elif fmt == "qcow2":
        proc.run(
            [proc.find_program("qemu-img"), "create", "-q", "-f", "qcow2", os.fspath(tmp), str(size)],
            what="creating the data disk",
        )
    else:
        raise ConfigError(f"data disk format {fmt!r}: use qcow2 or raw")
    os.replace(tmp, path)


def clone_file(src: Path, dest: Path) -> None:
    """Copy `src` to `dest` as a copy-on-write clone where the file system can (APFS, btrfs, XFS), sparse otherwise.

    Hyperkit has no overlays: its private copy of a raw image is a clone, instant and free on APFS.
    """
    tmp = dest.with_name(f".{dest.name}.tmp")
    tmp.unlink(missing_ok=True)
    flag = "-c" if platform.system() == "Darwin" else "--reflink=auto"
    result = proc.run(["cp", flag, os.fspath(src), os.fspath(tmp)], check=False)
    if result.returncode != 0:
        _sparse_copy(src, tmp)
    os.replace(tmp, dest)


def _sparse_copy(src: Path, dest: Path, chunk: int = 1 << 20) -> None:
    """Copy without writing all-zero chunks (a 64 MiB AAVMF variable store is all zeros)."""
    size = src.stat().st_size
    with open(src, "rb") as fin, open(dest, "wb") as fout:
        while data := fin.read(chunk):
            if data.count(0) == len(data):
                fout.seek(len(data), os.SEEK_CUR)
            else:
                fout.write(data)
        fout.truncate(size)


# (code, vars) pairs in order of preference; vars None = a combined image loaded with -bios.
_FIRMWARE: dict[str, list[tuple[str, str | None]]] = {
    "x86_64": [
        ("/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_VARS_4M.fd"),  # Debian/Ubuntu
        ("/usr/share/OVMF/OVMF_CODE.fd", "/usr/share/OVMF/OVMF_VARS.fd"),
        ("/usr/share/edk2/ovmf/OVMF_CODE.fd", "/usr/share/edk2/ovmf/OVMF_VARS.fd"),  # Fedora
        ("/usr/share/edk2/x64/OVMF_CODE.4m.fd", "/usr/share/edk2/x64/OVMF_VARS.4m.fd"),  # Arch
        ("/opt/homebrew/share/qemu/edk2-x86_64-code.fd", "/opt/homebrew/share/qemu/edk2-i386-vars.fd"),
        ("/usr/local/share/qemu/edk2-x86_64-code.fd", "/usr/local/share/qemu/edk2-i386-vars.fd"),
        ("/usr/share/qemu/edk2-x86_64-code.fd", "/usr/share/qemu/edk2-i386-vars.fd"),
        ("/usr/share/ovmf/OVMF.fd", None),
        ("/usr/share/qemu/OVMF.fd", None),
    ],
    "aarch64": [
        ("/usr/share/AAVMF/AAVMF_CODE.fd", "/usr/share/AAVMF/AAVMF_VARS.fd"),  # Debian/Ubuntu
        ("/usr/share/edk2/aarch64/QEMU_EFI-pflash.raw", "/usr/share/edk2/aarch64/vars-template-pflash.raw"),
        ("/opt/homebrew/share/qemu/edk2-aarch64-code.fd", "/opt/homebrew/share/qemu/edk2-arm-vars.fd"),
        ("/usr/local/share/qemu/edk2-aarch64-code.fd", "/usr/local/share/qemu/edk2-arm-vars.fd"),
        ("/usr/share/qemu/edk2-aarch64-code.fd", "/usr/share/qemu/edk2-arm-vars.fd"),
        ("/usr/share/qemu-efi-aarch64/QEMU_EFI.fd", None),
    ],
}


def find_uefi_firmware(arch: str, *, root: Path = Path("/")) -> UefiFirmware | None:
    """The first installed UEFI firmware for `arch` (Debian OVMF/AAVMF, Fedora, Arch, Homebrew's edk2)."""
    for code, vars_ in _FIRMWARE.get(arch, []):
        code_path = root / code.lstrip("/")
        vars_path = root / vars_.lstrip("/") if vars_ else None
        if code_path.is_file() and (vars_path is None or vars_path.is_file()):
            return UefiFirmware(code_path, vars_path)
    return None


def find_virtiofsd() -> str | None:
    """virtiofsd's path: on PATH, or where Debian (/usr/lib/qemu) and Fedora (/usr/libexec) install it."""
    found = shutil.which("virtiofsd")
    if found:
        return found
    for candidate in ("/usr/libexec/virtiofsd", "/usr/lib/qemu/virtiofsd", "/usr/lib/virtiofsd"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def virtiofsd_argv(binary: str, mount: VolumeMount, listen_fd: int | str | None = None) -> list[str]:
    """The daemon serving one virtiofs volume (options both the C and the Rust virtiofsd accept), run in the
    state dir. Start it before QEMU: QEMU connects to the socket at startup. With `listen_fd` it serves a socket
    already listening there (`--fd`): the C virtiofsd locks a host-wide pid file named after --socket-path, so two
    VMs' `virtiofs-lkvol0.sock` collide, and --fd takes no lock."""
    if mount.fstype != "virtiofs":
        raise ConfigError(f"volume {mount.volume} is shared with {mount.fstype}, not virtiofs")
    where = f"--fd={listen_fd}" if listen_fd is not None else f"--socket-path={mount.socket}"
    # -o values are comma-separated (FUSE option syntax): a comma or backslash in the path is backslash-escaped
    source = os.fspath(mount.volume.host).replace("\\", "\\\\").replace(",", "\\,")
    return [binary, where, "-o", f"source={source}", "-o", "cache=auto"]


def listen_unix(path: Path) -> socket.socket:
    """A listening AF_UNIX socket at `path` (replacing a stale one), inheritable: what virtiofsd `--fd` serves."""
    path.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with unix_address(path) as address:
            sock.bind(address)
        sock.listen(1)
    except BaseException:
        sock.close()
        raise
    return sock


def prepare_vm_files(spec: VmSpec, state_dir: Path, host: HostCaps, *, hypervisor: str = "qemu") -> None:
    """Create what `spec`'s argv names in `state_dir` and is not there yet: the boot overlay (or hyperkit's clone),
    the data disk, the UEFI variable store, the volume list. An existing overlay or data disk is kept: restarting a
    VM keeps its writes."""
    base = spec.boot.overlay_base
    if hypervisor == "hyperkit":
        from lkctl.runtime.hyperkit import HYPERKIT_BOOT_DISK, guest_files_iso

        if base is not None and spec.boot.format is ImageFormat.RAW and not (state_dir / HYPERKIT_BOOT_DISK).exists():
            clone_file(base[0], state_dir / HYPERKIT_BOOT_DISK)
        if spec.guest_files:
            guest_files_iso(spec.guest_files, state_dir)
    elif base is not None and not (state_dir / BOOT_OVERLAY).exists():
        create_overlay(base[0], base[1], state_dir / BOOT_OVERLAY)
    if spec.data_disk is not None:
        disk = spec.data_disk.file if spec.data_disk.file.is_absolute() else state_dir / spec.data_disk.file
        if not disk.exists():
            create_data_disk(disk, spec.data_disk.size, spec.data_disk.format)
    fw = spec.firmware
    uefi = hypervisor == "qemu" and needs_uefi(spec, host.arch)
    if uefi and fw is not None and fw.vars_template is not None and not (state_dir / UEFI_VARS).exists():
        tmp = state_dir / f".{UEFI_VARS}.tmp"
        _sparse_copy(fw.vars_template, tmp)
        os.replace(tmp, state_dir / UEFI_VARS)
    if spec.volumes:
        atomic_write(state_dir / VOLUMES_FILE, volumes_manifest(spec), 0o600)

"""Output formats: what each is called, which part it is made from, and how.

Every format is made from a build's parts (`_parts`): `tar` is the rootfs tar; all others start from the kernel,
command line and initrd. File names are LinuxKit's, so tools that know `linuxkit build` output find them.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

from lkctl.build import _media
from lkctl.build._formats import FORMATS, Format
from lkctl.build._parts import Parts
from lkctl.errors import BuildError

__all__ = ["FORMATS", "Format", "write_format"]


def _link(src: Path, dest: Path) -> None:
    """Publish a part as an output without copying it (parts are only ever replaced, never rewritten)."""
    try:
        os.link(src, dest)
    except OSError:
        shutil.copyfile(src, dest)


def write_format(
    fmt: Format, parts: Parts, outs: tuple[Path, ...], *, work: Path, size: int | None, tag: str, arch: str
) -> None:
    """Write `fmt`'s files to `outs` (fresh paths, in the order of `fmt.suffixes`); `work` is scratch space."""
    if fmt.kind == "tar":
        _link(parts.tar, outs[0])
        return
    if fmt.name == "kernel+initrd":
        _link(parts.kernel, outs[0])
        _link(parts.initrd, outs[1])
        outs[2].write_text(parts.cmdline, encoding="utf-8")
        return
    boot = _media.BootFiles(parts.kernel, parts.initrd, parts.cmdline, tag, arch)
    work.mkdir(parents=True, exist_ok=True)
    size = size if size is not None else fmt.default_size
    writers: dict[str, Callable[[], None]] = {
        "iso-bios": lambda: _media.iso_bios(outs[0], boot, work),
        "iso-efi": lambda: _media.iso_efi(outs[0], boot, work),
        "raw-bios": lambda: _media.disk_bios(outs[0], boot, work, size),
        "raw-efi": lambda: _media.disk_efi(outs[0], boot, work, size),
    }
    if fmt.name in writers:
        writers[fmt.name]()
    elif fmt.name in ("qcow2-bios", "vmdk"):
        raw = work / "disk.raw"
        _media.disk_bios(raw, boot, work, size)
        _media.convert_disk(raw, outs[0], "qcow2" if fmt.name == "qcow2-bios" else "vmdk")
    else:
        raise BuildError(f"format {fmt.name} has no writer")

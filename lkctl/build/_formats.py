"""The output formats a build writes and their file names: a table read before anything is built (an unchanged
build never imports the writers)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEFAULT_LEVEL", "FORMATS", "Format"]

# The gzip level of initrds. Measured on a 396 MB kernel-modules tree, 2 cores (time with this writer / size):
# level 1 3.3 s / 117 MB, 4 4.4 s / 109 MB, 5 5.4 s / 106 MB, 6 8.8 s / 105 MB; `find | cpio -o -H newc | gzip`
# (level 6, one core) 19 s / 105 MB. Level 4 halves the build for 4% more bytes. The compressed initrd only
# exists until the kernel has unpacked it (inflate speed hardly depends on the level), so those bytes cost
# almost nothing.
DEFAULT_LEVEL = 4

_MIB = 1 << 20


@dataclass(frozen=True)
class Format:
    name: str
    kind: str  # the part it is made from: "initrd" or "tar"
    suffixes: tuple[str, ...]  # output files: <name><suffix>
    sized: bool = False  # --size applies
    default_size: int | None = None  # bytes; None: as small as the contents allow

    def files(self, name: str) -> tuple[str, ...]:
        return tuple(name + s for s in self.suffixes)


FORMATS: dict[str, Format] = {
    f.name: f
    for f in (
        Format("kernel+initrd", "initrd", ("-kernel", "-initrd.img", "-cmdline")),
        Format("tar", "tar", (".tar",)),
        Format("iso-bios", "initrd", (".iso",)),
        Format("iso-efi", "initrd", ("-efi.iso",)),
        Format("raw-bios", "initrd", ("-bios.img",), sized=True),
        Format("raw-efi", "initrd", ("-efi.img",), sized=True),
        Format("qcow2-bios", "initrd", (".qcow2",), sized=True, default_size=1024 * _MIB),
        Format("vmdk", "initrd", (".vmdk",), sized=True, default_size=1024 * _MIB),
    )
}

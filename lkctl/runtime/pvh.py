"""Boot x86 kernels through PVH: hand QEMU the uncompressed ELF vmlinux instead of the bzImage.

Distribution kernels compress their payload with xz; under TCG, the kernel decompressing itself (plus the
firmware path for a bzImage) costs 4-5 s before its first line. With PVH (CONFIG_PVH, which Debian and most
distributions enable), QEMU enters the uncompressed kernel directly: a measured 2x faster boot to init's ready
line here. The vmlinux is extracted once per kernel (by content) into lkctl's cache; a kernel without the PVH
entry note keeps booting as a bzImage.
"""

from __future__ import annotations

import hashlib
import logging
import struct
from pathlib import Path

from lkctl import paths
from lkctl.errors import BuildError
from lkctl.fsutil import atomic_write

__all__ = ["has_pvh_entry", "pvh_kernel"]

log = logging.getLogger("lkctl.runtime.pvh")

_PT_NOTE = 4
_XEN_ELFNOTE_PHYS32_ENTRY = 18


def has_pvh_entry(elf: bytes) -> bool:
    """True if `elf` is a 64-bit ELF kernel carrying Xen's PHYS32_ENTRY note (what QEMU's PVH loader needs)."""
    if len(elf) < 64 or elf[:4] != b"\x7fELF" or elf[4] != 2 or elf[5] != 1:
        return False
    phoff = struct.unpack_from("<Q", elf, 0x20)[0]
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    for i in range(phnum):
        base = phoff + i * phentsize
        if base + 56 > len(elf):
            return False
        p_type = struct.unpack_from("<I", elf, base)[0]
        if p_type != _PT_NOTE:
            continue
        offset = struct.unpack_from("<Q", elf, base + 8)[0]
        size = struct.unpack_from("<Q", elf, base + 32)[0]
        pos, end = offset, min(offset + size, len(elf))
        while pos + 12 <= end:
            namesz, descsz, ntype = struct.unpack_from("<III", elf, pos)
            name = elf[pos + 12 : pos + 12 + namesz].rstrip(b"\0")
            if name == b"Xen" and ntype == _XEN_ELFNOTE_PHYS32_ENTRY:
                return True
            pos += 12 + (namesz + 3) // 4 * 4 + (descsz + 3) // 4 * 4
    return False


def pvh_kernel(kernel: Path) -> Path | None:
    """The cached uncompressed vmlinux for `kernel` if it can boot through PVH, else None."""
    data = kernel.read_bytes()
    if data[:4] == b"\x7fELF":
        return kernel if has_pvh_entry(data) else None
    digest = hashlib.sha256(data).hexdigest()[:32]
    cache = paths.cache_dir() / "kernels"
    vmlinux, refused = cache / f"{digest}.vmlinux", cache / f"{digest}.no-pvh"
    if vmlinux.is_file():
        return vmlinux
    if refused.exists():
        return None
    from lkctl.build import decompress_kernel

    try:
        elf = decompress_kernel(data)
    except BuildError as e:
        log.debug("kernel %s: not decompressed for a PVH boot (%s); QEMU boots it as it is", kernel, e)
        elf = b""
    if not has_pvh_entry(elf):
        log.debug("kernel %s: no PVH entry point; QEMU boots it as it is (remembered in %s)", kernel, refused)
        atomic_write(refused, b"")
        return None
    atomic_write(vmlinux, elf, mode=0o644)
    return vmlinux

"""What a VM booted, as a digest: sha256 over its boot files, remembered per file identity in lkctl's cache."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from lkctl.fsutil import atomic_write
from lkctl.paths import cache_dir
from lkctl.runtime.model import BootImage

__all__ = ["boot_digest", "file_digest"]

log = logging.getLogger("lkctl.runtime")


def file_digest(paths: Sequence[Path]) -> str:
    """sha256 over the files that make up a boot image (kernel then initrd, or the one image file).

    Disk images run to gigabytes and are booted again and again: the digest is remembered in lkctl's cache,
    keyed by each file's path, size, mtime and inode, so only a changed file is read again.
    """
    stats = [os.stat(p) for p in paths]
    key = hashlib.sha256(
        "|".join(
            f"{os.path.abspath(p)}:{st.st_size}:{st.st_mtime_ns}:{st.st_ino}"
            for p, st in zip(paths, stats, strict=True)
        ).encode()
    ).hexdigest()[:32]
    memo = cache_dir() / "digests" / key
    with contextlib.suppress(OSError):
        return memo.read_text().strip()
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    digest = "sha256:" + h.hexdigest()
    with contextlib.suppress(OSError):
        atomic_write(memo, digest)
    return digest


def boot_digest(boot: BootImage) -> str:
    """file_digest of what `boot` boots (kernel+initrd, or the image file); "" when a file cannot be read."""
    files = [boot.kernel, boot.initrd] if boot.kernel and boot.initrd else [boot.path]
    try:
        return file_digest([f for f in files if f is not None])
    except OSError as e:
        log.debug("no digest for %s: %s", boot.path, e)
        return ""

"""Build LinuxKit images natively: YAML → entry stream → output files, with no Docker and no `linuxkit`.

Pipeline: `spec` (parse) → resolve images in the local OCI store, pulling what is missing → `_assemble` (kernel,
init, volumes, bundles, files → one stream of `Entry`) → parts (`_parts`: kernel + initrd, rootfs tar) → one
writer per output format (`_output`). Caching works at three levels: a build's receipt (`receipt`) answers an
unchanged `image.build` before the spec is even parsed; a format whose inputs and outputs are unchanged is not
rewritten (`_image`: an unchanged build returns at once); and when only the YAML's `files` changed the parts
keep everything the images gave and only the files section is written again.

This package's top is light (the result and option types, the format table): everything else is imported on
first use, so the receipt check pays for none of it.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lkctl import CallableBuildPackage
from lkctl.build._formats import DEFAULT_LEVEL
from lkctl.build._formats import FORMATS as _FORMATS

if TYPE_CHECKING:
    from lkctl.build._assemble import assemble
    from lkctl.build._bookkeeping import build_paths, prune_builds
    from lkctl.build._entry import Entry, EntryKind
    from lkctl.build._image import build_image, build_key, check_request, resolve_images
    from lkctl.build._kernel import decompress_kernel
    from lkctl.build._tar import TarWriter
    from lkctl.build.spec import Spec, load_spec, merge_specs, parse_spec
    from lkctl.flags import parse_size
    from lkctl.runtime.model import BootImage

__all__ = [
    "BUILDER_VERSION",
    "FORMATS",
    "PULL_POLICIES",
    "BuildOptions",
    "BuildResult",
    "Entry",
    "EntryKind",
    "Spec",
    "TarWriter",
    "assemble",
    "build_image",
    "build_key",
    "build_paths",
    "check_request",
    "decompress_kernel",
    "host_arch",
    "load_spec",
    "merge_specs",
    "parse_size",
    "parse_spec",
    "prune_builds",
    "resolve_images",
]

# Imported on first use: an unchanged build only reads its receipt (or the spec, the image store and the stamp),
# and must not pay for the parser's, assembler's, parts' and formats' imports.
_LAZY = {
    "assemble": "lkctl.build._assemble",
    "build_paths": "lkctl.build._bookkeeping",
    "prune_builds": "lkctl.build._bookkeeping",
    "Entry": "lkctl.build._entry",
    "EntryKind": "lkctl.build._entry",
    "build_image": "lkctl.build._image",
    "build_key": "lkctl.build._image",
    "check_request": "lkctl.build._image",
    "resolve_images": "lkctl.build._image",
    "decompress_kernel": "lkctl.build._kernel",
    "TarWriter": "lkctl.build._tar",
    "Spec": "lkctl.build.spec",
    "load_spec": "lkctl.build.spec",
    "merge_specs": "lkctl.build.spec",
    "parse_spec": "lkctl.build.spec",
    "parse_size": "lkctl.flags",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


# Bump when the bytes a build writes change for the same inputs, so old cache entries stop matching.
BUILDER_VERSION = "3"
FORMATS = tuple(_FORMATS)
PULL_POLICIES = ("missing", "always", "never")


@dataclass(frozen=True)
class BuildResult:
    """What a build made. `kernel`/`initrd`/`cmdline` are the `kernel+initrd` files (when that format was asked
    for); `outputs` lists every format's files. `assembled` says how much of the image was put together again:
    "none" (parts reused), "files" (only the YAML's files section) or "all"."""

    kernel: Path
    initrd: Path
    cmdline: Path
    cmdline_text: str
    key: str
    cached: bool
    outputs: Mapping[str, tuple[Path, ...]] = field(default_factory=dict)
    assembled: str = "none"
    built: tuple[str, ...] = ()  # formats written by this call
    format_keys: Mapping[str, str] = field(default_factory=dict)  # format → the key its stamp entry holds
    image_refs: tuple[str, ...] = ()  # the spec's image references, as written
    receipt: bool = False  # answered from the build's receipt (lkctl.build.receipt), nothing else read
    # the host files its `files` section reads (`source:`), as the build opens them: (path, sha256 or "missing")
    sources: tuple[tuple[str, str], ...] = ()

    @property
    def prefix(self) -> Path:
        """The LinuxKit prefix of the kernel+initrd files (`<prefix>-kernel`, `<prefix>-initrd.img`)."""
        return self.kernel.with_name(self.kernel.name.removesuffix("-kernel"))

    def boot_image(self) -> BootImage:
        """What a VM boots from this build's kernel+initrd (the hand-off from the build stage to the runtime)."""
        from lkctl.runtime.model import BootImage, ImageFormat

        return BootImage(
            ImageFormat.KERNEL_INITRD,
            self.prefix,
            kernel=self.kernel,
            initrd=self.initrd,
            cmdline=self.cmdline_text.strip(),
        )


@dataclass(frozen=True)
class BuildOptions:
    """How to build, beyond what (the spec) and where (name, output directory): `build_image`'s knobs.

    `size` is bytes or text such as "2G" (raw/qcow2/vmdk disks); `arch` an OCI or kernel name (default: this
    host); `pull` one of PULL_POLICIES. The defaults are what `--image` builds."""

    formats: tuple[str, ...] = ("kernel+initrd",)
    arch: str | None = None
    level: int = DEFAULT_LEVEL
    threads: int | None = None
    size: int | str | None = None
    decompress_kernel: bool = False
    pull: str = "missing"


def host_arch() -> str:
    """The OCI architecture name of this machine (amd64, arm64, ...)."""
    from lkctl.arch import oci_arch

    return oci_arch()


# `lkctl.build(...)` is the facade's build; see lkctl.CallableBuildPackage.
sys.modules[__name__].__class__ = CallableBuildPackage

"""What `--image` names, and building LinuxKit YAML into bootable images.

`--image` resolves in this order: a path (an image file, a LinuxKit `<prefix>` with `<prefix>-kernel` and
`<prefix>-initrd.img`, or a LinuxKit YAML file to build); an installed image name; a template name (rendered and
built on demand, cached by content so an unchanged rebuild is instant).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from lkctl import paths
from lkctl.errors import ImageError, StateError
from lkctl.oci.layout import Store
from lkctl.runtime.disks import detect_format
from lkctl.runtime.qemu import BootImage, ImageFormat
from lkctl.templates import Template, find_template, list_templates, render_template

if TYPE_CHECKING:
    from lkctl.build import BuildResult
    from lkctl.build.spec import Spec

__all__ = [
    "ImageInfo",
    "ResolvedImage",
    "build_spec_files",
    "build_template",
    "detect_format",
    "installed_dir",
    "list_images",
    "resolve_image",
    "store",
]


@dataclass(frozen=True)
class ResolvedImage:
    boot: BootImage
    label: str  # what `vm.ps` shows in its IMAGE column
    built: bool = False  # True if this call (re)built it


@dataclass(frozen=True)
class ImageInfo:
    name: str
    kind: str  # oci | installed | built
    detail: str


def store() -> Store:
    return Store(paths.oci_store_dir())


def installed_dir() -> Path:
    return paths.data_dir() / "images"


def _ensure_base(ref: str) -> None:
    from lkctl.baseimages import ensure_base_image

    ensure_base_image(ref, store())


def _refresh_bases(spec: Spec) -> None:
    """Rebuild lkctl's own base images the spec uses if their recipe or host packages changed (a no-op in ~0.1 s
    when they are current), so a changed recipe or a kernel upgrade never boots a stale image."""
    from lkctl.baseimages import ensure_base_image, is_base_image

    st = store()
    for ref in spec.image_refs():
        if is_base_image(ref):
            ensure_base_image(ref, st)


def _kernel_initrd(prefix: Path, label: str) -> BootImage:
    kernel = Path(f"{prefix}-kernel")
    initrd = Path(f"{prefix}-initrd.img")
    cmdline_file = Path(f"{prefix}-cmdline")
    if not initrd.is_file():
        raise ImageError(f"{label}: found {kernel} but not {initrd}; a kernel+initrd image needs both")
    cmdline = cmdline_file.read_text().strip() if cmdline_file.is_file() else ""
    return BootImage(ImageFormat.KERNEL_INITRD, prefix, kernel=kernel, initrd=initrd, cmdline=cmdline)


def _from_path(text: str) -> ResolvedImage | None:
    path = Path(text).expanduser()
    if path.suffix in (".yml", ".yaml") and path.is_file():
        result = build_spec_files([path], name=path.stem)
        return ResolvedImage(_kernel_initrd(_prefix(result), str(path)), str(path), built=not result.cached)
    if Path(f"{path}-kernel").is_file():
        return ResolvedImage(_kernel_initrd(path, text), str(path))
    if path.is_file():
        if path.name.endswith("-kernel"):
            prefix = Path(str(path)[: -len("-kernel")])
            return ResolvedImage(_kernel_initrd(prefix, text), str(prefix))
        fmt = detect_format(path)
        if fmt is None:
            raise ImageError(f"{path}: unknown image format (expected .iso, .qcow2, .vmdk, .raw/.img or kernel+initrd)")
        return ResolvedImage(BootImage(fmt, path.resolve()), str(path))
    if "/" in text or text.startswith("."):
        raise ImageError(f"image file {text} does not exist")
    return None


def _prefix(result: BuildResult) -> Path:
    return Path(str(result.kernel)[: -len("-kernel")])


def _installed(name: str) -> ResolvedImage | None:
    if not name or name.startswith(".") or "/" in name:
        return None  # .downloads, .locks and temp dirs are lkctl's bookkeeping, not images
    d = installed_dir() / name
    if not d.is_dir():
        return None
    if Path(f"{d / name}-kernel").is_file():
        return ResolvedImage(_kernel_initrd(d / name, name), name)
    from lkctl.installed import MANIFEST_NAME, read_installed

    pulled = None
    with contextlib.suppress(ImageError, StateError):
        pulled = read_installed(name)
    candidates = [d / f for f in pulled.files] if pulled else sorted(d.iterdir())
    for f in candidates:
        fmt = detect_format(f) if f.is_file() and f.name != MANIFEST_NAME else None
        if fmt is not None:
            return ResolvedImage(BootImage(fmt, f), name)
    return None


def build_spec_files(files: Sequence[Path], *, name: str, out_dir: Path | None = None) -> BuildResult:
    """Build LinuxKit YAML files (merged in order) into kernel+initrd; cached by content."""
    from lkctl.build import build_image
    from lkctl.build.spec import load_spec

    spec = load_spec(list(files))
    _refresh_bases(spec)
    return build_image(
        spec,
        name=name,
        out_dir=out_dir or paths.cache_dir() / "builds" / name,
        store=store(),
        ensure_image=_ensure_base,
    )


def build_template(
    template: Template, variables: dict[str, str] | None = None, *, out_dir: Path | None = None
) -> BuildResult:
    """Render `template` with `variables` and build it (cached by content)."""
    from lkctl.build import build_image
    from lkctl.build.spec import parse_spec

    text = render_template(template, variables or {})
    spec = parse_spec(text, str(template.path))
    _refresh_bases(spec)
    out = out_dir or paths.cache_dir() / "builds" / f"template-{template.name}"
    return build_image(spec, name=template.name, out_dir=out, store=store(), ensure_image=_ensure_base)


def resolve_image(text: str, variables: dict[str, str] | None = None) -> ResolvedImage:
    """What `--image TEXT` means: a path, then an installed image, then a template (built on demand)."""
    if not text:
        raise ImageError("no image given: use --image NAME (a template such as minimal, an installed image or a file)")
    from_path = _from_path(text)
    if from_path is not None:
        return from_path
    installed = _installed(text)
    if installed is not None:
        return installed
    template = find_template(text)
    if template is not None:
        result = build_template(template, variables)
        return ResolvedImage(_kernel_initrd(_prefix(result), text), text, built=not result.cached)
    known = sorted({t.name for t in list_templates()} | {i.name for i in list_images() if i.kind == "installed"})
    raise ImageError(
        f"unknown image {text!r}: not a file, an installed image or a template "
        f"(available: {', '.join(known) or 'none'})"
    )


def list_images() -> list[ImageInfo]:
    """Images lkctl knows: installed images and OCI images in the local store."""
    from lkctl.installed import read_installed
    from lkctl.progress import format_size

    out: list[ImageInfo] = []
    root = installed_dir()
    if root.is_dir():
        for d in sorted(root.iterdir()):
            if d.is_dir() and not d.name.startswith("."):
                detail = ""
                try:
                    pulled = read_installed(d.name)
                except (ImageError, StateError):
                    detail = "(unreadable manifest)"
                else:
                    if pulled is not None:
                        detail = f"{pulled.version} from {pulled.source or '?'}, {format_size(pulled.size)}"
                out.append(ImageInfo(d.name, "installed", detail))
    st = store()
    if (st.root / "index.json").is_file():
        for ref, desc in st.refs():
            out.append(ImageInfo(ref, "oci", desc.digest))
    return out

"""Build LinuxKit images natively: YAML → entry stream → output files, with no Docker and no `linuxkit`.

Pipeline: `spec` (parse) → resolve images in the local OCI store → `_assemble` (sources: kernel, images,
bundles, files → one stream of `Entry`) → a sink per output format (`initrd` now). A build is cached: its key
covers the normalised spec, the resolved manifest digests, the `files` sources and the builder version, and a
hit returns without writing anything.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import platform
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lkctl.build._assemble import assemble, file_source_path
from lkctl.build._entry import Entry, EntryKind
from lkctl.build._output import SINKS, OutputPaths
from lkctl.build.initrd import DEFAULT_LEVEL
from lkctl.build.spec import Spec, load_spec, merge_specs, parse_spec
from lkctl.errors import BuildError, ConfigError, ImageError
from lkctl.fsutil import atomic_write, file_lock
from lkctl.oci.layout import Image, Store
from lkctl.oci.reference import parse_reference

__all__ = [
    "BUILDER_VERSION",
    "FORMATS",
    "BuildResult",
    "Entry",
    "EntryKind",
    "Spec",
    "build_image",
    "build_key",
    "host_arch",
    "load_spec",
    "merge_specs",
    "parse_spec",
    "resolve_images",
]

log = logging.getLogger("lkctl.build")

# Bump when the bytes a build writes change for the same inputs, so old cache entries stop matching.
BUILDER_VERSION = "1"
FORMATS = tuple(SINKS)
_ARCHES = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64", "riscv64": "riscv64"}


@dataclass(frozen=True)
class BuildResult:
    """Where a `kernel+initrd` build put its files, and whether it was served from the cache."""

    kernel: Path
    initrd: Path
    cmdline: Path
    cmdline_text: str
    key: str
    cached: bool


def host_arch() -> str:
    """The OCI architecture name of this machine (amd64, arm64, ...)."""
    machine = platform.machine().lower()
    return _ARCHES.get(machine, machine)


def _missing_message(ref: str, store: Store) -> str:
    return (
        f"image {ref} is not in the local image store {store.root}; pull it with `lkctl image.pull {ref}` "
        f"(or `linuxkit cache pull {ref}` with LINUXKIT_CACHE={store.root})"
    )


def resolve_images(
    spec: Spec, store: Store, *, ensure_image: Callable[[str], None] | None = None, arch: str | None = None
) -> dict[str, Image]:
    """Each image reference in `spec` (as written) → its single-platform image in `store`.

    `ensure_image(ref)` is called first for a reference the store lacks (it may make or pull it)."""
    arch = arch or host_arch()
    out: dict[str, Image] = {}
    for ref in spec.image_refs():
        if store.lookup(ref) is None:
            if ensure_image is not None:
                ensure_image(ref)
            if store.lookup(ref) is None:
                raise ImageError(_missing_message(str(parse_reference(ref)), store))
        out[ref] = store.resolve(ref, arch=arch)
    return out


def _sources_fingerprint(spec: Spec) -> list[Any]:
    """What the `files` sources hold now: content hash, size and mtime (or "missing")."""
    out: list[Any] = []
    for f in spec.files:
        if not f.source or f.directory or f.symlink:
            continue
        path = file_source_path(f)
        try:
            st = os.stat(path)
            h = hashlib.sha256()
            with open(path, "rb") as fh:
                while chunk := fh.read(1 << 20):
                    h.update(chunk)
            out.append([path, st.st_size, st.st_mtime_ns, h.hexdigest()])
        except OSError:
            out.append([path, "missing"])
    return out


def build_key(spec: Spec, images: Mapping[str, Image], *, formats: Sequence[str], level: int, arch: str) -> str:
    """sha256 over everything a build's output depends on."""
    doc = {
        "builder": BUILDER_VERSION,
        "formats": list(formats),
        "level": level,
        "arch": arch,
        "spec": spec.normalized(),
        "images": {str(parse_reference(ref)): img.manifest_digest for ref, img in images.items()},
        "sources": _sources_fingerprint(spec),
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _stamp_path(out_dir: Path, name: str) -> Path:
    return out_dir / f".{name}.lkctl-build.json"


def _file_state(paths: Sequence[Path]) -> dict[str, list[int]] | None:
    state = {}
    for p in paths:
        try:
            st = p.stat()
        except OSError:
            return None
        state[p.name] = [st.st_size, st.st_mtime_ns]
    return state


def _cache_hit(stamp: Path, key: str, paths: Sequence[Path]) -> bool:
    try:
        recorded = json.loads(stamp.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(recorded, dict) and recorded.get("key") == key and recorded.get("outputs") == _file_state(paths)


def build_image(
    spec: Spec,
    *,
    name: str,
    out_dir: Path,
    store: Store,
    ensure_image: Callable[[str], None] | None = None,
    formats: Sequence[str] = ("kernel+initrd",),
    arch: str | None = None,
    level: int = DEFAULT_LEVEL,
    threads: int | None = None,
) -> BuildResult:
    """Build `spec` into `<out_dir>/<name>-kernel`, `-initrd.img` and `-cmdline` (LinuxKit's names).

    Images come from `store` only; a build whose inputs have not changed returns at once (cached=True).
    """
    formats = list(dict.fromkeys(formats))
    unknown = [f for f in formats if f not in SINKS]
    if unknown or len(formats) != 1:
        raise ConfigError(
            f"unsupported output format {', '.join(unknown) or '(none)'}; supported: {', '.join(FORMATS)}"
        )
    if not name or "/" in name or name in (".", ".."):
        raise ConfigError(f"invalid image name {name!r}: it must be a plain file name")
    if not spec.kernel.image:
        raise BuildError("format kernel+initrd needs a kernel: set kernel.image in the YAML")
    arch = arch or host_arch()
    out_dir = Path(out_dir)
    paths = OutputPaths.for_name(out_dir, name)
    images = resolve_images(spec, store, ensure_image=ensure_image, arch=arch)
    key = build_key(spec, images, formats=formats, level=level, arch=arch)
    result = BuildResult(paths.kernel, paths.initrd, paths.cmdline, spec.kernel.cmdline, key, cached=False)
    stamp = _stamp_path(out_dir, name)
    if _cache_hit(stamp, key, paths.all()):
        log.info("build %s: up to date (%s)", name, key[:12])
        return dataclasses.replace(result, cached=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    with file_lock(out_dir / f".{name}.lkctl-build.lock"):
        if _cache_hit(stamp, key, paths.all()):  # another process built it while we waited
            return dataclasses.replace(result, cached=True)
        stamp.unlink(missing_ok=True)
        log.info("build %s: %s", name, ", ".join(formats))
        with contextlib.ExitStack() as stack:
            # One format per build for now: a second one will need the stream spooled (entries are read once).
            sink = SINKS[formats[0]](stack, paths, level=level, threads=threads)
            for entry in assemble(spec, images, store):
                sink.add(entry)
            sink.finish()
        state = _file_state(paths.all())
        if state is None:
            raise BuildError(f"build {name}: outputs vanished from {out_dir} as they were written")
        atomic_write(stamp, json.dumps({"key": key, "outputs": state}, indent=2))
    return result

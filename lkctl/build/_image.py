"""`build_image` and what it needs: image resolution, the build key, the stamp, the parts and the format writers.

Imported on first use of `lkctl.build.build_image` (or `resolve_images`, `build_key`, `check_request`): the
package itself stays light, so that `image.build` can answer an unchanged build from its receipt
(`lkctl.build.receipt`) without importing the spec, the parser and the writers.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from lkctl.build import BUILDER_VERSION, FORMATS, PULL_POLICIES, BuildResult, host_arch
from lkctl.build._bookkeeping import build_paths, created_output_dir, open_state, reclaim_leftovers
from lkctl.build._formats import DEFAULT_LEVEL
from lkctl.build._formats import FORMATS as _FORMATS
from lkctl.build.spec import Spec, file_source_path
from lkctl.errors import BuildError, ConfigError, ImageError
from lkctl.flags import parse_arch, parse_size
from lkctl.fsutil import atomic_write, file_lock
from lkctl.oci.layout import Image, Store
from lkctl.oci.reference import parse_reference

__all__ = ["Puller", "build_image", "build_key", "check_request", "resolve_images", "stamp_vouches_for"]

log = logging.getLogger("lkctl.build")

_STAMP_VERSION = 2

Puller = Callable[[str, str], None]  # (reference, architecture): put that image into the store


def _missing_message(ref: str, store: Store) -> str:
    return (
        f"image {ref} is not in the local image store {store.root}; pull it with `lkctl image.pull --oci {ref}` "
        f"(or import it with `lkctl image.import`)"
    )


def _default_puller(store: Store) -> Puller:
    def pull(ref: str, arch: str) -> None:
        from lkctl.oci.pull import pull_image
        from lkctl.sources import Platform

        log.info("pulling %s (linux/%s)", ref, arch)
        pull_image(ref, store, platforms=[Platform("linux", arch)])

    return pull


def resolve_images(
    spec: Spec,
    store: Store,
    *,
    ensure_image: Callable[[str], None] | None = None,
    arch: str | None = None,
    pull: str = "missing",
    puller: Puller | None = None,
) -> dict[str, Image]:
    """Each image reference in `spec` (as written) → its single-platform image in `store`.

    A reference the store lacks is pulled from its registry (`pull`: "missing", "always" re-pulls every
    registry image, "never"); lkctl's own `lkctl.local/*` images are never pulled: `ensure_image(ref)` is asked
    to make them (and any image a pull could not provide)."""
    if pull not in PULL_POLICIES:
        raise ConfigError(f"pull policy {pull!r}: expected one of {', '.join(PULL_POLICIES)}")
    arch = arch or host_arch()
    puller = puller or _default_puller(store)
    out: dict[str, Image] = {}
    for ref in spec.image_refs():
        remote = not parse_reference(ref).is_local and pull != "never"
        pulled = False
        if remote and (pull == "always" or store.lookup(ref) is None):
            puller(ref, arch)
            pulled = True
        if store.lookup(ref) is None and ensure_image is not None:
            ensure_image(ref)
        if store.lookup(ref) is None:
            raise ImageError(_missing_message(str(parse_reference(ref)), store))
        try:
            out[ref] = store.resolve(ref, arch=arch)
        except ImageError:
            if not remote or pulled:
                raise
            puller(ref, arch)  # cached for another platform only, or a blob is missing: pull this platform
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


def _hash(doc: Any) -> str:
    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def build_key(
    spec: Spec,
    images: Mapping[str, Image],
    *,
    formats: Sequence[str],
    level: int,
    arch: str,
    sources: list[Any] | None = None,
) -> str:
    """sha256 over everything a build's output depends on (`sources`: `spec`'s file sources fingerprinted once
    by the caller, else read here)."""
    return _hash(
        {
            "builder": BUILDER_VERSION,
            "formats": list(formats),
            "level": level,
            "arch": arch,
            "spec": spec.normalized(),
            "images": {str(parse_reference(ref)): img.manifest_digest for ref, img in images.items()},
            "sources": _sources_fingerprint(spec) if sources is None else sources,
        }
    )


def _file_state(paths: Sequence[Path]) -> dict[str, list[int]] | None:
    state = {}
    for p in paths:
        try:
            st = p.stat()
        except OSError:
            return None
        state[p.name] = [st.st_size, st.st_mtime_ns]
    return state


def _read_stamp(stamp: Path) -> dict[str, Any]:
    try:
        recorded = json.loads(stamp.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(recorded, dict) or recorded.get("version") != _STAMP_VERSION:
        return {}
    formats = recorded.get("formats")
    return formats if isinstance(formats, dict) else {}


def _up_to_date(recorded: Mapping[str, Any], fmt: str, key: str, paths: Sequence[Path]) -> bool:
    entry = recorded.get(fmt)
    return isinstance(entry, dict) and entry.get("key") == key and entry.get("outputs") == _file_state(paths)


def stamp_vouches_for(result: BuildResult, name: str, out_dir: Path) -> bool:
    """True if the stamp of `name` in `out_dir` vouches for `result`'s outputs as they are now, under the keys this
    build computed (for a receipt; call it holding the build lock)."""
    recorded = _read_stamp(build_paths(out_dir, name).stamp)
    keys = result.format_keys
    return bool(keys) and all(_up_to_date(recorded, f, keys[f], result.outputs[f]) for f in keys)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_request(formats: Sequence[str], name: str, pull: str) -> None:
    """Refuse a bad request before anything is pulled, made or written."""
    unknown = [f for f in formats if f not in _FORMATS]
    if unknown or not formats:
        raise ConfigError(
            f"unsupported output format {', '.join(unknown) or '(none)'}; supported: {', '.join(FORMATS)}"
        )
    if not name or "/" in name or name in (".", "..") or any(ord(c) < 32 for c in name):
        raise ConfigError(f"invalid image name {name!r}: it must be a plain file name")
    if pull not in PULL_POLICIES:
        raise ConfigError(f"pull policy {pull!r}: expected one of {', '.join(PULL_POLICIES)}")


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
    size: int | str | None = None,
    decompress_kernel: bool = False,
    pull: str = "missing",
    puller: Puller | None = None,
) -> BuildResult:
    """Build `spec` into `out_dir` in each of `formats`, with LinuxKit's file names (`<name>-kernel`, ...).

    Images missing from `store` are pulled (see `resolve_images`). `size` (bytes, or text such as "2G") is the
    disk size of raw/qcow2/vmdk formats. Formats whose inputs have not changed are not rewritten; when none
    has, the call returns at once with cached=True. Outputs appear only when every format has succeeded.
    """
    formats = list(dict.fromkeys(formats))
    check_request(formats, name, pull)
    needs_kernel = [f for f in formats if _FORMATS[f].kind == "initrd"]
    if needs_kernel and not spec.kernel.image:
        raise BuildError(f"format {needs_kernel[0]} needs a kernel: set kernel.image in the YAML")
    size_bytes = parse_size(size, what="--size") if isinstance(size, str) else size
    arch = parse_arch(arch) if arch else host_arch()
    out_dir = Path(out_dir)
    images = resolve_images(spec, store, ensure_image=ensure_image, arch=arch, pull=pull, puller=puller)
    fingerprint = _sources_fingerprint(spec)  # hashed once: the keys and the receipt see the same bytes
    key = build_key(spec, images, formats=formats, level=level, arch=arch, sources=fingerprint)
    content_key = _hash(
        [build_key(spec, images, formats=(), level=level, arch=arch, sources=fingerprint), decompress_kernel]
    )
    base_spec = replace(spec, files=())
    base_key = _hash([build_key(base_spec, images, formats=(), level=level, arch=arch), decompress_kernel])
    fmt_keys = {f: _hash([content_key, f, size_bytes if _FORMATS[f].sized else None]) for f in formats}
    outputs = {f: tuple(out_dir / n for n in _FORMATS[f].files(name)) for f in formats}
    kernel, initrd, cmdline = (out_dir / n for n in _FORMATS["kernel+initrd"].files(name))
    sources = tuple((str(fp[0]), str(fp[-1])) for fp in fingerprint)  # (path, sha256 or "missing")
    result = BuildResult(
        kernel, initrd, cmdline, spec.kernel.cmdline, key, cached=False, outputs=outputs, format_keys=fmt_keys,
        image_refs=tuple(spec.image_refs()), sources=sources,
    )  # fmt: skip

    bp = build_paths(out_dir, name)
    stamp = bp.stamp
    if all(_up_to_date(_read_stamp(stamp), f, fmt_keys[f], outputs[f]) for f in formats):
        log.info("build %s: up to date (%s)", name, key[:12])
        return replace(result, cached=True)
    open_state(bp)
    with file_lock(bp.lock), created_output_dir(out_dir):
        reclaim_leftovers(bp)  # a build of this name killed earlier; we hold the lock, so no live build owns them
        recorded = _read_stamp(stamp)
        todo = [f for f in formats if not _up_to_date(recorded, f, fmt_keys[f], outputs[f])]
        if not todo:  # another process built it while we waited
            return replace(result, cached=True)
        keep = {
            f: entry
            for f, entry in recorded.items()
            if f not in todo and isinstance(entry, dict) and entry.get("key") == fmt_keys.get(f)
        }
        stamp.unlink(missing_ok=True)  # a failure below must not leave a stamp vouching for old outputs
        from lkctl.build._output import write_format
        from lkctl.build._parts import PartsRequest, make_parts

        log.info("build %s: %s", name, ", ".join(todo))
        req = PartsRequest(
            frozenset(_FORMATS[f].kind for f in todo), base_key, content_key, level, threads, decompress_kernel
        )
        parts, assembled = make_parts(spec, images, store, bp.parts, req)
        staging = Path(tempfile.mkdtemp(prefix=bp.staging_prefix, dir=out_dir))
        try:
            for f in todo:
                fmt = _FORMATS[f]
                files = tuple(staging / p.name for p in outputs[f])
                work = staging / f".work-{f}"
                write_format(fmt, parts, files, work=work, size=size_bytes, tag=content_key, arch=arch)
                shutil.rmtree(work, ignore_errors=True)
            for f in todo:
                for p in outputs[f]:
                    _fsync(staging / p.name)
            for f in todo:  # every format succeeded: publish them all
                for p in outputs[f]:
                    os.replace(staging / p.name, p)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        for f in todo:
            state = _file_state(outputs[f])
            if state is None:
                raise BuildError(f"build {name}: outputs vanished from {out_dir} as they were written")
            keep[f] = {"key": fmt_keys[f], "outputs": state}
        atomic_write(stamp, json.dumps({"version": _STAMP_VERSION, "formats": keep}, indent=2))
    return replace(result, assembled=assembled, built=tuple(todo))

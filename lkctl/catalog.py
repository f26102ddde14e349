"""What images are here (`image.ls`): installed images, OCI images in the local store, and build outputs."""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from lkctl import paths
from lkctl.errors import ImageError, LkError, StateError
from lkctl.images import installed_dir, store
from lkctl.oci.layout import Store

__all__ = ["ImageInfo", "built_images", "list_images"]

log = logging.getLogger("lkctl.images")


@dataclass(frozen=True)
class ImageInfo:
    """One row of `image.ls`."""

    name: str
    kind: str  # oci | installed | built
    detail: str
    size: int | None = None  # bytes: an installed file, a build's outputs, an OCI image's layers (unknown: None)
    created: str = ""  # RFC 3339: downloaded, built, or the OCI config's `created`


def list_images() -> list[ImageInfo]:
    """Images lkctl knows: installed images, OCI images in the local store, and build outputs in the cache."""
    from lkctl.installed import read_installed
    from lkctl.progress import format_size

    out: list[ImageInfo] = []
    root = installed_dir()
    if root.is_dir():
        for d in sorted(root.iterdir()):
            if d.is_dir() and not d.name.startswith("."):
                detail, size, created = "", None, ""
                try:
                    pulled = read_installed(d.name)
                except (ImageError, StateError) as e:
                    log.debug("installed image %s: %s", d.name, e)
                    detail = "(unreadable manifest)"
                else:
                    if pulled is not None:
                        detail = f"{pulled.version} from {pulled.source or '?'}, {format_size(pulled.size)}"
                        size, created = pulled.size, pulled.downloaded_at
                out.append(ImageInfo(d.name, "installed", detail, size, created))
    st = store()
    if (st.root / "index.json").is_file():
        for ref, desc in st.refs():
            size, created = _oci_size_created(st, desc.digest)
            out.append(ImageInfo(ref, "oci", desc.digest, size, created))
    out += built_images()
    return out


def _oci_size_created(st: Store, digest: str) -> tuple[int | None, str]:
    """Layer bytes and `created` of an image manifest (an index: of its first manifest); unknown parts: None, ""."""
    try:
        doc = st.read_json(digest)
        if doc.get("manifests"):
            doc = st.read_json(doc["manifests"][0]["digest"])
        size = sum(int(layer.get("size", 0)) for layer in doc.get("layers", []))
        config = st.read_json(doc["config"]["digest"]) if "config" in doc else {}
        return size, str(config.get("created", ""))
    except (OSError, ValueError, KeyError, TypeError, LkError) as e:
        log.debug("image %s in the OCI store: size and date unknown (%s: %s)", digest, type(e).__name__, e)
        return None, ""


def built_images(root: Path | None = None) -> list[ImageInfo]:
    """Build outputs under the cache's `builds/` (what `vm.run --image` and `image.build` made), newest first.

    A build's stamp (`NAME.json`: its formats and output files) lives in lkctl's cache under `build-state/`, with
    `out-dir` naming the directory it was built into (lkctl.build keeps no bookkeeping in output dirs); the name
    shown is the path prefix `vm.run --image` takes for kernel+initrd. `root`: list builds into this tree instead.
    """
    from datetime import UTC, datetime

    root = (paths.cache_dir() / "builds" if root is None else root).resolve()
    states = paths.cache_dir() / "build-state"
    found: list[tuple[float, ImageInfo]] = []
    for marker in states.glob("*/out-dir") if states.is_dir() else []:
        try:
            out_dir = Path(marker.read_text().strip())
        except OSError as e:
            log.debug("build state %s: unreadable, not listed (%s)", marker.parent, e)
            continue
        if not out_dir.is_relative_to(root) or not out_dir.is_dir():
            continue
        for stamp in marker.parent.glob("*.json"):
            name = stamp.name[: -len(".json")]
            try:
                doc = json.loads(stamp.read_text())
                mtime = stamp.stat().st_mtime
            except (OSError, ValueError) as e:
                log.debug("build stamp %s: unreadable, not listed (%s)", stamp, e)
                continue
            formats = sorted(doc.get("formats", {})) if isinstance(doc, dict) else []
            size, present = 0, False
            for fmt in formats:
                for fname in doc["formats"][fmt].get("outputs", {}):
                    with contextlib.suppress(OSError):
                        size += (out_dir / fname).stat().st_size
                        present = True
            if not present:  # its outputs were removed (image.prune, by hand): nothing to boot
                continue
            rel = out_dir.relative_to(root)
            top = rel.parts[0] if rel.parts else ""
            label = f"{top.removeprefix('template-')} (template)" if top.startswith("template-") else name
            created = datetime.fromtimestamp(mtime, UTC).isoformat(timespec="seconds")
            info = ImageInfo(str(out_dir / name), "built", f"{label}: {', '.join(formats)}", size, created)
            found.append((mtime, info))
    return [info for _, info in sorted(found, key=lambda t: -t[0])]

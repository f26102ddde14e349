"""The local OCI image-layout store (`oci-layout`, `index.json`, `blobs/sha256/*`).

Compatible with LinuxKit's `~/.linuxkit/cache`: each `index.json` entry names an image by the
`org.opencontainers.image.ref.name` annotation holding the fully expanded reference. Writers take an flock
on `.lock`; blobs are written to a temp file, verified and renamed, so readers never see a partial blob.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from lkctl.errors import ImageError
from lkctl.fsutil import atomic_write, file_lock
from lkctl.oci.reference import Reference, parse_reference

__all__ = [
    "MEDIA_CONFIG",
    "MEDIA_INDEX",
    "MEDIA_LAYER_GZIP",
    "MEDIA_MANIFEST",
    "REF_ANNOTATION",
    "Descriptor",
    "Image",
    "Store",
]

REF_ANNOTATION = "org.opencontainers.image.ref.name"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MEDIA_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_INDEX = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
INDEX_TYPES = (MEDIA_INDEX, DOCKER_INDEX)
_MAX_MANIFEST = 4 << 20  # bigger blobs are layers: not parsed when following references
# index.json's bytes → its named entries, per store: a build looks refs up a dozen times, and reading the file
# is cheap next to parsing it. Keyed by the bytes themselves, not by stat, so no timestamp granularity can
# make a changed index look unchanged.
_REFS: dict[Path, tuple[bytes, tuple[tuple[str, Descriptor], ...]]] = {}
MANIFEST_TYPES = (MEDIA_MANIFEST, DOCKER_MANIFEST)


@dataclass(frozen=True)
class Descriptor:
    """An OCI content descriptor."""

    media_type: str
    digest: str
    size: int
    annotations: dict[str, str] = field(default_factory=dict)
    platform: dict[str, str] | None = None

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.annotations:
            d["annotations"] = dict(self.annotations)
        if self.platform:
            d["platform"] = dict(self.platform)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Descriptor:
        return cls(
            media_type=d.get("mediaType", ""),
            digest=d["digest"],
            size=int(d.get("size", 0)),
            annotations=dict(d.get("annotations") or {}),
            platform=dict(d["platform"]) if d.get("platform") else None,
        )


@dataclass(frozen=True)
class Image:
    """A single-platform image resolved from the store."""

    ref: str
    manifest_digest: str
    manifest: dict[str, Any]
    config: dict[str, Any]
    layers: tuple[Descriptor, ...]

    @property
    def labels(self) -> dict[str, str]:
        return dict((self.config.get("config") or {}).get("Labels") or {})


def _canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def _check_digest(digest: str) -> str:
    algo, _, hexpart = digest.partition(":")
    if algo != "sha256" or len(hexpart) != 64 or any(c not in "0123456789abcdef" for c in hexpart):
        raise ImageError(f"unsupported or malformed digest {digest!r}")
    return hexpart


class Store:
    """An OCI image layout on disk. Safe to share between concurrent lkctl processes."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    # -- layout ---------------------------------------------------------------------------------
    def ensure(self) -> Store:
        (self.root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        layout = self.root / "oci-layout"
        if not layout.exists():
            atomic_write(layout, json.dumps({"imageLayoutVersion": "1.0.0"}))
        index = self.root / "index.json"
        if not index.exists():
            with self.lock():
                if not index.exists():
                    atomic_write(index, json.dumps({"schemaVersion": 2, "manifests": []}, indent=2))
        return self

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        with file_lock(self.root / ".lock"):
            yield

    # -- blobs ----------------------------------------------------------------------------------
    def blob_path(self, digest: str) -> Path:
        return self.root / "blobs" / "sha256" / _check_digest(digest)

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def read_blob(self, digest: str) -> bytes:
        try:
            data = self.blob_path(digest).read_bytes()
        except FileNotFoundError:
            raise ImageError(f"blob {digest} is missing from the image store {self.root}") from None
        if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
            raise ImageError(f"blob {digest} in {self.root} is corrupt (digest mismatch); remove it and pull again")
        return data

    def read_json(self, digest: str) -> dict[str, Any]:
        result = json.loads(self.read_blob(digest))
        if not isinstance(result, dict):
            raise ImageError(f"blob {digest} is not a JSON object")
        return result

    def open_blob(self, digest: str) -> IO[bytes]:
        try:
            return open(self.blob_path(digest), "rb")
        except FileNotFoundError:
            raise ImageError(f"blob {digest} is missing from the image store {self.root}") from None

    def put_blob(self, data: bytes, media_type: str = "application/octet-stream") -> Descriptor:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        path = self.blob_path(digest)
        if not path.exists():
            self.ensure()
            atomic_write(path, data, mode=0o644)
        return Descriptor(media_type, digest, len(data))

    def put_blob_stream(self, stream: IO[bytes], media_type: str, expected_digest: str | None = None) -> Descriptor:
        """Copy `stream` into the store, hashing as it goes; refuse it if `expected_digest` does not match."""
        self.ensure()
        blobs = self.root / "blobs" / "sha256"
        fd, tmp = tempfile.mkstemp(prefix=".blob.", dir=blobs)
        h = hashlib.sha256()
        size = 0
        try:
            with os.fdopen(fd, "wb") as out:
                while chunk := stream.read(1 << 20):
                    h.update(chunk)
                    size += len(chunk)
                    out.write(chunk)
            digest = "sha256:" + h.hexdigest()
            if expected_digest and digest != expected_digest:
                raise ImageError(f"blob digest mismatch: expected {expected_digest}, got {digest}")
            os.chmod(tmp, 0o644)
            os.replace(tmp, self.blob_path(digest))
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return Descriptor(media_type, digest, size)

    def put_layer_tar(self, tar_path: Path) -> tuple[Descriptor, str]:
        """Store an uncompressed tar as a gzip layer. Returns (layer descriptor, diff_id)."""
        h = hashlib.sha256()
        with open(tar_path, "rb") as src:
            while chunk := src.read(1 << 20):
                h.update(chunk)
        diff_id = "sha256:" + h.hexdigest()
        self.ensure()
        fd, gz_tmp = tempfile.mkstemp(prefix=".layer.", dir=self.root / "blobs" / "sha256")
        try:
            with os.fdopen(fd, "wb") as raw, open(tar_path, "rb") as src:
                # mtime=0 and no file name: the same tar always gives the same blob digest
                with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="", compresslevel=6) as gz:
                    shutil.copyfileobj(src, gz, 1 << 20)
            with open(gz_tmp, "rb") as f:
                desc = self.put_blob_stream(f, MEDIA_LAYER_GZIP)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(gz_tmp)
        return desc, diff_id

    # -- images ---------------------------------------------------------------------------------
    def add_image(
        self,
        ref: str,
        layers: list[tuple[Descriptor, str]],
        *,
        config: dict[str, Any] | None = None,
        labels: dict[str, str] | None = None,
        architecture: str = "amd64",
        extra_refs: tuple[str, ...] = (),
    ) -> Descriptor:
        """Write config + manifest for `layers` ((descriptor, diff_id) pairs) and name it `ref` (and `extra_refs`)."""
        img_config: dict[str, Any] = {
            "architecture": architecture,
            "os": "linux",
            "config": dict(config or {}),
            "rootfs": {"type": "layers", "diff_ids": [d for _, d in layers]},
        }
        if labels:
            img_config["config"]["Labels"] = dict(labels)
        cfg = self.put_blob(_canonical_json(img_config), MEDIA_CONFIG)
        manifest = {
            "schemaVersion": 2,
            "mediaType": MEDIA_MANIFEST,
            "config": cfg.to_json(),
            "layers": [d.to_json() for d, _ in layers],
        }
        mdesc = self.put_blob(_canonical_json(manifest), MEDIA_MANIFEST)
        mdesc = Descriptor(
            MEDIA_MANIFEST, mdesc.digest, mdesc.size, platform={"os": "linux", "architecture": architecture}
        )
        for name in (ref, *extra_refs):
            self.set_ref(name, mdesc)
        return mdesc

    def _read_index(self) -> dict[str, Any]:
        try:
            raw = (self.root / "index.json").read_bytes()
        except FileNotFoundError:
            return {"schemaVersion": 2, "manifests": []}
        return self._parse_index(raw)

    def _parse_index(self, raw: bytes) -> dict[str, Any]:
        try:
            index = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ImageError(
                f"{self.root / 'index.json'} is not valid JSON ({e}); the image store is damaged"
            ) from None
        index.setdefault("manifests", [])
        return dict(index)

    def set_ref(self, ref: str, desc: Descriptor, *, locked: bool = False) -> None:
        """Point the expanded reference `ref` at `desc`, replacing any entry with that name.

        `locked=True`: the caller already holds `lock()` (flock is not re-entrant across file descriptors)."""
        name = str(parse_reference(ref))
        self.ensure()
        with contextlib.nullcontext() if locked else self.lock():
            index = self._read_index()
            keep = [m for m in index["manifests"] if (m.get("annotations") or {}).get(REF_ANNOTATION) != name]
            entry = desc.to_json()
            entry["annotations"] = {**entry.get("annotations", {}), REF_ANNOTATION: name}
            index["manifests"] = [*keep, entry]
            atomic_write(self.root / "index.json", json.dumps(index, indent=2))

    def ingest_dir(self) -> Path:
        """Scratch space on the store's file system for blobs on their way in (containerd's name for it)."""
        self.ensure()
        path = self.root / "ingest"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def adopt_blob(self, path: Path, digest: str) -> None:
        """Move a file already verified to hash to `digest` into place (atomic rename)."""
        os.chmod(path, 0o644)
        os.replace(path, self.blob_path(digest))

    def reachable(self, digests: Iterable[str]) -> set[str]:
        """Every blob `digests` lead to (index → manifests → config and layers), including themselves.

        Blobs that are absent are included but not followed (an index pulled for one platform only)."""
        seen: set[str] = set()
        todo = list(digests)
        while todo:
            digest = todo.pop()
            if digest in seen:
                continue
            seen.add(digest)
            path = self.blob_path(digest)
            try:
                if path.stat().st_size > _MAX_MANIFEST:
                    continue
                doc = json.loads(path.read_bytes())
            except (OSError, ValueError, UnicodeDecodeError):
                continue  # absent, or a layer (not JSON): nothing to follow
            if not isinstance(doc, dict):
                continue
            children = [*(doc.get("manifests") or []), *(doc.get("layers") or [])]
            if isinstance(doc.get("config"), dict):
                children.append(doc["config"])
            if isinstance(doc.get("subject"), dict):
                children.append(doc["subject"])
            todo += [str(c["digest"]) for c in children if isinstance(c, dict) and "digest" in c]
        return seen

    def remove(self, ref: str) -> list[str]:
        """Forget the image named `ref` and delete the blobs only it used; returns the deleted digests.

        Blobs any other named image still reaches are kept (LinuxKit's `cache rm` deletes them regardless)."""
        parsed = parse_reference(ref)
        names = {str(parsed)}
        if parsed.tag is None and parsed.digest is None:
            names.add(str(parsed.with_tag("latest")))
        with self.lock():
            index = self._read_index()
            gone = [m for m in index["manifests"] if (m.get("annotations") or {}).get(REF_ANNOTATION) in names]
            if not gone:
                raise ImageError(f"image {parsed} is not in the local image store {self.root}")
            kept = [m for m in index["manifests"] if m not in gone]
            index["manifests"] = kept
            atomic_write(self.root / "index.json", json.dumps(index, indent=2))  # names first: never dangling
            doomed = self.reachable(m["digest"] for m in gone) - self.reachable(m["digest"] for m in kept)
            deleted = []
            for digest in sorted(doomed):
                with contextlib.suppress(FileNotFoundError, ImageError):
                    self.blob_path(digest).unlink()
                    deleted.append(digest)
        return deleted

    def refs(self) -> list[tuple[str, Descriptor]]:
        """Every named entry of index.json, in file order."""
        path = self.root / "index.json"
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return []
        cached = _REFS.get(path)
        if cached is not None and cached[0] == raw:
            return list(cached[1])
        out = []
        for m in self._parse_index(raw)["manifests"]:
            name = (m.get("annotations") or {}).get(REF_ANNOTATION)
            if name:
                out.append((name, Descriptor.from_json(m)))
        _REFS[path] = (raw, tuple(out))
        return out

    def lookup(self, ref: str) -> Descriptor | None:
        """The descriptor named `ref` (expanded; an untagged name also matches `:latest`)."""
        parsed = parse_reference(ref)
        candidates = [str(parsed)]
        if parsed.tag is None and parsed.digest is None:
            candidates.append(str(parsed.with_tag("latest")))
        table = dict(self.refs())
        for c in candidates:
            if c in table:
                return table[c]
        if parsed.digest:
            for _, desc in table.items():
                if desc.digest == parsed.digest:
                    return desc
            if self.has_blob(parsed.digest):
                return Descriptor(MEDIA_MANIFEST, parsed.digest, self.blob_path(parsed.digest).stat().st_size)
        return None

    def resolve(self, ref: str | Reference, *, os_name: str = "linux", arch: str = "amd64") -> Image:
        """The single-platform image named `ref`, choosing from an index by OS and architecture."""
        ref_s = str(ref)
        desc = self.lookup(ref_s)
        if desc is None:
            raise ImageError(f"image {ref_s} is not in the local image store {self.root}")
        doc = self.read_json(desc.digest)
        media = doc.get("mediaType") or desc.media_type
        digest = desc.digest
        if media in INDEX_TYPES or "manifests" in doc:
            chosen = None
            for m in doc.get("manifests", []):
                p = m.get("platform") or {}
                if p.get("os") == os_name and p.get("architecture") == arch:
                    chosen = m
                    break
            if chosen is None:
                have = sorted(
                    f"{(m.get('platform') or {}).get('os')}/{(m.get('platform') or {}).get('architecture')}"
                    for m in doc.get("manifests", [])
                )
                raise ImageError(f"image {ref_s} has no {os_name}/{arch} variant (it has: {', '.join(have)})")
            digest = chosen["digest"]
            doc = self.read_json(digest)
        config = self.read_json(doc["config"]["digest"])
        made_for = (config.get("os") or os_name, config.get("architecture") or arch)
        if made_for != (os_name, arch):  # a single-platform image of another machine: not silently used instead
            raise ImageError(f"image {ref_s} is for {made_for[0]}/{made_for[1]} only, not {os_name}/{arch}")
        layers = tuple(Descriptor.from_json(layer) for layer in doc.get("layers", []))
        return Image(ref=ref_s, manifest_digest=digest, manifest=doc, config=config, layers=layers)

"""The OCI source: prebuilt images published as OCI artifacts in a registry (ghcr.io, a local registry...).

Artifact shape (ORAS-compatible): `<repository>/<image>:<version>` is an OCI image manifest with
`artifactType: application/vnd.lkctl.image.v1`, the empty config (`application/vnd.oci.empty.v1+json`, `{}`) and
one layer per file, the image file, whose `org.opencontainers.image.title` annotation is its file name. Several
platforms = an OCI index over one such manifest per platform (`platform.os`/`platform.architecture`).
`publish_artifact` writes exactly this; `oras push REGISTRY/REPO/IMAGE:V file.qcow2` makes a compatible one.

The newest version is the highest tag that parses as a version; a repository with only `latest` serves that.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path

from lkctl.errors import ImageError
from lkctl.http.client import RetryPolicy
from lkctl.oci.layout import MEDIA_INDEX, MEDIA_MANIFEST
from lkctl.oci.reference import Reference, parse_reference
from lkctl.oci.registry import Credentials, Registry, RegistryNotFound
from lkctl.sources import Download, Fetched, Platform, ProgressFn, SourceNotFound, newest_version

__all__ = ["ARTIFACT_TYPE", "FILE_MEDIA_TYPE", "TITLE_ANNOTATION", "OciSource", "publish_artifact"]

ARTIFACT_TYPE = "application/vnd.lkctl.image.v1"
FILE_MEDIA_TYPE = "application/vnd.lkctl.image.file.v1"
EMPTY_CONFIG_TYPE = "application/vnd.oci.empty.v1+json"
TITLE_ANNOTATION = "org.opencontainers.image.title"


class OciSource:
    """Artifacts under one repository prefix (module docstring)."""

    name = "oci"

    def __init__(
        self,
        repository: str,
        *,
        insecure: Iterable[str] = (),
        credentials: Credentials | None = None,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.repository = repository.strip().rstrip("/")
        self.insecure = list(insecure)
        self.credentials = credentials
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self._registry: Registry | None = None

    def available(self) -> bool:
        return bool(self.repository)

    def ref(self, image: str, version: str | None = None) -> Reference:
        return parse_reference(f"{self.repository}/{image}:{version or 'latest'}")

    def registry(self) -> Registry:
        if self._registry is None:
            domain = self.ref("x").domain
            self._registry = Registry(
                domain, insecure=self.insecure, credentials=self.credentials, timeout=self.timeout, retry=self.retry
            )
        return self._registry

    def latest_version(self, image: str, platform: Platform) -> str:
        ref = self.ref(image)
        try:
            tags = self.registry().list_tags(ref)
        except RegistryNotFound as e:
            raise SourceNotFound(f"oci: {ref.name}: {e.message}") from None
        newest = newest_version(tags) or ("latest" if "latest" in tags else None)
        if newest is None:
            raise SourceNotFound(f"oci: {ref.name} has no version tags (tags: {', '.join(tags) or 'none'})")
        return newest

    def resolve(self, image: str, version: str | None, platform: Platform) -> Download:
        version = version or self.latest_version(image, platform)
        ref = self.ref(image, version)
        try:
            manifest = self.registry().get_manifest(ref, platform)
        except RegistryNotFound as e:
            raise SourceNotFound(f"oci: {e.message}") from None
        if manifest.is_index:
            raise ImageError(f"oci: {ref}: nested index is not an lkctl image artifact")
        files = [d for d in manifest.layers if d.annotations.get(TITLE_ANNOTATION)]
        if len(files) != 1:
            raise ImageError(
                f"oci: {ref} is not an lkctl image artifact: expected one layer with a "
                f"{TITLE_ANNOTATION} annotation, found {len(files)}"
            )
        layer = files[0]
        file_name = Path(layer.annotations[TITLE_ANNOTATION]).name  # never a path from the registry
        if file_name in ("", ".", ".."):
            raise ImageError(f"oci: {ref}: layer title {layer.annotations[TITLE_ANNOTATION]!r} is not a file name")
        url = self.registry().blob_url(ref, layer.digest)
        sha = layer.digest.removeprefix("sha256:")
        return Download(image, version, file_name, (url,), sha, layer.size, self.name)

    def download(self, dl: Download, dest_dir: Path, progress: ProgressFn | None = None) -> Fetched:
        ref = self.ref(dl.image, dl.version)
        digest = f"sha256:{dl.sha256}"
        return self.registry().get_blob(ref, digest, dest_dir / dl.file_name, size=dl.size, progress=progress)

    def close(self) -> None:
        if self._registry is not None:
            self._registry.close()
            self._registry = None


def publish_artifact(
    registry: Registry,
    ref: Reference | str,
    files: Mapping[Platform, Path] | Path,
    *,
    annotations: Mapping[str, str] | None = None,
) -> str:
    """Push image file(s) as an lkctl artifact under `ref` (one platform: a manifest; several: an index).

    Returns the digest of what `ref` now names.
    """
    ref = parse_reference(ref) if isinstance(ref, str) else ref
    by_platform = {Platform.host(): files} if isinstance(files, Path) else dict(files)
    config = registry.push_blob(ref, b"{}", EMPTY_CONFIG_TYPE)
    entries = []
    for plat, path in by_platform.items():
        layer = registry.push_blob(ref, path, FILE_MEDIA_TYPE)
        manifest = {
            "schemaVersion": 2,
            "mediaType": MEDIA_MANIFEST,
            "artifactType": ARTIFACT_TYPE,
            "config": config.to_json(),
            "layers": [{**layer.to_json(), "annotations": {TITLE_ANNOTATION: path.name}}],
            "annotations": dict(annotations or {}),
        }
        raw = json.dumps(manifest, separators=(",", ":")).encode()
        if len(by_platform) == 1:
            return registry.push_manifest(ref, raw, MEDIA_MANIFEST)
        digest = registry.push_manifest(Reference(ref.domain, ref.path, None, None), raw, MEDIA_MANIFEST)
        entries.append(
            {
                "mediaType": MEDIA_MANIFEST,
                "digest": digest,
                "size": len(raw),
                "platform": {"os": plat.os, "architecture": plat.arch},
                "artifactType": ARTIFACT_TYPE,
            }
        )
    index = {"schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": entries}
    return registry.push_manifest(ref, index, MEDIA_INDEX)

"""The CDN source: prebuilt images on any static HTTP server (nginx, S3, a CDN), one or more mirrors.

Layout under each base URL (`lkctl.sources.cdn_url`, comma-separated for mirrors tried in order):

    <base>/<image>/index.json                         {"versions": ["1.0.0", "1.1.0"], "latest": "1.1.0"}
    <base>/<image>/<version>/SHA256SUMS               "<sha256>  <file>" per line (GNU `sha256sum` output)
    <base>/<image>/<version>/<image>-<os>-<arch>.<ext>  the image: .qcow2, .iso, .raw, .img, .vmdk

`latest` in index.json is optional: without it the highest of `versions` wins by version order (not string
order). `<arch>` may be spelled `amd64` or `x86_64`, `arm64` or `aarch64`. Instead of SHA256SUMS a version
directory may list its files in index.json (`"files": {"<version>": ["<file>", ...]}`) and carry a per-file
`<file>.sha256`. A file without any published checksum is refused: the CDN is only as trustworthy as its sums.

Publishing a version is: upload the file and SHA256SUMS into `<version>/`, then rewrite index.json last, so a
client never sees a version whose files are not there yet.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from lkctl.http import DownloadError, HttpError
from lkctl.http.client import ClientOwner, RetryPolicy, request
from lkctl.sources import Download, Fetched, Platform, ProgressFn, SourceNotFound, file_for_platform, parse_checksums

__all__ = ["CdnSource"]


class CdnSource(ClientOwner):
    """Images from a static HTTP layout (module docstring), mirrors in order."""

    name = "cdn"

    def __init__(
        self,
        base_urls: Sequence[str],
        *,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        client: httpx.Client | None = None,
    ) -> None:
        self.base_urls = [u.rstrip("/") for u in base_urls if u.strip()]
        super().__init__(timeout=timeout, retry=retry, client=client)

    def available(self) -> bool:
        return bool(self.base_urls)

    def _get(self, rel: str, *, missing_ok: bool = False) -> bytes | None:
        """GET `<mirror>/<rel>` from the first mirror that answers; None (if missing_ok) when all say 404."""
        errors: list[str] = []
        not_found = 0
        for base in self.base_urls:
            url = f"{base}/{rel}"
            try:
                return request(self._http(), "GET", url, retry=self.retry).content
            except HttpError as e:
                not_found += e.status == 404
                errors.append(e.message)
            except DownloadError as e:
                errors.append(e.message)
            except httpx.HTTPError as e:
                errors.append(f"{url}: {type(e).__name__}: {e}")
        if not_found == len(self.base_urls):
            if missing_ok:
                return None
            raise SourceNotFound(f"cdn: {rel} not found ({'; '.join(errors)})")
        raise DownloadError(f"cdn: cannot fetch {rel}: {'; '.join(errors)}")

    def index(self, image: str) -> dict[str, Any]:
        data = self._get(f"{image}/index.json")
        assert data is not None
        try:
            index = json.loads(data)
        except ValueError:
            raise DownloadError(f"cdn: {image}/index.json is not valid JSON") from None
        if not isinstance(index, dict):
            raise DownloadError(f"cdn: {image}/index.json must be a JSON object")
        return index

    def versions(self, image: str) -> list[str]:
        index = self.index(image)
        versions = index.get("versions") or []
        if not isinstance(versions, list):
            raise DownloadError(f"cdn: {image}/index.json: 'versions' must be a list")
        return [str(v) for v in versions]

    def latest_version(self, image: str, platform: Platform) -> str:
        from lkctl.sources import newest_version

        index = self.index(image)
        latest = index.get("latest")
        if latest:
            return str(latest)
        newest = newest_version(str(v) for v in index.get("versions") or [])
        if newest is None:
            raise SourceNotFound(f"cdn: {image}/index.json lists no versions")
        return newest

    def resolve(self, image: str, version: str | None, platform: Platform) -> Download:
        from lkctl.sources import check_version

        version = version or self.latest_version(image, platform)
        check_version(self.name, image, version)  # before it is part of a URL
        sums_text = self._get(f"{image}/{version}/SHA256SUMS", missing_ok=True)
        if sums_text is not None:
            sums = parse_checksums(sums_text.decode(errors="replace"))
            file_name = file_for_platform(sums, image, platform)
            if file_name is None:
                raise SourceNotFound(
                    f"cdn: {image} {version} has no file for {platform} (SHA256SUMS lists: {', '.join(sorted(sums))})"
                )
            sha = sums[file_name]
        else:
            files = (self.index(image).get("files") or {}).get(version)
            if not files:
                raise SourceNotFound(f"cdn: {image} {version}: neither SHA256SUMS nor a file list in index.json")
            found = file_for_platform([str(f) for f in files], image, platform)
            if found is None:
                raise SourceNotFound(f"cdn: {image} {version} has no file for {platform}")
            file_name = found
            one = self._get(f"{image}/{version}/{file_name}.sha256", missing_ok=True)
            if one is None:
                raise DownloadError(f"cdn: {image} {version}/{file_name} has no published sha256; refusing it")
            sha = parse_checksums(one.decode(errors="replace"), single_name=file_name).get(file_name, "")
            if not sha:
                raise DownloadError(f"cdn: {file_name}.sha256 holds no sha256 for {file_name}")
        urls = tuple(f"{base}/{image}/{version}/{file_name}" for base in self.base_urls)
        return Download(image, version, file_name, urls, sha, None, self.name)

    def download(self, dl: Download, dest_dir: Path, progress: ProgressFn | None = None) -> Fetched:
        return self.fetch(
            dl.urls, dest_dir / dl.file_name, sha256=dl.sha256, size=dl.size, headers=dl.headers, progress=progress
        )

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

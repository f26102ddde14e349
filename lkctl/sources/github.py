"""The GitHub source: images attached to releases, over the REST API with httpx (no `gh` needed).

- version = release tag: `latest` is `GET /repos/{owner}/{repo}/releases/latest`; a given version is
  `GET /repos/{owner}/{repo}/releases/tags/{tag}`, tried as typed and with a `v` prefix (`1.2.0` finds `v1.2.0`).
- the asset is the one matching `lkctl.sources.github_asset` (default `{image}-{os}-{arch}.*`, fnmatch after
  formatting, arch aliases tried: amd64/x86_64, arm64/aarch64).
- its sha256 comes from the asset's `digest` field when GitHub provides it, else a checksum asset
  (`SHA256SUMS`, `sha256sums.txt`, `checksums.txt`, or `<asset>.sha256`). Without any, the computed hash is recorded.
- the bytes come from the asset's API URL with `Accept: application/octet-stream`, which redirects to storage (the
  token is not forwarded across origins); `browser_download_url` is the fallback mirror.
- token: `GH_TOKEN`, `GITHUB_TOKEN`, else gh's `hosts.yml` (`$GH_CONFIG_DIR`, `$XDG_CONFIG_HOME/gh`, `~/.config/gh`).
  Public repositories need none; a spent rate limit is reported with its reset time.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from lkctl.errors import ConfigError, ImageError
from lkctl.http import DownloadError, HttpError
from lkctl.http.client import ClientOwner, RetryPolicy, request
from lkctl.sources import Download, Fetched, Platform, ProgressFn, SourceNotFound, parse_checksums

__all__ = ["GithubSource", "github_token", "rate_limit_message"]

_CHECKSUM_ASSETS = ("SHA256SUMS", "sha256sums", "sha256sums.txt", "SHA256SUMS.txt", "checksums.txt")
_API_HEADERS = {"Accept": "application/vnd.github+json", "X-GitHub-Api-Version": "2022-11-28"}


def _gh_config_dir(env: Mapping[str, str]) -> Path:
    if env.get("GH_CONFIG_DIR"):
        return Path(env["GH_CONFIG_DIR"])
    if env.get("XDG_CONFIG_HOME"):
        return Path(env["XDG_CONFIG_HOME"]) / "gh"
    return Path(env.get("HOME") or Path.home()) / ".config" / "gh"


def _web_host(api_url: str) -> str:
    host = urlsplit(api_url).hostname or ""
    return "github.com" if host == "api.github.com" else host


def github_token(api_url: str, env: Mapping[str, str] | None = None) -> str:
    """A token for the GitHub at `api_url`: GH_TOKEN, GITHUB_TOKEN, then gh's hosts.yml; "" if none."""
    env = os.environ if env is None else env
    for var in ("GH_TOKEN", "GITHUB_TOKEN"):
        if env.get(var):
            return env[var].strip()
    import yaml

    from lkctl.yamlio import safe_load

    hosts = _gh_config_dir(env) / "hosts.yml"
    try:
        data = safe_load(hosts.read_text())
    except (OSError, ValueError, yaml.YAMLError):  # a broken gh config must not break pulls from public repos
        return ""
    entry = data.get(_web_host(api_url)) if isinstance(data, dict) else None
    token = entry.get("oauth_token") if isinstance(entry, dict) else None
    return str(token) if token else ""  # newer gh keeps it in the system keyring: then GH_TOKEN is the way


def rate_limit_message(headers: Mapping[str, str], *, authenticated: bool, now: float | None = None) -> str | None:
    """Explain a spent GitHub rate limit from its response headers, or None if this is not one."""
    h = {k.lower(): v for k, v in headers.items()}
    if h.get("x-ratelimit-remaining") != "0" and "retry-after" not in h:
        return None
    now = dt.datetime.now(dt.UTC).timestamp() if now is None else now
    if h.get("x-ratelimit-remaining") == "0" and h.get("x-ratelimit-reset", "").isdigit():
        reset = int(h["x-ratelimit-reset"])
        when = dt.datetime.fromtimestamp(reset, dt.UTC).strftime("%H:%M:%S UTC")
        wait = max(0, reset - int(now))
        msg = f"GitHub API rate limit exceeded (limit {h.get('x-ratelimit-limit', '?')}/hour); it resets at {when}"
        msg += f" (in {wait // 60} min {wait % 60} s)"
    else:
        msg = f"GitHub secondary rate limit hit; retry in {h.get('retry-after')} s"
    if not authenticated:
        msg += "; set GITHUB_TOKEN or GH_TOKEN (or run `gh auth login`) for a higher limit"
    return msg


class GithubSource(ClientOwner):
    """Release assets of one repository (module docstring)."""

    name = "github"

    def __init__(
        self,
        repo: str,
        *,
        api_url: str = "https://api.github.com",
        asset_pattern: str = "{image}-{os}-{arch}.*",
        token: str | None = None,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        client: httpx.Client | None = None,
    ) -> None:
        self.repo = repo.strip().strip("/")
        if self.repo and self.repo.count("/") != 1:
            raise ConfigError(f"lkctl.sources.github_repo {repo!r}: expected OWNER/REPO")
        self.api_url = api_url.rstrip("/")
        self.asset_pattern = asset_pattern
        self.token = github_token(self.api_url) if token is None else token
        super().__init__(timeout=timeout, retry=retry, client=client)

    def available(self) -> bool:
        return bool(self.repo)

    def _headers(self, accept: str | None = None) -> dict[str, str]:
        h = dict(_API_HEADERS)
        if accept:
            h["Accept"] = accept
        if self.token:
            h["Authorization"] = f"Bearer {self.token}"
        return h

    def _explain(self, e: HttpError, what: str) -> ImageError:
        limited = rate_limit_message(e.headers, authenticated=bool(self.token)) if e.status in (403, 429) else None
        if limited:
            return ImageError(f"github: {what}: {limited}")
        if e.status == 401:
            return ImageError(f"github: {what}: bad credentials (check GH_TOKEN/GITHUB_TOKEN)")
        if e.status == 404:
            hint = "" if self.token else " (private repository? set GITHUB_TOKEN or GH_TOKEN)"
            return SourceNotFound(f"github: {what}: not found in {self.repo}{hint}")
        return ImageError(f"github: {what}: {e.message}")

    def _api(self, path: str, what: str) -> Any:
        try:
            r = request(self._http(), "GET", f"{self.api_url}{path}", headers=self._headers(), retry=self.retry)
        except HttpError as e:
            raise self._explain(e, what) from None
        try:
            return r.json()
        except ValueError:
            raise ImageError(f"github: {what}: the API answered with something that is not JSON") from None

    def release(self, tag: str | None) -> dict[str, Any]:
        """The release JSON for `tag` (None = latest; `1.2` also finds `v1.2`)."""
        base = f"/repos/{self.repo}/releases"
        if tag is None:
            rel = self._api(f"{base}/latest", "latest release")
        else:
            candidates = [tag] if tag.startswith("v") else [tag, f"v{tag}"]
            rel = None
            for i, t in enumerate(candidates):
                try:
                    rel = self._api(f"{base}/tags/{quote(t, safe='')}", f"release {tag}")
                    break
                except SourceNotFound:
                    if i == len(candidates) - 1:
                        raise
        if not isinstance(rel, dict) or "tag_name" not in rel:
            raise ImageError(f"github: unexpected release JSON from {self.repo}")
        return rel

    def _asset(self, assets: list[dict[str, Any]], image: str, platform: Platform) -> dict[str, Any] | None:
        names = {str(a.get("name", "")): a for a in assets}
        for arch in platform.arch_aliases:
            pattern = self.asset_pattern.format(image=image, os=platform.os, arch=arch)
            for n in sorted(names):
                if fnmatch.fnmatchcase(n, pattern) and not n.endswith((".sha256", ".sha256sum", ".asc", ".sig")):
                    return names[n]
        return None

    def _sha256(self, assets: list[dict[str, Any]], asset: dict[str, Any]) -> str | None:
        digest = str(asset.get("digest") or "")
        if digest.startswith("sha256:"):
            return digest.removeprefix("sha256:")
        name = str(asset["name"])
        by_name = {str(a.get("name", "")): a for a in assets}
        for cand in (f"{name}.sha256", f"{name}.sha256sum", *_CHECKSUM_ASSETS):
            if cand in by_name:
                text = self._fetch_small(by_name[cand])
                sums = parse_checksums(text, single_name=name)
                if name in sums:
                    return sums[name]
        return None

    def _fetch_small(self, asset: dict[str, Any]) -> str:
        url = str(asset.get("url") or asset.get("browser_download_url"))
        try:
            r = request(self._http(), "GET", url, headers=self._headers("application/octet-stream"), retry=self.retry)
        except HttpError as e:
            raise self._explain(e, f"asset {asset.get('name')}") from None
        return r.text

    def latest_version(self, image: str, platform: Platform) -> str:
        rel = self.release(None)
        if self._asset(list(rel.get("assets") or []), image, platform) is None:
            tag = rel["tag_name"]
            raise SourceNotFound(f"github: latest release {tag} of {self.repo} has no {image} for {platform}")
        return str(rel["tag_name"])

    def resolve(self, image: str, version: str | None, platform: Platform) -> Download:
        rel = self.release(version)
        assets = list(rel.get("assets") or [])
        asset = self._asset(assets, image, platform)
        if asset is None:
            names = ", ".join(str(a.get("name")) for a in assets) or "none"
            raise SourceNotFound(
                f"github: release {rel['tag_name']} of {self.repo} has no asset for {image} on {platform} "
                f"(pattern {self.asset_pattern!r}; assets: {names})"
            )
        urls = tuple(u for u in (asset.get("url"), asset.get("browser_download_url")) if u)
        size = asset.get("size")
        return Download(
            image=image,
            version=str(rel["tag_name"]),
            file_name=str(asset["name"]),
            urls=tuple(str(u) for u in urls),
            sha256=self._sha256(assets, asset),
            size=int(size) if isinstance(size, int) else None,
            source=self.name,
            headers=self._headers("application/octet-stream"),
        )

    def download(self, dl: Download, dest_dir: Path, progress: ProgressFn | None = None) -> Fetched:
        try:
            return self.fetch(
                dl.urls, dest_dir / dl.file_name, sha256=dl.sha256, size=dl.size, headers=dl.headers, progress=progress
            )
        except HttpError as e:
            raise self._explain(e, f"asset {dl.file_name}") from None
        except DownloadError as e:
            limited = [f for f in e.failures if isinstance(f, HttpError) and f.status in (403, 429)]
            if limited:
                raise self._explain(limited[0], f"asset {dl.file_name}") from None
            raise

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

"""A client for OCI/Docker registries (the distribution spec) on httpx: pull, verify, push.

Shared by the image sources (artifacts holding prebuilt images) and, later, the builder (pulling base images).
What it promises:
- auth as registries ask for it: anonymous first; on 401 the `WWW-Authenticate` challenge is answered with a
  bearer token from the realm (anonymous or with credentials) or with basic auth. Credentials come from
  `LKCTL_REGISTRY_USERNAME`/`LKCTL_REGISTRY_PASSWORD`, else `~/.docker/config.json` (`$DOCKER_CONFIG`)
  `auths.<host>.auth`; credential helpers are not run.
- every blob is verified against its digest while streaming (resumable, via `lkctl.http`), and a manifest
  fetched by digest must hash to it (by tag: to `Docker-Content-Digest` when the registry sends one).
- OCI and Docker media types; an index is narrowed to one platform, with the available ones named when absent.
- plain http only for localhost/127.0.0.1/::1 and hosts listed as insecure (`lkctl.sources.insecure_registries`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urljoin

import httpx

from lkctl.arch import Platform
from lkctl.errors import RegistryAuthError, RegistryError, RegistryNotFound
from lkctl.http import Fetched, HttpError, ProgressFn
from lkctl.http.client import RetryPolicy, download, hash_file, new_client, request
from lkctl.oci.layout import DOCKER_INDEX, DOCKER_MANIFEST, MEDIA_INDEX, MEDIA_MANIFEST, Descriptor
from lkctl.oci.reference import Reference, parse_reference

__all__ = [
    "MANIFEST_ACCEPT",
    "Credentials",
    "Manifest",
    "Registry",
    "RegistryAuthError",
    "RegistryError",
    "RegistryNotFound",
    "credentials_for",
    "parse_challenge",
    "registry_host",
]

MANIFEST_ACCEPT = ", ".join((MEDIA_MANIFEST, MEDIA_INDEX, DOCKER_MANIFEST, DOCKER_INDEX))
_LOCAL_HOSTS = ("localhost", "127.0.0.1", "[::1]", "::1")
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str = field(repr=False)


@dataclass(frozen=True)
class Manifest:
    """A manifest or index as the registry served it, with its verified digest."""

    media_type: str
    digest: str
    raw: bytes = field(repr=False)

    @property
    def json(self) -> dict[str, Any]:
        data = json.loads(self.raw)
        if not isinstance(data, dict):
            raise RegistryError(f"manifest {self.digest} is not a JSON object")
        return data

    @property
    def is_index(self) -> bool:
        return self.media_type in (MEDIA_INDEX, DOCKER_INDEX) or (
            "manifests" in self.json and "layers" not in self.json
        )

    @property
    def layers(self) -> list[Descriptor]:
        return [Descriptor.from_json(d) for d in self.json.get("layers") or []]

    @property
    def config(self) -> Descriptor | None:
        c = self.json.get("config")
        return Descriptor.from_json(c) if c else None


def registry_host(domain: str) -> str:
    """The host serving the v2 API for a reference domain (docker.io is served by registry-1.docker.io)."""
    return "registry-1.docker.io" if domain == "docker.io" else domain


def _hostname(domain: str) -> str:
    return domain.rsplit(":", 1)[0] if not domain.endswith("]") else domain


def credentials_for(domain: str, env: Mapping[str, str] | None = None) -> Credentials | None:
    """Credentials for `domain`: LKCTL_REGISTRY_USERNAME/PASSWORD, else docker's config.json `auths`."""
    env = os.environ if env is None else env
    if env.get("LKCTL_REGISTRY_USERNAME"):
        return Credentials(env["LKCTL_REGISTRY_USERNAME"], env.get("LKCTL_REGISTRY_PASSWORD", ""))
    config_dir = Path(env["DOCKER_CONFIG"]) if env.get("DOCKER_CONFIG") else Path(env.get("HOME") or "~") / ".docker"
    try:
        data = json.loads((config_dir.expanduser() / "config.json").read_text())
    except (OSError, ValueError):
        return None
    auths = data.get("auths") if isinstance(data, dict) else None
    if not isinstance(auths, dict):
        return None
    keys = [domain, f"https://{domain}", f"http://{domain}", f"https://{domain}/v1/", f"https://{domain}/v2/"]
    if domain == "docker.io":
        keys.insert(0, "https://index.docker.io/v1/")
    for key in keys:
        entry = auths.get(key)
        if not isinstance(entry, dict):
            continue
        if entry.get("auth"):
            try:
                user, _, password = base64.b64decode(str(entry["auth"])).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                continue
            return Credentials(user, password)
        if entry.get("username"):
            return Credentials(str(entry["username"]), str(entry.get("password", "")))
    return None


_PARAM = re.compile(r'(\w+)\s*=\s*("(?:[^"\\]|\\.)*"|[^,\s]*)')


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """`Bearer realm="…",service="…",scope="…"` → ("bearer", {realm, service, scope})."""
    scheme, _, rest = header.strip().partition(" ")
    params = {k.lower(): v[1:-1].replace('\\"', '"') if v.startswith('"') else v for k, v in _PARAM.findall(rest)}
    return scheme.lower(), params


def _check_digest(digest: str) -> str:
    algo, _, hexpart = digest.partition(":")
    if algo != "sha256" or not re.fullmatch(r"[0-9a-f]{64}", hexpart):
        raise RegistryError(f"unsupported or malformed digest {digest!r} (lkctl verifies sha256 only)")
    return hexpart


def _platform_matches(p: Mapping[str, Any] | None, platform: Platform) -> bool:
    if not p:
        return False
    return p.get("os") == platform.os and p.get("architecture") in platform.arch_aliases


class Registry:
    """One registry host. Tokens are cached per scope for the life of the object."""

    def __init__(
        self,
        domain: str,
        *,
        insecure: Iterable[str] = (),
        credentials: Credentials | None = None,
        use_default_credentials: bool = True,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        client: httpx.Client | None = None,
    ) -> None:
        self.domain = domain
        host = registry_host(domain)
        plain = _hostname(host) in _LOCAL_HOSTS or host in set(insecure) or _hostname(host) in set(insecure)
        self.base_url = f"{'http' if plain else 'https'}://{host}"
        if credentials is None and use_default_credentials:
            credentials = credentials_for(domain)
        self.credentials = credentials
        self.retry = retry or RetryPolicy()
        self._own_client = client is None
        self.client = client or new_client(timeout=timeout)
        self._auth: dict[str, str] = {}  # scope → Authorization header value ("" key: basic, for every scope)

    def close(self) -> None:
        if self._own_client:
            self.client.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- auth -----------------------------------------------------------------------------------------------
    def _auth_header(self, scope: str) -> dict[str, str]:
        value = self._auth.get(scope) or self._auth.get("")
        return {"Authorization": value} if value else {}

    def _basic(self) -> str:
        assert self.credentials is not None
        pair = f"{self.credentials.username}:{self.credentials.password}".encode()
        return "Basic " + base64.b64encode(pair).decode()

    def _answer(self, challenge: str, scope: str) -> None:
        scheme, params = parse_challenge(challenge)
        if scheme == "basic":
            if self.credentials is None:
                raise RegistryAuthError(
                    f"{self.domain}: authentication required; log in with `docker login {self.domain}` "
                    "or set LKCTL_REGISTRY_USERNAME and LKCTL_REGISTRY_PASSWORD"
                )
            self._auth[""] = self._basic()
            return
        if scheme != "bearer" or "realm" not in params:
            raise RegistryAuthError(f"{self.domain}: unsupported authentication challenge {challenge!r}")
        query = {k: params[k] for k in ("service",) if k in params}
        query["scope"] = scope
        url = params["realm"] + ("&" if "?" in params["realm"] else "?") + urlencode(query)
        headers = {"Authorization": self._basic()} if self.credentials else {}
        try:
            r = request(self.client, "GET", url, headers=headers, retry=self.retry)
            body = r.json()
        except HttpError as e:
            who = f"as {self.credentials.username}" if self.credentials else "anonymously"
            raise RegistryAuthError(f"{self.domain}: token request {who} refused (HTTP {e.status})") from None
        except ValueError:
            raise RegistryAuthError(f"{self.domain}: token service answered with something that is not JSON") from None
        token = body.get("token") or body.get("access_token") if isinstance(body, dict) else None
        if not token:
            raise RegistryAuthError(f"{self.domain}: token service gave no token")
        self._auth[scope] = f"Bearer {token}"

    def _call(
        self,
        method: str,
        url: str,
        *,
        scope: str,
        headers: Mapping[str, str] | None = None,
        content: bytes | None = None,
        what: str,
    ) -> httpx.Response:
        """A request with auth: anonymous or cached first, then the 401 challenge answered once."""
        full = url if url.startswith(("http://", "https://")) else self.base_url + url
        for attempt in range(2):
            h = {**(headers or {}), **self._auth_header(scope)}
            r = request(self.client, method, full, headers=h, content=content, retry=self.retry, check=False)
            if r.status_code != 401:
                break
            if attempt == 1 or "www-authenticate" not in r.headers:
                who = f"as {self.credentials.username}" if self.credentials else "without credentials"
                hint = "check the credentials" if self.credentials else "docker login, or LKCTL_REGISTRY_USERNAME"
                raise RegistryAuthError(f"{what}: 401 unauthorized {who} at {self.domain} for {scope} ({hint})")
            self._answer(r.headers["www-authenticate"], scope)
        if r.status_code == 403:
            raise RegistryAuthError(f"{what}: 403 denied by {self.domain} (no {scope.rsplit(':', 1)[-1]} access)")
        if r.status_code == 404:
            raise RegistryNotFound(f"{what}: not found ({_error_text(r)})")
        if r.status_code >= 400:
            raise RegistryError(f"{what}: HTTP {r.status_code} from {self.domain} ({_error_text(r)})")
        return r

    # -- pull -----------------------------------------------------------------------------------------------
    def get_manifest(self, ref: Reference | str, platform: Platform | None = None) -> Manifest:
        """The manifest for `ref`; an index is narrowed to `platform` (if given) and that manifest returned."""
        ref = parse_reference(ref) if isinstance(ref, str) else ref
        m = self._manifest(ref, ref.digest or ref.tag or "latest")
        if platform is None or not m.is_index:
            return m
        entries = m.json.get("manifests") or []
        for d in entries:
            if _platform_matches(d.get("platform"), platform):
                return self._manifest(ref, str(d["digest"]))
        have = sorted({f"{p.get('os')}/{p.get('architecture')}" for d in entries if (p := d.get("platform"))})
        raise RegistryNotFound(f"{ref}: no image for {platform} (available: {', '.join(have) or 'none'})")

    def _manifest(self, ref: Reference, reference: str) -> Manifest:
        r = self._call(
            "GET",
            f"/v2/{ref.path}/manifests/{reference}",
            scope=f"repository:{ref.path}:pull",
            headers={"Accept": MANIFEST_ACCEPT},
            what=f"manifest {ref.name}:{reference}" if ":" not in reference else f"manifest {ref.name}@{reference}",
        )
        raw = r.content
        digest = "sha256:" + hashlib.sha256(raw).hexdigest()
        expected = reference if reference.startswith("sha256:") else r.headers.get("docker-content-digest")
        if expected and expected != digest:
            raise RegistryError(f"manifest {ref.name}@{expected}: content hashes to {digest}; refusing it")
        media = r.headers.get("content-type", "").split(";")[0].strip() or str(json.loads(raw).get("mediaType", ""))
        return Manifest(media, digest, raw)

    def list_tags(self, ref: Reference | str) -> list[str]:
        """Every tag of `ref`'s repository (following pagination)."""
        ref = parse_reference(ref) if isinstance(ref, str) else ref
        tags: list[str] = []
        url: str | None = f"/v2/{ref.path}/tags/list?n=1000"
        while url:
            r = self._call("GET", url, scope=f"repository:{ref.path}:pull", what=f"tags of {ref.name}")
            tags += [str(t) for t in (r.json().get("tags") or [])]
            m = re.search(r'<([^>]+)>\s*;\s*rel="?next"?', r.headers.get("link", ""))
            url = urljoin(self.base_url + "/", m.group(1)) if m else None
        return tags

    def blob_url(self, ref: Reference, digest: str) -> str:
        return f"{self.base_url}/v2/{ref.path}/blobs/{digest}"

    def get_blob(
        self,
        ref: Reference | str,
        digest: str,
        dest: Path,
        *,
        size: int | None = None,
        progress: ProgressFn | None = None,
    ) -> Fetched:
        """Stream blob `digest` to `dest`, verified against the digest; resumes an interrupted earlier attempt."""
        ref = parse_reference(ref) if isinstance(ref, str) else ref
        hexpart = _check_digest(digest)
        scope = f"repository:{ref.path}:pull"
        url = self.blob_url(ref, digest)
        self._call("HEAD", url, scope=scope, what=f"blob {ref.name}@{digest}")  # settles auth before streaming
        try:
            return download(
                [url],
                dest,
                sha256=hexpart,
                size=size,
                client=self.client,
                headers=self._auth_header(scope),
                progress=progress,
                retry=self.retry,
            )
        except HttpError as e:
            if e.status == 404:
                raise RegistryNotFound(f"blob {ref.name}@{digest}: not found") from None
            raise

    def blob_exists(self, ref: Reference | str, digest: str) -> bool:
        ref = parse_reference(ref) if isinstance(ref, str) else ref
        try:
            self._call("HEAD", self.blob_url(ref, digest), scope=f"repository:{ref.path}:pull", what="blob")
        except RegistryNotFound:
            return False
        return True

    # -- push -----------------------------------------------------------------------------------------------
    def push_blob(self, ref: Reference | str, data: bytes | Path, media_type: str = "") -> Descriptor:
        """Upload `data` (bytes or a file, streamed) unless the registry has it; returns its descriptor."""
        ref = parse_reference(ref) if isinstance(ref, str) else ref
        if isinstance(data, Path):
            try:
                digest = "sha256:" + hash_file(data).hexdigest()
                size = data.stat().st_size
            except OSError as e:  # unreadable, or cut short while it was read
                raise RegistryError(f"cannot push {data}: {e.strerror or e}") from None
        else:
            digest = "sha256:" + hashlib.sha256(data).hexdigest()
            size = len(data)
        desc = Descriptor(media_type or "application/octet-stream", digest, size)
        scope = f"repository:{ref.path}:pull,push"
        what = f"push blob {ref.name}@{digest}"
        try:
            self._call("HEAD", self.blob_url(ref, digest), scope=scope, what=what)
            return desc
        except RegistryNotFound:
            pass
        r = self._call("POST", f"/v2/{ref.path}/blobs/uploads/", scope=scope, what=what)
        location = urljoin(self.base_url + "/", r.headers.get("location", ""))
        put_url = location + ("&" if "?" in location else "?") + urlencode({"digest": digest})
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size), **self._auth_header(scope)}
        body: bytes | Iterator[bytes] = data if isinstance(data, bytes) else _read_chunks(data)
        r = self.client.put(put_url, headers=headers, content=body)
        if r.status_code not in (201, 202, 204):
            raise RegistryError(f"{what}: HTTP {r.status_code} from {self.domain} ({_error_text(r)})")
        return desc

    def push_manifest(self, ref: Reference | str, manifest: Mapping[str, Any] | bytes, media_type: str = "") -> str:
        """Put a manifest (or index) under `ref`'s tag (or digest); returns its digest."""
        ref = parse_reference(ref) if isinstance(ref, str) else ref
        raw = manifest if isinstance(manifest, bytes) else json.dumps(manifest, separators=(",", ":")).encode()
        media = media_type or str(json.loads(raw).get("mediaType") or MEDIA_MANIFEST)
        digest = "sha256:" + hashlib.sha256(raw).hexdigest()
        self._call(
            "PUT",
            f"/v2/{ref.path}/manifests/{ref.tag or digest}",
            scope=f"repository:{ref.path}:pull,push",
            headers={"Content-Type": media},
            content=raw,
            what=f"push manifest {ref}",
        )
        return digest


def _read_chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            yield chunk


def _error_text(r: httpx.Response) -> str:
    """The registry's error code/message (distribution error JSON), else the status reason."""
    try:
        errors = r.json().get("errors") or []
        if errors:
            e = errors[0]
            return f"{e.get('code', '')}: {e.get('message', '')}".strip(": ")
    except (ValueError, AttributeError, httpx.ResponseNotRead):
        pass
    return r.reason_phrase or f"HTTP {r.status_code}"

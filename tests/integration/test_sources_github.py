"""The GitHub source against a GitHub-API-shaped server on loopback.

The API server answers like api.github.com's documented REST endpoints (`GET /repos/{owner}/{repo}/releases/latest`,
`/releases/tags/{tag}`, `/releases/assets/{id}`; release and asset JSON with the documented fields). Asking for an
asset with `Accept: application/octet-stream` gets a 302 to the download host, played by a real nginx on another
port (another origin, like objects.githubusercontent.com), so the redirect, Range and the token staying home are
all exercised for real.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from lkctl.errors import ImageError
from lkctl.http.client import RetryPolicy
from lkctl.installed import pull_image, read_installed
from lkctl.sources import Platform, SourceNotFound
from lkctl.sources.github import GithubSource, github_token
from tests.integration._loopback import Nginx, Request, RouteServer, json_response, nginx, route_server

pytestmark = pytest.mark.integration

AMD64 = Platform("linux", "amd64")
OWNER_REPO = "lkctl-test/images"
NO_WAIT = RetryPolicy(attempts=2, sleep=lambda s: None)


@dataclass
class FakeGithub:
    """Releases (tag → {asset name: bytes}); files are served by nginx under /<owner>/<repo>/releases/download/."""

    downloads: Nginx
    releases: dict[str, dict[str, bytes]] = field(default_factory=dict)
    latest: str = ""
    exhausted: bool = False  # answer every API call with a spent rate limit
    digests: bool = False  # include the `digest` field GitHub added to assets in 2025
    api: RouteServer | None = None

    def seen_api(self) -> list[Request]:
        assert self.api is not None
        return self.api.seen

    def publish(self, tag: str, files: dict[str, bytes]) -> None:
        self.releases[tag] = files
        self.latest = tag
        d = self.downloads.root / OWNER_REPO / "releases" / "download" / tag
        d.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            (d / name).write_bytes(data)

    def _asset_id(self, tag: str, name: str) -> int:
        return 1000 * (sorted(self.releases).index(tag) + 1) + sorted(self.releases[tag]).index(name)

    def _asset_json(self, tag: str, name: str) -> dict[str, Any]:
        assert self.api is not None
        aid = self._asset_id(tag, name)
        data = self.releases[tag][name]
        asset = {
            "url": f"{self.api.url}/repos/{OWNER_REPO}/releases/assets/{aid}",
            "browser_download_url": f"{self.downloads.url}/{OWNER_REPO}/releases/download/{tag}/{name}",
            "id": aid,
            "node_id": f"RA_{aid}",
            "name": name,
            "label": "",
            "state": "uploaded",
            "content_type": "application/octet-stream",
            "size": len(data),
            "download_count": 0,
            "created_at": "2025-01-01T00:00:00Z",
            "updated_at": "2025-01-01T00:00:00Z",
            "uploader": {"login": "octocat", "id": 1, "type": "User"},
        }
        if self.digests:
            asset["digest"] = "sha256:" + hashlib.sha256(data).hexdigest()
        return asset

    def _release_json(self, tag: str) -> dict[str, Any]:
        assert self.api is not None
        rid = sorted(self.releases).index(tag) + 1
        base = f"{self.api.url}/repos/{OWNER_REPO}/releases/{rid}"
        return {
            "url": base,
            "html_url": f"https://github.com/{OWNER_REPO}/releases/tag/{tag}",
            "assets_url": f"{base}/assets",
            "upload_url": f"https://uploads.github.com/repos/{OWNER_REPO}/releases/{rid}/assets{{?name,label}}",
            "tarball_url": f"{self.api.url}/repos/{OWNER_REPO}/tarball/{tag}",
            "zipball_url": f"{self.api.url}/repos/{OWNER_REPO}/zipball/{tag}",
            "id": rid,
            "node_id": f"RE_{rid}",
            "tag_name": tag,
            "target_commitish": "main",
            "name": tag,
            "body": "",
            "draft": False,
            "prerelease": False,
            "created_at": "2025-01-01T00:00:00Z",
            "published_at": "2025-01-01T00:00:00Z",
            "author": {"login": "octocat", "id": 1, "type": "User"},
            "assets": [self._asset_json(tag, n) for n in sorted(self.releases[tag])],
        }

    def route(self, req: Request) -> tuple[int, dict[str, str], bytes]:
        assert self.api is not None
        if self.exhausted:
            reset = int(time.time()) + 1800
            headers = {"x-ratelimit-limit": "60", "x-ratelimit-remaining": "0", "x-ratelimit-reset": str(reset)}
            doc = "https://docs.github.com/rest/overview/resources-in-the-rest-api#rate-limiting"
            return json_response({"message": "API rate limit exceeded", "documentation_url": doc}, 403, headers)
        prefix = f"/repos/{OWNER_REPO}/releases/"
        if not req.path.startswith(prefix):
            return json_response({"message": "Not Found"}, 404)
        rest = req.path[len(prefix) :]
        if rest == "latest" and self.latest:
            return json_response(self._release_json(self.latest))
        if rest.startswith("tags/") and rest[5:] in self.releases:
            return json_response(self._release_json(rest[5:]))
        if rest.startswith("assets/"):
            for tag, files in self.releases.items():
                for name in files:
                    if str(self._asset_id(tag, name)) == rest[7:]:
                        if req.headers.get("accept") == "application/octet-stream":
                            target = f"{self.downloads.url}/{OWNER_REPO}/releases/download/{tag}/{name}"
                            return 302, {"Location": target}, b""
                        return json_response(self._asset_json(tag, name))
        return json_response({"message": "Not Found"}, 404)


@pytest.fixture
def github(tmp_path: Path) -> Iterator[FakeGithub]:
    with nginx(tmp_path / "dl", tmp_path / "nginx") as downloads:
        fake = FakeGithub(downloads)
        with route_server(fake.route) as api:
            fake.api = api
            yield fake


def source(fake: FakeGithub, token: str = "") -> GithubSource:
    assert fake.api is not None
    return GithubSource(OWNER_REPO, api_url=fake.api.url, token=token, retry=NO_WAIT)


def image(n: int = 1, seed: int = 0) -> bytes:
    return b"QFI\xfb" + hashlib.sha256(bytes([seed])).digest() * (n << 15)


def test_latest_release_asset_for_this_platform_is_pulled_via_the_redirect(github: FakeGithub) -> None:
    data = image(2)
    files = {"core-dev-linux-x86_64.qcow2": data, "core-dev-linux-aarch64.qcow2": b"arm"}
    files["SHA256SUMS"] = "".join(f"{hashlib.sha256(v).hexdigest()}  {k}\n" for k, v in files.items()).encode()
    github.publish("v1.2.0", files)
    src = source(github, token="ghp_secret")

    result = pull_image("core-dev", sources=[src], platform=AMD64)
    src.close()

    img = read_installed("core-dev")
    assert img is not None and result.source == "github"
    assert (img.version, img.files, img.sha256) == ("v1.2.0", ("core-dev-linux-x86_64.qcow2",), _sha(data))
    api_auth = [r.headers.get("authorization") for r in github.seen_api()]
    assert api_auth and all(a == "Bearer ghp_secret" for a in api_auth)
    dl_lines = [line for line in github.downloads.log() if "x86_64.qcow2" in line]
    assert len(dl_lines) == 1 and " 200 " in dl_lines[0]
    assert "auth=-" in dl_lines[0]  # the token is not forwarded to the other origin


def test_tagged_release_found_with_or_without_v_and_update_compares_tags(github: FakeGithub) -> None:
    github.publish(
        "v1.9.0", {"core-dev-linux-amd64.iso": image(1), "core-dev-linux-amd64.iso.sha256": _sha(image(1)).encode()}
    )
    github.publish("v1.10.0", {"core-dev-linux-amd64.iso": image(1, seed=1)})
    src = source(github)

    dl = src.resolve("core-dev", "1.9.0", AMD64)
    latest = src.latest_version("core-dev", AMD64)
    src.close()

    assert (dl.version, dl.sha256) == ("v1.9.0", _sha(image(1)))  # per-file .sha256 asset honoured
    assert latest == "v1.10.0"


def test_checksum_asset_that_disagrees_rejects_the_download(github: FakeGithub, lkctl_home: Path) -> None:
    wrong = f"{'1' * 64}  core-dev-linux-amd64.qcow2\n".encode()
    github.publish("v1.0.0", {"core-dev-linux-amd64.qcow2": image(1), "SHA256SUMS": wrong})
    src = source(github)
    with pytest.raises(ImageError, match="sha256"):
        pull_image("core-dev", sources=[src], platform=AMD64)
    src.close()
    assert read_installed("core-dev") is None
    assert not (lkctl_home / "data/images/core-dev").exists()


def test_asset_digest_field_is_used_when_present(github: FakeGithub) -> None:
    github.digests = True
    github.publish("v2.0.0", {"core-dev-linux-amd64.raw": image(1, seed=5)})
    src = source(github)
    dl = src.resolve("core-dev", None, AMD64)
    src.close()
    assert dl.sha256 == _sha(image(1, seed=5)) and dl.size == len(image(1, seed=5))


def test_spent_rate_limit_is_explained_with_its_reset_time(github: FakeGithub) -> None:
    github.publish("v1.0.0", {"core-dev-linux-amd64.qcow2": image(1)})
    github.exhausted = True
    src = source(github)
    with pytest.raises(ImageError) as err:
        src.latest_version("core-dev", AMD64)
    src.close()
    msg = err.value.message
    assert (
        "rate limit exceeded (limit 60/hour)" in msg and "resets at" in msg and re.search(r"UTC \(in (29|30) min", msg)
    )
    assert "GITHUB_TOKEN" in msg
    assert len(github.seen_api()) == 1  # a spent limit is not hammered with retries


def test_missing_release_or_asset_is_not_found(github: FakeGithub) -> None:
    github.publish("v1.0.0", {"other-linux-amd64.qcow2": image(1)})
    src = source(github)
    with pytest.raises(SourceNotFound, match="no asset for core-dev on linux/amd64"):
        src.resolve("core-dev", None, AMD64)
    with pytest.raises(SourceNotFound, match=r"release 9\.9"):
        src.resolve("core-dev", "9.9", AMD64)
    src.close()


def test_token_comes_from_env_then_gh_hosts_file(tmp_path: Path) -> None:
    gh = tmp_path / "gh"
    gh.mkdir()
    (gh / "hosts.yml").write_text("github.com:\n    oauth_token: gho_fromfile\n    user: octocat\n")
    assert github_token("https://api.github.com", {"GH_CONFIG_DIR": str(gh)}) == "gho_fromfile"
    env = {"GH_CONFIG_DIR": str(gh), "GITHUB_TOKEN": "ghp_env"}
    assert github_token("https://api.github.com", env) == "ghp_env"
    assert github_token("https://ghe.example/api/v3", {"GH_CONFIG_DIR": str(gh)}) == ""


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()

"""Pure parts of the image sources: versions, checksum files, names, settings → sources, auth headers."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from lkctl.errors import ConfigError
from lkctl.http.client import RetryPolicy, retry_after_seconds
from lkctl.oci.registry import Credentials, credentials_for, parse_challenge
from lkctl.settings import SourcesSettings, load_settings
from lkctl.sources import (
    Platform,
    compare_versions,
    file_for_platform,
    newest_version,
    parse_checksums,
    select_sources,
    split_name,
)
from lkctl.sources.github import rate_limit_message


@pytest.mark.parametrize(
    ("a", "b", "cmp"),
    [
        ("1.10.0", "1.9.0", 1),  # the string comparison the Go tool used gets this wrong
        ("v1.2.0", "1.2", 0),
        ("1.2.0-rc.1", "1.2.0", -1),
        ("1.2.0-rc.10", "1.2.0-rc.9", 1),
        ("1.2.0-beta", "1.2.0-alpha", 1),
        ("2024.05.01", "2024.04.30", 1),
        ("20240501", "20231231", 1),
        ("1.0.0+build.5", "1.0.0", 0),
    ],
)
def test_versions_compare_as_versions(a: str, b: str, cmp: int) -> None:
    assert compare_versions(a, b) == cmp
    assert compare_versions(b, a) == -cmp


def test_non_versions_are_not_compared_and_not_chosen_as_newest() -> None:
    assert compare_versions("latest", "1.0") is None
    assert newest_version(["latest", "1.9", "1.10", "edge", "1.10-rc1"]) == "1.10"
    assert newest_version(["latest"]) is None


def test_checksum_files_in_gnu_bsd_and_single_hash_form() -> None:
    a, b = "a" * 64, "B" * 64
    text = f"# sums\n{a}  img-linux-amd64.qcow2\n{b} *./img-linux-arm64.qcow2\nSHA256 (x.iso) = {a}\n"
    assert parse_checksums(text) == {"img-linux-amd64.qcow2": a, "img-linux-arm64.qcow2": "b" * 64, "x.iso": a}
    assert parse_checksums(f"{a}\n", single_name="f.raw") == {"f.raw": a}


def test_platform_file_is_found_under_either_arch_spelling_and_checksum_files_are_skipped() -> None:
    names = ["img-linux-x86_64.qcow2.sha256", "img-linux-x86_64.qcow2", "img-linux-aarch64.iso"]
    assert file_for_platform(names, "img", Platform("linux", "amd64")) == "img-linux-x86_64.qcow2"
    assert file_for_platform(names, "img", Platform.parse("linux/aarch64")) == "img-linux-aarch64.iso"
    assert file_for_platform(names, "img", Platform("linux", "riscv64")) is None


def test_name_and_version_are_split_and_validated() -> None:
    assert split_name("core-dev") == ("core-dev", None)
    assert split_name("core-dev:v1.2.0") == ("core-dev", "v1.2.0")
    for bad in ("../etc", "Core", "a:b/c"):
        with pytest.raises(ConfigError):
            split_name(bad)


def test_sources_settings_come_from_config_and_env() -> None:
    s = load_settings({"lkctl": {"sources": {"cdn_url": "https://a, https://b", "retries": "3"}}}, env={})
    assert s.sources.cdn_url == "https://a, https://b" and s.sources.retries == 3
    env = {"LKCTL_SOURCES_ORDER": "oci,cdn", "LKCTL_SOURCES_OCI_REPOSITORY": "ghcr.io/x/images"}
    s = load_settings({}, env=env)
    assert [src.name for src in select_sources(s.sources)] == ["oci"]  # cdn has no URL: skipped
    s = load_settings({"lkctl": {"sources": {"cdn_url": "https://a, https://b"}}}, env=env)
    sources = select_sources(s.sources)
    assert [src.name for src in sources] == ["oci", "cdn"]
    assert sources[1].base_urls == ["https://a", "https://b"]  # type: ignore[attr-defined]


def test_unconfigured_or_unknown_source_is_a_config_error_naming_the_setting() -> None:
    with pytest.raises(ConfigError, match="LKCTL_SOURCES_GITHUB_REPO"):
        select_sources(SourcesSettings(), "github")
    with pytest.raises(ConfigError, match="unknown image source 'ftp'"):
        select_sources(SourcesSettings(order="cdn,ftp"))


def test_www_authenticate_challenges_are_parsed() -> None:
    header = 'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:a/b:pull,push"'
    assert parse_challenge(header) == (
        "bearer",
        {"realm": "https://auth.docker.io/token", "service": "registry.docker.io", "scope": "repository:a/b:pull,push"},
    )
    assert parse_challenge('Basic realm="Registry Realm"') == ("basic", {"realm": "Registry Realm"})


def test_registry_credentials_from_env_then_docker_config(tmp_path: Path) -> None:
    auth = base64.b64encode(b"me:pw:with:colons").decode()
    config = {"auths": {"ghcr.io": {"auth": auth}, "https://index.docker.io/v1/": {"username": "d", "password": "p"}}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    env = {"DOCKER_CONFIG": str(tmp_path)}
    assert credentials_for("ghcr.io", env) == Credentials("me", "pw:with:colons")
    assert credentials_for("docker.io", env) == Credentials("d", "p")
    assert credentials_for("quay.io", env) is None
    assert credentials_for("quay.io", {**env, "LKCTL_REGISTRY_USERNAME": "u", "LKCTL_REGISTRY_PASSWORD": "x"}) == (
        Credentials("u", "x")
    )
    assert "pw" not in repr(Credentials("me", "pw"))


def test_rate_limit_message_names_the_reset_time_and_the_token_hint() -> None:
    headers = {"X-RateLimit-Remaining": "0", "X-RateLimit-Limit": "60", "X-RateLimit-Reset": "1700000600"}
    msg = rate_limit_message(headers, authenticated=False, now=1700000000)
    assert msg is not None
    assert "limit 60/hour" in msg and "22:23:20 UTC (in 10 min 0 s)" in msg and "GITHUB_TOKEN" in msg
    assert "GITHUB_TOKEN" not in (rate_limit_message(headers, authenticated=True, now=1700000000) or "")
    assert rate_limit_message({"X-RateLimit-Remaining": "12"}, authenticated=False) is None


def test_retry_after_accepts_seconds_and_http_dates_and_backoff_grows_with_jitter() -> None:
    assert retry_after_seconds("7") == 7.0
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470) == 10.0
    assert retry_after_seconds("soon") is None
    p = RetryPolicy(base_delay=1, max_delay=8)
    for attempt, ceiling in [(0, 1), (1, 2), (2, 4), (5, 8)]:
        d = p.delay(attempt)
        assert ceiling / 2 <= d <= ceiling
    assert p.delay(3, retry_after=0.5) == 0.5

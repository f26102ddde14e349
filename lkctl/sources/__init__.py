"""Where prebuilt images come from: the `Source` protocol and what every source shares.

A source answers three questions for an image name and a platform: which version is newest, where that version's
file is and what it must hash to (`resolve` → `Download`), and then fetches it (`download`), verified and
resumable (see `lkctl.http`). Three sources exist: `cdn` (a static HTTP layout), `github` (release assets over the REST
API) and `oci` (artifacts in a registry). `select_sources` turns settings and `--source` into the list `auto`
walks in order. Importing this package is cheap: httpx loads only when a source is built.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from lkctl.arch import Platform
from lkctl.errors import ConfigError, DownloadError, SourceNotFound
from lkctl.http import Fetched, ProgressFn

if TYPE_CHECKING:
    from lkctl.settings import SourcesSettings

__all__ = [
    "SOURCE_NAMES",
    "Download",
    "Fetched",
    "Platform",
    "ProgressFn",
    "Source",
    "SourceNotFound",
    "check_version",
    "compare_versions",
    "insecure_registries",
    "newest_version",
    "opened_sources",
    "parse_checksums",
    "select_sources",
    "split_name",
    "version_key",
]

SOURCE_NAMES = ("cdn", "github", "oci")
_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,199}")


def _plain(name: str) -> bool:
    """A name that is one path component and no more: letters, digits, '.', '_', '+', '-', no `..`."""
    return bool(_PLAIN_NAME.fullmatch(name)) and ".." not in name


@dataclass(frozen=True)
class Download:
    """One resolved image file: where to get it (mirrors in order) and what it must be."""

    image: str
    version: str
    file_name: str
    urls: tuple[str, ...]
    sha256: str | None  # hex; None when the source publishes no checksum (then it is computed and recorded)
    size: int | None
    source: str
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)  # e.g. auth, never printed

    def __post_init__(self) -> None:
        # Both come from the server (an index, SHA256SUMS, a release). The file name becomes a path under lkctl's
        # data dir, where anything but a plain name could lead the download outside it (`../../.bashrc`); the
        # version is printed, so it may hold no control characters (a terminal's escape sequences)
        if not _plain(self.file_name):
            raise DownloadError(
                f"{self.source}: refusing {self.image}'s file name {self.file_name[:80]!r} from the server: not a "
                "plain file name (letters, digits, '.', '_', '+', '-')"
            )
        check_version(self.source, self.image, self.version)

    @property
    def version_dir(self) -> str:
        """The version as a file name: itself when plain, else a digest of it (a tag like `release/1.0`)."""
        if _plain(self.version):
            return self.version
        return "v-" + hashlib.sha256(self.version.encode()).hexdigest()[:16]


@runtime_checkable
class Source(Protocol):
    """A place prebuilt images come from."""

    name: str

    def available(self) -> bool:
        """Configured well enough to ask (no network call)."""
        ...

    def latest_version(self, image: str, platform: Platform) -> str:
        """The newest published version of `image`; SourceNotFound if there is none."""
        ...

    def resolve(self, image: str, version: str | None, platform: Platform) -> Download:
        """The file for `image` at `version` (None = latest) for `platform`; SourceNotFound if absent."""
        ...

    def download(self, dl: Download, dest_dir: Path, progress: ProgressFn | None = None) -> Fetched:
        """Fetch `dl` into `dest_dir/dl.file_name`, verified; resumes an interrupted earlier attempt."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


# -- versions -------------------------------------------------------------------------------------------------

_VERSION = re.compile(r"^[vV]?(\d+(?:[._]\d+)*)(?:-([0-9A-Za-z.-]+))?(?:\+[0-9A-Za-z.-]+)?$")

VersionKey = tuple[tuple[int, ...], tuple[object, ...]]


def version_key(text: str) -> VersionKey | None:
    """A sort key for semver-ish (`v1.2.3`, `1.2.3-rc.1`) and date (`2024.05.01`, `20240501`) tags.

    `1.2` equals `1.2.0`; a pre-release sorts before its release; numeric parts compare as numbers (so `1.10`
    is newer than `1.9`). None for text that is not a version (`latest`, `edge`).
    """
    m = _VERSION.match(text.strip())
    if not m:
        return None
    nums = [int(p) for p in re.split(r"[._]", m.group(1))]
    while len(nums) > 1 and nums[-1] == 0:
        nums.pop()
    pre = m.group(2)
    if pre is None:
        return tuple(nums), (1,)
    parts = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in pre.split("."))
    return tuple(nums), (0, parts)


def compare_versions(a: str, b: str) -> int | None:
    """-1, 0 or 1 as `a` is older than, the same as or newer than `b`; None if either is not a version."""
    ka, kb = version_key(a), version_key(b)
    if ka is None or kb is None:
        return None
    return (ka > kb) - (ka < kb)


def newest_version(versions: Iterable[str]) -> str | None:
    """The highest of `versions` that parse as versions, or None."""
    keyed = [(k, v) for v in versions if (k := version_key(v)) is not None]
    if not keyed:
        return None
    return max(keyed, key=lambda kv: kv[0])[1]


def check_version(source: str, image: str, version: str) -> None:
    """DownloadError for a version a server named that lkctl cannot print or put in a URL (control characters)."""
    if not (0 < len(version) <= 200 and version.isprintable()):
        raise DownloadError(f"{source}: refusing {image}'s version {version[:80]!r} from the server")


def split_name(text: str) -> tuple[str, str | None]:
    """`NAME[:VERSION]` → (name, version or None)."""
    name, sep, version = text.partition(":")
    if not re.fullmatch(r"[a-z0-9][a-z0-9._-]*", name):
        raise ConfigError(f"image name {name!r}: use lowercase letters, digits and . _ -")
    if sep and not re.fullmatch(r"[\w][\w.+-]*", version):
        raise ConfigError(f"image version {version!r} is not a valid version or tag")
    return name, (version or None)


# -- checksums ------------------------------------------------------------------------------------------------

_SUM_LINE = re.compile(r"^([0-9a-fA-F]{64})\s+\*?(.+)$")
_BSD_LINE = re.compile(r"^SHA256 \((.+)\) = ([0-9a-fA-F]{64})$")


def parse_checksums(text: str, *, single_name: str | None = None) -> dict[str, str]:
    """File name → sha256 from a `SHA256SUMS` file (GNU or BSD format) or a per-file `.sha256`.

    A `.sha256` holding only the hash counts for `single_name`.
    """
    out: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if m := _SUM_LINE.match(line):
            out[m.group(2).strip().lstrip("./")] = m.group(1).lower()
        elif m := _BSD_LINE.match(line):
            out[m.group(1)] = m.group(2).lower()
        elif single_name and re.fullmatch(r"[0-9a-fA-F]{64}", line):
            out[single_name] = line.lower()
    return out


def file_for_platform(names: Iterable[str], image: str, platform: Platform) -> str | None:
    """The file named `<image>-<os>-<arch>.<ext>` (any alias of arch) among `names`; checksum files excluded."""
    for arch in platform.arch_aliases:
        prefix = f"{image}-{platform.os}-{arch}."
        for n in sorted(names):
            if n.startswith(prefix) and not n.endswith((".sha256", ".sha256sum", ".asc", ".sig")):
                return n
    return None


# -- choosing sources -----------------------------------------------------------------------------------------


def _split_list(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


def insecure_registries(settings: SourcesSettings) -> list[str]:
    """The registry hosts `lkctl.sources.insecure_registries` lets lkctl speak plain http to (pull, push, sources)."""
    return _split_list(settings.insecure_registries)


def build_source(name: str, settings: SourcesSettings) -> Source:
    """The source called `name`, configured from `settings`."""
    from lkctl.http.client import RetryPolicy

    if not 0 < settings.timeout <= 3600:
        raise ConfigError(f"lkctl.sources.timeout {settings.timeout:g}: give seconds from more than 0 up to 3600")
    for key, urls in (("cdn_url", _split_list(settings.cdn_url)), ("github_api", [settings.github_api])):
        if bad := [u for u in urls if not re.match(r"https?://[^/\s]", u)]:
            raise ConfigError(f"lkctl.sources.{key}: {bad[0]!r} is not an http:// or https:// URL")
    retry = RetryPolicy(attempts=max(1, settings.retries))
    if name == "cdn":
        from lkctl.sources.cdn import CdnSource

        return CdnSource(_split_list(settings.cdn_url), timeout=settings.timeout, retry=retry)
    if name == "github":
        from lkctl.sources.github import GithubSource

        return GithubSource(
            settings.github_repo,
            api_url=settings.github_api,
            asset_pattern=settings.github_asset,
            timeout=settings.timeout,
            retry=retry,
        )
    if name == "oci":
        from lkctl.sources.oci import OciSource

        return OciSource(
            settings.oci_repository,
            insecure=insecure_registries(settings),
            timeout=settings.timeout,
            retry=retry,
        )
    raise ConfigError(f"unknown image source {name!r} (known: auto, {', '.join(SOURCE_NAMES)})")


def select_sources(settings: SourcesSettings, choice: str = "auto") -> list[Source]:
    """The sources to try, in order: `auto` = `lkctl.sources.order` less the unconfigured ones; a name = that one.

    Raises ConfigError when nothing usable is configured, naming the settings to set.
    """
    names = _split_list(settings.order) if choice == "auto" else [choice]
    for n in names:
        if n not in SOURCE_NAMES:
            raise ConfigError(f"unknown image source {n!r} (known: auto, {', '.join(SOURCE_NAMES)})")
    sources = [build_source(n, settings) for n in names]
    usable = [s for s in sources if s.available()]
    if not usable:
        hint = {
            "cdn": "lkctl.sources.cdn_url (LKCTL_SOURCES_CDN_URL)",
            "github": "lkctl.sources.github_repo (LKCTL_SOURCES_GITHUB_REPO)",
            "oci": "lkctl.sources.oci_repository (LKCTL_SOURCES_OCI_REPOSITORY)",
        }
        need = " or ".join(hint[n] for n in names)
        raise ConfigError(f"no image source configured for {choice!r}: set {need}")
    return usable


@contextlib.contextmanager
def opened_sources(settings: SourcesSettings, choice: str = "auto") -> Iterator[list[Source]]:
    """`select_sources` whose connections are closed when the block ends."""
    sources = select_sources(settings, choice)
    try:
        yield sources
    finally:
        for s in sources:
            s.close()

"""Installed images: pulled from a source, verified, recorded, and found by `vm.run --image=NAME`.

Each installed image is a directory `data_dir()/images/<name>/` holding the image file(s) and `manifest.json`
(name, version, source, sha256, size, downloaded_at, files), written atomically. A directory appears under its
name only complete: the file is downloaded into `images/.downloads/<name>/<source>-<version>/` (a stable place,
so an interrupted pull resumes on the next run), moved into a fresh hidden temp directory with its manifest, and
that directory is renamed into place. A failed or corrupt download therefore never counts as installed.
`check_update` compares versions as versions (`1.10` > `1.9`, `2024.05.01` > `2024.04.30`), not as strings.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lkctl.errors import ImageError, StateError
from lkctl.fsutil import atomic_write, file_lock
from lkctl.sources import Download, Platform, ProgressFn, Source, SourceNotFound, compare_versions

__all__ = [
    "MANIFEST_NAME",
    "InstalledImage",
    "PullResult",
    "UpdateCheck",
    "check_update",
    "install_download",
    "installed_root",
    "list_installed",
    "pull_image",
    "read_installed",
    "remove_installed",
    "update_image",
    "update_installed",
]

MANIFEST_NAME = "manifest.json"
SCHEMA_VERSION = 1

ProgressFactory = Callable[[Download], ProgressFn | None]  # called once per download with what is being fetched
log = logging.getLogger("lkctl.installed")


@dataclass(frozen=True)
class InstalledImage:
    name: str
    version: str
    source: str
    sha256: str
    size: int
    downloaded_at: str  # RFC 3339, UTC
    files: tuple[str, ...]
    path: Path  # the image's directory
    url: str = ""
    platform: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA_VERSION,
            "name": self.name,
            "version": self.version,
            "source": self.source,
            "sha256": self.sha256,
            "size": self.size,
            "downloaded_at": self.downloaded_at,
            "files": list(self.files),
            "url": self.url,
            "platform": self.platform,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], path: Path) -> InstalledImage:
        schema = data.get("schema", SCHEMA_VERSION)
        if schema != SCHEMA_VERSION:
            raise StateError(f"{path / MANIFEST_NAME}: manifest schema {schema} is not one this lkctl knows")
        return cls(
            name=str(data.get("name") or path.name),
            version=str(data.get("version", "")),
            source=str(data.get("source", "")),
            sha256=str(data.get("sha256", "")),
            size=int(data.get("size", 0)),
            downloaded_at=str(data.get("downloaded_at", "")),
            files=tuple(str(f) for f in data.get("files") or []),
            path=path,
            url=str(data.get("url", "")),
            platform=str(data.get("platform", "")),
        )


@dataclass(frozen=True)
class PullResult:
    image: InstalledImage
    source: str  # the source that served it
    downloaded: bool  # False when the same version was already installed
    skipped: tuple[str, ...] = ()  # "source: reason" for sources tried before the one that served


@dataclass(frozen=True)
class UpdateCheck:
    name: str
    current: str
    latest: str
    source: str
    newer: bool  # latest is newer than current
    comparable: bool  # both parse as versions (else `newer` means "different")


def installed_root() -> Path:
    """Where installed (pulled) images live: one directory per name."""
    from lkctl import paths

    return paths.data_dir() / "images"


@contextlib.contextmanager
def _image_lock(name: str) -> Iterator[Path]:
    root = installed_root()
    with file_lock(root / ".locks" / f"{name}.lock"):
        yield root


def read_installed(name: str) -> InstalledImage | None:
    """The installed image `name`, or None if it has no manifest. StateError if the manifest is unreadable."""
    d = installed_root() / name
    path = d / MANIFEST_NAME
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise StateError(f"{path}: unreadable manifest ({e}); `lkctl image.rm {name}` and pull again") from None
    if not isinstance(data, dict):
        raise StateError(f"{path}: manifest is not a JSON object")
    return InstalledImage.from_json(data, d)


def list_installed() -> list[InstalledImage]:
    """Every installed image with a readable manifest, by name."""
    root = installed_root()
    out = []
    if root.is_dir():
        for d in sorted(root.iterdir()):
            if d.is_dir() and not d.name.startswith("."):
                try:
                    img = read_installed(d.name)
                except StateError as e:
                    log.debug("installed image %s: not listed: %s", d.name, e)
                    continue
                if img is not None:
                    out.append(img)
    return out


def _now() -> str:
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _staging_dir(root: Path, dl: Download) -> Path:
    return root / ".downloads" / dl.image / f"{dl.source}-{dl.version_dir}"


def install_download(
    source: Source, dl: Download, progress: ProgressFn | None = None, *, platform: Platform | None = None
) -> InstalledImage:
    """Download `dl` with `source` and install it as `dl.image`, replacing an older install only when complete."""
    return _install(source, dl, progress, platform=platform, force=True)[0]


def _install(
    source: Source, dl: Download, progress: ProgressFn | None, *, platform: Platform | None, force: bool
) -> tuple[InstalledImage, bool]:
    with _image_lock(dl.image) as root:
        if not force and (current := _already(dl)) is not None:
            return current, False  # another process installed it while we waited for the lock
        staging = _staging_dir(root, dl)
        fetched = source.download(dl, staging, progress)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dl.image}.new-", dir=root))
        try:
            os.replace(fetched.path, tmp / dl.file_name)
            image = InstalledImage(
                name=dl.image,
                version=dl.version,
                source=dl.source,
                sha256=fetched.sha256,
                size=fetched.size,
                downloaded_at=_now(),
                files=(dl.file_name,),
                path=root / dl.image,
                url=fetched.url,
                platform=str(platform) if platform else "",
            )
            atomic_write(tmp / MANIFEST_NAME, json.dumps(image.to_json(), indent=2) + "\n")
            final = root / dl.image
            old = None
            if final.exists() or final.is_symlink():
                old = Path(tempfile.mkdtemp(prefix=f".{dl.image}.old-", dir=root))
                os.replace(final, old / "image")
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        shutil.rmtree(staging, ignore_errors=True)
        return image, True


def _already(dl: Download) -> InstalledImage | None:
    try:
        current = read_installed(dl.image)
    except StateError as e:
        log.debug("installed image %s: %s; installing again", dl.image, e)
        return None
    if current is None or current.version != dl.version or current.source != dl.source:
        return None
    if dl.sha256 and current.sha256 != dl.sha256:
        return None
    if not all((current.path / f).is_file() for f in current.files):
        return None
    return current


def _by_source(source: str, message: str) -> str:
    """`message` said as `source`'s (most of a source's errors already begin with its name)."""
    return message if message.startswith(f"{source}: ") else f"{source}: {message}"


def pull_image(
    name: str,
    version: str | None = None,
    *,
    sources: Sequence[Source],
    platform: Platform | None = None,
    progress: ProgressFactory | None = None,
    force: bool = False,
) -> PullResult:
    """Install `name` (at `version`, default the newest) from the first of `sources` that has it.

    A source that lacks the image, fails or serves bytes that do not verify is skipped (and named in the
    result or the error); the same version already installed from the same source is kept unless `force`.
    """
    platform = platform or Platform.host()
    skipped: list[str] = []
    not_found = True
    for src in sources:
        try:
            dl = src.resolve(name, version, platform)
            if not force and (current := _already(dl)) is not None:
                return PullResult(current, src.name, False, tuple(skipped))
            reporter = progress(dl) if progress else None
            image, downloaded = _install(src, dl, reporter, platform=platform, force=force)
            return PullResult(image, src.name, downloaded, tuple(skipped))
        except SourceNotFound as e:
            skipped.append(_by_source(src.name, e.message))
        except ImageError as e:
            not_found = False
            skipped.append(_by_source(src.name, e.message))
    what = f"{name}:{version}" if version else name
    if not skipped:
        raise ImageError(f"cannot pull {what}: no image source to try")
    kind = SourceNotFound if not_found else ImageError
    raise kind(f"cannot pull {what} for {platform}: " + "; ".join(skipped))


def remove_installed(name: str) -> Path:
    """Delete the installed image `name` (and any unfinished download of it). Returns the removed directory."""

    def missing(final: Path) -> bool:
        return not (final.exists() or final.is_symlink()) or name.startswith(".") or "/" in name or not name

    if missing(installed_root() / name):  # before the lock: a typo must not leave a lock file behind
        known = ", ".join(i.name for i in list_installed()) or "none"
        raise ImageError(f"image {name!r} is not installed (installed: {known})")
    with _image_lock(name) as root:
        final = root / name
        if missing(final):
            known = ", ".join(i.name for i in list_installed()) or "none"
            raise ImageError(f"image {name!r} is not installed (installed: {known})")
        trash = Path(tempfile.mkdtemp(prefix=f".{name}.rm-", dir=root))
        os.replace(final, trash / "image")
        shutil.rmtree(trash, ignore_errors=True)
        shutil.rmtree(root / ".downloads" / name, ignore_errors=True)
        return final


def _ordered(sources: Sequence[Source], first: str) -> list[Source]:
    return sorted(sources, key=lambda s: s.name != first)  # stable: the image's own source first


def check_update(name: str, *, sources: Sequence[Source], platform: Platform | None = None) -> UpdateCheck:
    """Ask the sources (the one it came from first) for the newest version of installed image `name`."""
    current = read_installed(name)
    if current is None:
        raise ImageError(f"image {name!r} is not installed (or was not pulled by lkctl): `lkctl image.pull {name}`")
    platform = platform or Platform.host()
    errors = []
    for src in _ordered(sources, current.source):
        try:
            latest = src.latest_version(name, platform)
        except ImageError as e:
            errors.append(f"{src.name}: {e.message}")
            continue
        cmp = compare_versions(latest, current.version)
        if cmp is None:
            return UpdateCheck(name, current.version, latest, src.name, latest != current.version, False)
        return UpdateCheck(name, current.version, latest, src.name, cmp > 0, True)
    raise ImageError(f"cannot check {name} for updates: " + ("; ".join(errors) or "no image source to ask"))


def update_image(
    name: str,
    *,
    sources: Sequence[Source],
    platform: Platform | None = None,
    progress: ProgressFactory | None = None,
) -> tuple[UpdateCheck, PullResult | None]:
    """Pull the newest version of `name` if it is newer than the installed one."""
    check = check_update(name, sources=sources, platform=platform)
    if not check.newer:
        return check, None
    chosen = [s for s in sources if s.name == check.source]
    return check, pull_image(name, check.latest, sources=chosen, platform=platform, progress=progress)


def update_installed(
    name: str = "",
    *,
    sources: Sequence[Source],
    check_only: bool = False,
    platform: Platform | None = None,
    progress: ProgressFactory | None = None,
    on_check: Callable[[UpdateCheck], None] | None = None,
    on_pulled: Callable[[PullResult], None] | None = None,
    on_skip: Callable[[str, ImageError], None] | None = None,
) -> list[tuple[UpdateCheck, PullResult | None]]:
    """`image.update`: check `name` (default: every installed image) and pull each newer version, unless
    `check_only`. Returns what was checked and pulled, in order (empty: nothing is installed).

    `on_check` hears each answer before its pull starts, `on_pulled` each pull as it ends. A named image's error is
    raised at once; checking every image, one that cannot be checked goes to `on_skip`, the others go on, and an
    ImageError naming the skipped ones ends it."""
    names = [name] if name else [i.name for i in list_installed()]
    done: list[tuple[UpdateCheck, PullResult | None]] = []
    skipped: list[str] = []
    for n in names:
        try:
            info = check_update(n, sources=sources, platform=platform)
        except ImageError as e:
            if name:
                raise
            if on_skip is not None:
                on_skip(n, e)
            skipped.append(n)
            continue
        if on_check is not None:
            on_check(info)
        pulled = None
        if info.newer and not check_only:
            chosen = [s for s in sources if s.name == info.source]
            pulled = pull_image(n, info.latest, sources=chosen, platform=platform, progress=progress)
            if on_pulled is not None:
                on_pulled(pulled)
        done.append((info, pulled))
    if skipped:
        raise ImageError(f"could not check {', '.join(skipped)}")
    return done

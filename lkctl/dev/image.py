"""The dev image: a persistent ext4 root disk plus lkctl's kernel and init that boot it; install, update, find.

An installed dev image is a directory `<data>/dev/versions/<version>/` holding `lkctl-dev-kernel`,
`lkctl-dev-initrd.img`, `lkctl-dev-cmdline` (lkctl's kernel, busybox init and sshd: `images/devdisk/boot.yml`) and
`lkctl-dev-root.qcow2` (the root disk: `images/devdisk/recipe.yml`, see `lkctl.dev.rootdisk`). Its prefix path is
what `--image` takes: the VM boots the kernel and initrd, and the root disk is attached through a per-VM qcow2
overlay, so the base is never written and each VM's writes persist across stop/restart. Version directories are
never changed once made (a VM's overlay names its base by path); `<data>/dev/current` names the installed one.

The root disk is pulled from the configured image sources (CDN, GitHub, OCI, as `image.pull`; image name
`lkctl-dev`, a qcow2 or raw file) when one is configured or asked for, else built from this machine's packages.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lkctl import paths
from lkctl.errors import ConfigError, ImageError, StateError
from lkctl.fsutil import atomic_write, file_lock

if TYPE_CHECKING:
    from lkctl.settings import Settings

__all__ = [
    "DEV_IMAGE_NAME",
    "DevImage",
    "dev_image_dir",
    "dev_image_update",
    "install_dev_image",
    "installed_dev_image",
    "local_dev_version",
]

log = logging.getLogger("lkctl.dev.image")

DEV_IMAGE_NAME = "lkctl-dev"
_MANIFEST = "dev-image.json"
_ROOT_SUFFIXES = {"qcow2": "-root.qcow2", "raw": "-root.img"}
_LOCAL = "local"


@dataclass(frozen=True)
class DevImage:
    name: str  # installed image name, e.g. "lkctl-dev"
    version: str  # content fingerprint (local build) or the source's version (pulled)
    image: str  # what lkctl.runtime.launch.run_image / `vm.run --image` accepts to boot it
    path: Path  # the base disk file
    size: int  # bytes on disk
    source: str = _LOCAL  # "local" or the image source it came from


def dev_image_dir() -> Path:
    """Where dev images live: `<data>/dev`."""
    return paths.data_dir() / "dev"


def _versions() -> Path:
    return dev_image_dir() / "versions"


def _safe(version: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]", "_", version)[:80] or "unknown"


def _root_disk(vdir: Path) -> Path | None:
    for suffix in _ROOT_SUFFIXES.values():
        p = vdir / f"{DEV_IMAGE_NAME}{suffix}"
        if p.is_file():
            return p
    return None


def _read_image(vdir: Path) -> DevImage | None:
    try:
        meta = json.loads((vdir / _MANIFEST).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise StateError(f"{vdir / _MANIFEST}: unreadable ({e}); run dev.install --force") from None
    disk = _root_disk(vdir)
    prefix = vdir / DEV_IMAGE_NAME
    if disk is None or not Path(f"{prefix}-kernel").is_file() or not Path(f"{prefix}-initrd.img").is_file():
        return None
    return DevImage(
        name=DEV_IMAGE_NAME,
        version=str(meta.get("version", vdir.name)),
        image=str(prefix),
        path=disk,
        size=disk.stat().st_blocks * 512,
        source=str(meta.get("source", _LOCAL)),
    )


def installed_dev_image() -> DevImage | None:
    """The installed dev image, or None (never installed, or its files are gone)."""
    try:
        current = (dev_image_dir() / "current").read_text().strip()
    except FileNotFoundError:
        return None
    if not current or "/" in current or current.startswith("."):
        raise StateError(f"{dev_image_dir() / 'current'} is damaged; run dev.install --force")
    return _read_image(_versions() / current)


# -- the parts ---------------------------------------------------------------------------------------------------
def _boot_parts() -> tuple[Path, Path, str]:
    """lkctl's kernel + busybox init + sshd initrd for the dev image (built and cached like any LinuxKit YAML)."""
    from lkctl.images import build_spec_files

    spec = paths.resource_dir("images") / "devdisk" / "boot.yml"
    result = build_spec_files([spec], name=DEV_IMAGE_NAME)
    return result.kernel, result.initrd, result.cmdline_text


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def local_dev_version() -> tuple[str, str]:
    """(version, root disk fingerprint) a local build makes now: the root disk's content fingerprint (recipe,
    builder, package versions) combined with the kernel and initrd that boot it. Builds the boot parts if needed
    (seconds; cached), never the root disk."""
    from lkctl.debpackages import installed_packages
    from lkctl.dev.rootdisk import disk_fingerprint, host_facts, load_disk_recipe

    recipe = load_disk_recipe()
    root_fp = disk_fingerprint(recipe, installed_packages(), host_facts(recipe))
    kernel, initrd, cmdline = _boot_parts()
    h = hashlib.sha256(f"{root_fp}\n{_digest(kernel)}\n{_digest(initrd)}\n{cmdline}\n".encode())
    return h.hexdigest()[:16], root_fp


def _cached_root(root_fp: str) -> Path:
    """Where a built root disk is kept in lkctl's cache, by fingerprint: a version that changes only the kernel or
    init, a reinstall, or another lkctl home sharing the cache links it instead of building it again."""
    return paths.cache_dir() / "dev" / f"root-{root_fp[:32]}.qcow2"


def _prune_cached_roots(keep: Path) -> None:
    for old in keep.parent.glob("root-*.qcow2"):
        if old != keep:
            old.unlink(missing_ok=True)  # installed versions hold their own link to it


def _link_or_copy(src: Path, dest: Path) -> None:
    try:
        os.link(src, dest)
    except OSError:
        shutil.copyfile(src, dest)


def _publish(version: str, source: str, fill: Any, extra: dict[str, Any], *, fresh: bool = False) -> DevImage:
    """Make version dir `version` with `fill(tmpdir)` plus the boot parts in a temp dir, rename it into place,
    and make it current. Nothing half-made is ever at the final path, and a published dir is never changed (a
    VM's overlay names its base by path): `fresh` makes a new dir beside an existing one."""
    versions = _versions()
    versions.mkdir(parents=True, exist_ok=True)
    name = _safe(f"{source}-{version}")
    final = versions / name
    if fresh and final.exists():
        name = f"{name}.{dt.datetime.now(dt.UTC).strftime('%Y%m%dT%H%M%S%f')}"
        final = versions / name
    if _read_image(final) is None:
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.new-", dir=versions))
        try:
            fill(tmp)
            kernel, initrd, cmdline = _boot_parts()
            prefix = tmp / DEV_IMAGE_NAME
            shutil.copyfile(kernel, f"{prefix}-kernel")
            shutil.copyfile(initrd, f"{prefix}-initrd.img")
            Path(f"{prefix}-cmdline").write_text(cmdline + "\n", encoding="utf-8")
            meta = {"name": DEV_IMAGE_NAME, "version": version, "source": source, **extra,
                    "installed_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}  # fmt: skip
            atomic_write(tmp / _MANIFEST, json.dumps(meta, indent=1) + "\n")
            if final.exists():  # an incomplete leftover (its manifest or files are missing): set it aside
                os.replace(final, Path(tempfile.mkdtemp(prefix=f".{name}.old-", dir=versions)) / "old")
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    atomic_write(dev_image_dir() / "current", name + "\n")
    image = _read_image(final)
    if image is None:
        raise ImageError(f"{final} is incomplete after installing; run dev.install --force")
    _prune(keep=final)
    return image


def _prune(keep: Path) -> None:
    """Drop old versions no VM was booted from (a VM's overlay needs its base; those stay until the VM goes)."""
    from lkctl.runtime import state

    used = {r.image for r in state.listed_records()}
    for vdir in _versions().iterdir():
        if vdir == keep:
            continue
        if vdir.name.startswith("."):  # leftovers of an interrupted install (installs hold the lock, so not one now)
            shutil.rmtree(vdir, ignore_errors=True)
            continue
        if not any(u == str(vdir / DEV_IMAGE_NAME) or u.startswith(f"{vdir}/") for u in used):
            shutil.rmtree(vdir, ignore_errors=True)


def _build_local(force: bool) -> DevImage:
    from lkctl.debpackages import installed_packages
    from lkctl.dev.rootdisk import build_root_disk, chosen_packages, load_disk_recipe

    version, root_fp = local_dev_version()
    current = installed_dev_image()
    if current is not None and not force and current.source == _LOCAL and current.version == version:
        return current
    disk_name = f"{DEV_IMAGE_NAME}{_ROOT_SUFFIXES['qcow2']}"
    cached = _cached_root(root_fp)

    def fill(tmp: Path) -> None:
        with file_lock(cached.parent / ".build.lock"):
            if force or not cached.is_file():
                recipe = load_disk_recipe()
                build_root_disk(recipe, cached, root_fp, names=chosen_packages(recipe, installed_packages()))
                _prune_cached_roots(keep=cached)
        _link_or_copy(cached, tmp / disk_name)

    return _publish(version, _LOCAL, fill, {"root_fingerprint": root_fp}, fresh=force)


def _settings(settings: Settings | None) -> Settings:
    from lkctl.settings import load_settings

    return settings or load_settings()


def _pull(source: str, settings: Settings, force: bool, version: str | None = None) -> DevImage:
    from lkctl.runtime.disks import detect_format
    from lkctl.sources import Platform, SourceNotFound, opened_sources

    platform = Platform.host()
    errors = []
    not_found = True
    with opened_sources(settings.sources, source) as sources:
        for src in sources:
            try:
                dl = src.resolve(DEV_IMAGE_NAME, version, platform)
            except ImageError as e:
                not_found = not_found and isinstance(e, SourceNotFound)
                errors.append(f"{src.name}: {e.message}")
                continue
            current = installed_dev_image()
            if current is not None and not force and (current.source, current.version) == (src.name, dl.version):
                return current
            staging = dev_image_dir() / ".downloads" / _safe(f"{src.name}-{dl.version}")

            def fill(tmp: Path, src: Any = src, dl: Any = dl, staging: Path = staging) -> None:
                fetched = src.download(dl, staging)
                fmt = detect_format(fetched.path)
                if fmt is None or fmt.value not in _ROOT_SUFFIXES:
                    raise ImageError(f"{dl.file_name} from {src.name} is not a qcow2 or raw disk image")
                os.replace(fetched.path, tmp / f"{DEV_IMAGE_NAME}{_ROOT_SUFFIXES[fmt.value]}")
                shutil.rmtree(staging, ignore_errors=True)

            return _publish(dl.version, src.name, fill, {"sha256": dl.sha256, "file": dl.file_name})
    kind = SourceNotFound if not_found else ImageError
    raise kind(f"cannot pull {DEV_IMAGE_NAME}: " + ("; ".join(errors) or "no image source to try"))


def install_dev_image(*, source: str | None = None, force: bool = False, settings: Settings | None = None) -> DevImage:
    """Get the dev image: pulled from the image sources when `source` is given (a name or "auto") or one is
    configured and has it, otherwise built from this machine's packages (`source="local"` always builds).
    Idempotent: the same version already installed is kept unless `force`."""
    settings = _settings(settings)
    with file_lock(dev_image_dir() / ".lock"):
        if source == _LOCAL:
            return _build_local(force)
        if source is None:
            from lkctl.sources import SourceNotFound, select_sources

            try:
                select_sources(settings.sources, "auto")
            except ConfigError:
                return _build_local(force)  # nothing configured: build it here
            try:
                return _pull("auto", settings, force)
            except SourceNotFound as e:  # the configured sources serve other images, not this one
                log.info("%s; building it here", e.message)
                return _build_local(force)
        return _pull(source, settings, force)


def dev_image_update(*, check: bool = False, settings: Settings | None = None) -> tuple[bool, str]:
    """(update available, or applied; a one-line message). A local build is out of date when its recipe, the
    packages it is made of, or lkctl's kernel/init changed; a pulled one when its source has a newer version."""
    settings = _settings(settings)
    current = installed_dev_image()
    if current is None:
        if check:
            return True, f"no dev image installed; dev.install gets {DEV_IMAGE_NAME}"
        new = install_dev_image(settings=settings)
        return True, f"installed {DEV_IMAGE_NAME} {new.version} ({new.source})"
    if current.source == _LOCAL:
        version, _ = local_dev_version()
        if version == current.version:
            return False, f"{DEV_IMAGE_NAME} {current.version} is up to date with this machine's packages"
        if check:
            return True, f"{DEV_IMAGE_NAME} {current.version} is out of date (recipe, packages or kernel changed)"
        new = install_dev_image(source=_LOCAL, settings=settings)
        return True, f"rebuilt {DEV_IMAGE_NAME}: {current.version} -> {new.version}"
    from lkctl.sources import Platform, compare_versions, opened_sources

    with opened_sources(settings.sources, current.source) as sources:
        latest = sources[0].latest_version(DEV_IMAGE_NAME, Platform.host())
    cmp = compare_versions(latest, current.version)
    newer = cmp > 0 if cmp is not None else latest != current.version
    if not newer:
        return False, f"{DEV_IMAGE_NAME} {current.version} from {current.source} is up to date"
    if check:
        return True, f"{DEV_IMAGE_NAME} {latest} is available from {current.source} (installed: {current.version})"
    with file_lock(dev_image_dir() / ".lock"):
        new = _pull(current.source, settings, False, latest)
    return True, f"updated {DEV_IMAGE_NAME}: {current.version} -> {new.version} from {new.source}"

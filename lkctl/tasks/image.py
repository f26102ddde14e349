"""image.*: build, ls, base, pull, update, rm."""

from __future__ import annotations

import json as _json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from invoke.collection import Collection
from invoke.context import Context
from invoke.tasks import task

from lkctl.tasks._adapter import adapt, parse_vars, settings_from
from lkctl.tasks._format import table

if TYPE_CHECKING:
    from lkctl.installed import PullResult
    from lkctl.sources import Download, ProgressFn

__all__ = ["base", "build", "ls", "pull", "rm", "update"]


@task(
    iterable=["file", "var"],
    help={
        "source": "a template name (e.g. minimal) or a LinuxKit YAML file",
        "file": "more LinuxKit YAML files merged after SOURCE (repeatable), as `linuxkit build a.yml b.yml`",
        "name": "output name (default: the template or file name)",
        "out": "directory for <name>-kernel, <name>-initrd.img, <name>-cmdline (default: lkctl's build cache)",
        "var": "template variable NAME=VALUE (repeatable)",
    },
)
@adapt
def build(
    c: Context, source: str, file: list[str] | None = None, name: str = "", out: str = "", var: list[str] | None = None
) -> None:
    """Build a LinuxKit image (kernel+initrd) from a template or YAML files."""
    from lkctl.errors import ImageError
    from lkctl.images import build_spec_files, build_template
    from lkctl.templates import find_template

    out_dir = Path(out) if out else None
    extra = [Path(f) for f in file or []]
    template = None if Path(source).suffix in (".yml", ".yaml") else find_template(source)
    if template is not None and not extra:
        result = build_template(template, parse_vars(var), out_dir=out_dir)
    else:
        first = Path(source)
        if not first.is_file():
            raise ImageError(f"{source} is neither a template nor a LinuxKit YAML file")
        result = build_spec_files([first, *extra], name=name or first.stem, out_dir=out_dir)
    state = "unchanged, from cache" if result.cached else "built"
    print(f"lkctl: {state}: {result.kernel}, {result.initrd}", file=sys.stderr)
    print(Path(str(result.kernel)[: -len("-kernel")]))


@task(help={"json": "print JSON"})
@adapt
def ls(c: Context, json: bool = False) -> None:
    """List images: installed images and OCI images in the local store."""
    from lkctl.images import list_images

    images = list_images()
    if json:
        print(_json.dumps([{"name": i.name, "kind": i.kind, "detail": i.detail} for i in images], indent=2))
        return
    if not images:
        print("no images (lkctl image.base makes the base images)", file=sys.stderr)
        return
    print(table(["NAME", "KIND", "DETAIL"], [[i.name, i.kind, i.detail] for i in images]))


@task(help={"force": "rebuild even if up to date"})
@adapt
def base(c: Context, force: bool = False) -> None:
    """Make lkctl's base images (kernel, init, sshd) from this machine's packages."""
    from lkctl.baseimages import build_all
    from lkctl.images import store

    done = build_all(store(), force=force)
    print(f"lkctl: {'built ' + ', '.join(done) if done else 'base images are up to date'}", file=sys.stderr)


def _reporters(quiet: bool) -> tuple[Callable[[Download], ProgressFn | None], Callable[[bool], None]]:
    """A progress factory for pull_image (one reporter per download) and a function that ends the last one."""
    from lkctl.progress import ProgressReporter

    current: list[ProgressReporter] = []

    def factory(dl: Download) -> ProgressFn:
        end(False)
        r = ProgressReporter(f"{dl.image} {dl.version} ({dl.source})", quiet=quiet)
        current.append(r)
        return r

    def end(ok: bool) -> None:
        while current:
            r = current.pop()
            r.finish() if ok else r.abort()

    return factory, end


def _say_pulled(result: PullResult, quiet: bool) -> None:
    from lkctl.progress import format_size

    img = result.image
    if not quiet:
        for reason in result.skipped:
            print(f"lkctl: skipped {reason}", file=sys.stderr)
        state = "pulled" if result.downloaded else "already installed"
        print(
            f"lkctl: {state} {img.name} {img.version} from {result.source} "
            f"({format_size(img.size)}, sha256 {img.sha256[:12]})",
            file=sys.stderr,
        )
    print(img.path)


@task(
    help={
        "name": "NAME or NAME:VERSION (default version: the newest)",
        "source": "auto (lkctl.sources.order) | cdn | github | oci",
        "platform": "OS/ARCH, default this machine's (e.g. linux/amd64)",
        "force": "download again even if this version is installed",
        "quiet": "no progress output",
    }
)
@adapt
def pull(
    c: Context, name: str, source: str = "auto", platform: str = "", force: bool = False, quiet: bool = False
) -> None:
    """Download a prebuilt image (verified, resumable) and install it for vm.run --image=NAME."""
    from lkctl.installed import pull_image
    from lkctl.sources import Platform, opened_sources, split_name

    image, version = split_name(name)
    plat = Platform.parse(platform) if platform else None
    factory, end = _reporters(quiet)
    with opened_sources(settings_from(c).sources, source) as sources:
        try:
            result = pull_image(image, version, sources=sources, platform=plat, progress=factory, force=force)
        except BaseException:
            end(False)
            raise
        end(True)
    _say_pulled(result, quiet)


@task(
    help={
        "name": "one installed image (default: every installed image; invoke has no optional positional args)",
        "check": "only report whether a newer version exists",
        "source": "auto (the image's own source first) | cdn | github | oci",
        "quiet": "no progress output",
    }
)
@adapt
def update(c: Context, name: str = "", check: bool = False, source: str = "auto", quiet: bool = False) -> None:
    """Update installed images to their newest version (--check: only report)."""
    from lkctl.errors import ImageError
    from lkctl.installed import check_update, list_installed, pull_image
    from lkctl.sources import opened_sources

    names = [name] if name else [i.name for i in list_installed()]
    if not names:
        print("lkctl: no installed images (lkctl image.pull NAME)", file=sys.stderr)
        return
    failed = []
    with opened_sources(settings_from(c).sources, source) as sources:
        for n in names:
            try:
                info = check_update(n, sources=sources)
            except ImageError as e:
                if name:
                    raise
                print(f"lkctl: {e.message}", file=sys.stderr)
                failed.append(n)
                continue
            if not info.newer:
                print(f"{n}: {info.current} is up to date ({info.source} has {info.latest})")
                continue
            how = "newer" if info.comparable else "different"
            print(f"{n}: {info.current} -> {info.latest} ({how}, from {info.source})")
            if check:
                continue
            factory, end = _reporters(quiet)
            chosen = [s for s in sources if s.name == info.source]
            try:
                result = pull_image(n, info.latest, sources=chosen, progress=factory)
            except BaseException:
                end(False)
                raise
            end(True)
            _say_pulled(result, quiet)
    if failed:
        raise ImageError(f"could not check {', '.join(failed)}")


@task(help={"name": "an installed image"})
@adapt
def rm(c: Context, name: str) -> None:
    """Remove an installed image."""
    from lkctl.installed import remove_installed

    path = remove_installed(name)
    print(f"lkctl: removed {name} ({path})", file=sys.stderr)


ns = Collection("image", build, ls, base, pull, update, rm)

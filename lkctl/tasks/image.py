"""image.*: build, ls, base, pull, update, rm, import, push, export."""

from __future__ import annotations

import json as _json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from invoke.collection import Collection
from invoke.context import Context

from lkctl.tasks._adapter import adapt, parse_vars, settings_from, task
from lkctl.tasks._format import table

if TYPE_CHECKING:
    from lkctl.installed import PullResult
    from lkctl.runtime.snapshot import PrunedSnapshots
    from lkctl.sources import Download, ProgressFn

__all__ = ["base", "build", "export", "import_", "ls", "prune", "pull", "push", "rm", "update"]


@task(
    iterable=["file", "var", "format"],
    help={
        "source": "a template name (e.g. minimal) or a LinuxKit YAML file",
        "file": "more LinuxKit YAML files merged after SOURCE (repeatable), as `linuxkit build a.yml b.yml`",
        "name": "output name (default: the template or the last file's name)",
        "out": "output directory (default: lkctl's build cache, where --image finds it)",
        "var": "template variable NAME=VALUE (repeatable)",
        "format": "output format, repeatable or comma-separated (default kernel+initrd): "
        "kernel+initrd tar iso-bios iso-efi raw-bios raw-efi qcow2-bios vmdk",
        "size": "disk size for raw-*, qcow2-bios and vmdk, e.g. 2G (default: as needed; qcow2-bios/vmdk 1024M)",
        "arch": "build for this architecture (amd64, arm64; default lkctl.build.arch, else this machine's)",
        "pull": "missing (default: pull images the store lacks) | always | never",
        "decompress_kernel": "write the kernel uncompressed (vmlinux), as linuxkit --decompress-kernel",
    },
)
@adapt
def build(
    c: Context,
    source: str,
    file: list[str] | None = None,
    name: str = "",
    out: str = "",
    var: list[str] | None = None,
    format: list[str] | None = None,
    size: str = "",
    arch: str = "",
    pull: str = "missing",
    decompress_kernel: bool = False,
) -> None:
    """Build a LinuxKit image (any common format) from a template or YAML files."""
    from lkctl.build import BuildOptions
    from lkctl.images import build_source
    from lkctl.templates import inputs_from_settings

    formats = [f.strip() for item in format or [] for f in item.split(",") if f.strip()] or ["kernel+initrd"]
    settings = settings_from(c)
    arch_from = "--arch" if arch else "lkctl.build.arch"
    arch = arch or settings.build.arch
    if size or arch:
        from lkctl.flags import parse_arch, parse_size  # not imported when not needed: see lkctl.build.receipt

    arch = parse_arch(arch, what=arch_from) if arch else ""
    if arch and arch_from != "--arch":
        from lkctl.build import host_arch

        arch = "" if arch == host_arch() else arch  # this machine's: the build --image makes and finds
    options = BuildOptions(
        formats=tuple(formats),
        size=parse_size(size, what="--size") if size else None,
        arch=arch or None,
        pull=pull,
        decompress_kernel=decompress_kernel,
    )
    extra = [Path(f) for f in file or []]
    out_dir = Path(out) if out else None
    inputs = inputs_from_settings(settings.templates, parse_vars(var))  # as vm.run --image takes them
    from lkctl.progress import Ticker

    with Ticker(f"building {source}"):
        result = build_source(source, extra, variables=inputs, name=name, out_dir=out_dir, options=options)
    files = [p for f in formats for p in result.outputs[f]]
    state = "unchanged, from cache" if result.cached else f"built {', '.join(result.built)}"
    print(f"lkctl: {state}: {', '.join(str(p) for p in files)}", file=sys.stderr)
    if formats == ["kernel+initrd"]:
        print(result.prefix)  # the prefix `vm.run --image` takes
    else:
        print("\n".join(str(p) for p in files))


@task(help={"json": "print JSON"})
@adapt
def ls(c: Context, json: bool = False) -> None:
    """List images: installed, OCI images in the local store, and built ones in the cache (size, created)."""
    from lkctl.catalog import list_images
    from lkctl.progress import format_size
    from lkctl.tasks._format import age

    images = list_images()
    if json:
        rows = [{"name": i.name, "kind": i.kind, "detail": i.detail, "size": i.size, "created": i.created or None}
                for i in images]  # fmt: skip
        print(_json.dumps(rows, indent=2))
        return
    if not images:
        print("no images (lkctl image.base makes the base images)", file=sys.stderr)
        return
    body = [
        [i.name, i.kind, "-" if i.size is None else format_size(i.size), age(i.created) if i.created else "-", i.detail]
        for i in images
    ]
    print(table(["NAME", "KIND", "SIZE", "CREATED", "DETAIL"], body))


@task(help={"force": "rebuild even if up to date"})
@adapt
def base(c: Context, force: bool = False) -> None:
    """Make lkctl's base images (kernel, init, sshd) from this machine's packages."""
    from lkctl.baseimages import build_all
    from lkctl.images import store
    from lkctl.progress import Ticker

    with Ticker("building the base images from this machine's packages"):
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
        "name": "an installed image NAME[:VERSION], or an OCI reference (REGISTRY/REPO[:TAG|@DIGEST])",
        "source": "auto (lkctl.sources.order) | cdn | github | oci (installed images only)",
        "platform": "OS/ARCH, default this machine's (e.g. linux/amd64)",
        "force": "download again even if this version is installed (installed images only)",
        "quiet": "no progress output",
        "oci": "NAME is an OCI image to pull into the image store (implied when NAME has a / or @)",
        "all_platforms": "OCI: pull every platform of an index, not just --platform",
    }
)
@adapt
def pull(
    c: Context,
    name: str,
    source: str = "auto",
    platform: str = "",
    force: bool = False,
    quiet: bool = False,
    oci: bool = False,
    all_platforms: bool = False,
) -> None:
    """Pull a prebuilt VM image, or an OCI image (--oci) into the image store."""
    from lkctl.oci.pull import is_oci_reference

    if oci or is_oci_reference(name):
        _pull_oci(c, name, platform, all_platforms, quiet)
        return
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


def _insecure(c: Context) -> list[str]:
    from lkctl.sources import insecure_registries

    return insecure_registries(settings_from(c).sources)


def _pull_oci(c: Context, ref: str, platform: str, all_platforms: bool, quiet: bool) -> None:
    from lkctl.images import store
    from lkctl.oci.pull import pull_image
    from lkctl.progress import ProgressReporter, format_size
    from lkctl.sources import Platform

    reporter = ProgressReporter(ref, quiet=quiet)
    plats = [Platform.parse(platform)] if platform else None
    try:
        result = pull_image(
            ref, store(), platforms=plats, all_platforms=all_platforms, insecure=_insecure(c), progress=reporter
        )
    except BaseException:
        reporter.abort()
        raise
    reporter.finish()
    if not quiet:
        what = ", ".join(result.platforms) or "single-platform image"
        size = format_size(result.fetched_bytes)
        print(f"lkctl: pulled {result.name} ({what}): {result.fetched} blobs, {size}", file=sys.stderr)
    print(f"{result.name}@{result.digest}")


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
    from lkctl.installed import UpdateCheck, update_installed
    from lkctl.sources import opened_sources

    def checked(info: UpdateCheck) -> None:
        if not info.newer:
            print(f"{info.name}: {info.current} is up to date ({info.source} has {info.latest})")
            return
        how = "newer" if info.comparable else "different"
        print(f"{info.name}: {info.current} -> {info.latest} ({how}, from {info.source})")

    def pulled(result: PullResult) -> None:
        end(True)
        _say_pulled(result, quiet)

    def skipped(_name: str, e: ImageError) -> None:
        print(f"lkctl: {e.message}", file=sys.stderr)

    factory, end = _reporters(quiet)
    with opened_sources(settings_from(c).sources, source) as sources:
        try:
            done = update_installed(
                name, sources=sources, check_only=check, progress=factory,
                on_check=checked, on_pulled=pulled, on_skip=skipped,
            )  # fmt: skip
        except BaseException:
            end(False)
            raise
    if not done:
        print("lkctl: no installed images (lkctl image.pull NAME)", file=sys.stderr)


@task(help={"name": "an installed image, or an OCI image in the store (NAME with a / or @, or --oci)",
            "oci": "NAME is an OCI image in the local store"})  # fmt: skip
@adapt
def rm(c: Context, name: str, oci: bool = False) -> None:
    """Remove an installed image, or an OCI image from the image store."""
    from lkctl.oci.pull import is_oci_reference

    if oci or is_oci_reference(name):
        from lkctl.images import store

        deleted = store().remove(name)
        print(f"lkctl: removed {name} ({len(deleted)} blobs no other image uses)", file=sys.stderr)
        return
    from lkctl.installed import remove_installed
    from lkctl.runtime.snapshot import prune_snapshots

    path = remove_installed(name)
    print(f"lkctl: removed {name} ({path})", file=sys.stderr)
    pruned = prune_snapshots()  # the image's snapshots can no longer be restored
    if pruned.removed:
        print(_snapshots_line(pruned), file=sys.stderr)


@task(
    name="import",
    help={
        "src": "an OCI layout (dir or tar), a docker-archive tarball, or a root filesystem (dir or tar[.gz])",
        "ref": "name for the image (required for a root filesystem; else taken from the archive)",
        "arch": "architecture recorded for a root filesystem (default this machine's)",
    },
)
@adapt
def import_(c: Context, src: str, ref: str = "", arch: str = "") -> None:
    """Import an OCI layout, docker-archive or root filesystem as an image."""
    from lkctl.build import host_arch
    from lkctl.flags import parse_arch
    from lkctl.images import store
    from lkctl.oci.archive import import_archive
    from lkctl.oci.reference import parse_reference

    if ref:
        parse_reference(ref)  # a bad name is refused before anything is read or stored
    machine = parse_arch(arch) if arch else host_arch()
    for n in import_archive(Path(src), store(), ref=ref or None, arch=machine):
        print(n)


@task
@adapt
def prune(c: Context) -> None:
    """Remove build outputs no VM uses, snapshots no VM can restore, and what killed builds left (rebuilt on demand)."""
    from lkctl.images import prune_builds
    from lkctl.runtime.snapshot import prune_snapshots

    removed = prune_builds()
    print(f"lkctl: removed {len(removed)} build output(s)" + "".join(f"\n  {p}" for p in removed), file=sys.stderr)
    print(_snapshots_line(prune_snapshots()), file=sys.stderr)


def _snapshots_line(pruned: PrunedSnapshots) -> str:
    left = pruned.left
    return (
        f"lkctl: removed {len(pruned.removed)} memory snapshot(s) no VM can restore, {pruned.freed / 2**20:.0f} MiB "
        f"freed; {left.count} kept ({left.size / 2**20:.0f} MiB in {left.directory})"
    )


@task(help={"ref": "an image in the local store", "to": "push under this reference instead (REGISTRY/REPO:TAG)"})
@adapt
def push(c: Context, ref: str, to: str = "") -> None:
    """Push an image from the local image store to a registry."""
    from lkctl.images import store
    from lkctl.oci.pull import push_image

    result = push_image(ref, store(), to=to or None, insecure=_insecure(c))
    print(f"lkctl: pushed {result.name} ({result.pushed} blobs/manifests checked)", file=sys.stderr)
    print(f"{result.name}@{result.digest}")


@task(
    help={
        "ref": "an image in the local store",
        "out": "output file (default: stdout)",
        "format": "oci (OCI layout tar) | docker (docker-archive, for docker load) | filesystem (flattened root tar)",
        "platform": "OS/ARCH of an index to export (default this machine's)",
        "name": "the name recorded in the archive (default REF)",
    }
)
@adapt
def export(c: Context, ref: str, out: str = "", format: str = "oci", platform: str = "", name: str = "") -> None:
    """Export an image as an OCI layout, docker-archive or root filesystem."""
    from lkctl.build import host_arch
    from lkctl.images import store
    from lkctl.oci.archive import export_image
    from lkctl.sources import Platform

    arch = Platform.parse(platform).arch if platform else host_arch()
    export_image(ref, store(), Path(out) if out else None, fmt=format, arch=arch, name=name or None)
    if out:
        print(out)


ns = Collection("image", build, ls, base, pull, update, rm, import_, push, export, prune)

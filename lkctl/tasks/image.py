"""image.*: build, ls, base."""

from __future__ import annotations

import json as _json
import sys
from pathlib import Path

from invoke.collection import Collection
from invoke.context import Context
from invoke.tasks import task

from lkctl.tasks._adapter import adapt, parse_vars
from lkctl.tasks._format import table

__all__ = ["base", "build", "ls"]


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


ns = Collection("image", build, ls, base)

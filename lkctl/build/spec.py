"""LinuxKit YAML parsed and validated into frozen dataclasses (`moby/config.go` + `schema.go`, ported).

The dataclasses *are* the schema (a field's YAML key is the camelCase of its name unless `metadata["key"]`
says otherwise): a small type-driven validator walks each one's annotations, so every field is
declared once, unknown keys are refused with their path (`services[2].bindz: unknown key`), and the same
definitions validate the `org.mobyproject.config` image label. Errors are one-line `SpecError`s naming the file.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lkctl.build._schema import Invalid, Loader, kind_of, parse_object, to_json
from lkctl.build.containerconfig import (
    BindNS,
    ContainerConfig,
    Device,
    IdMapping,
    Interface,
    Mount,
    Resources,
    Runtime,
)
from lkctl.errors import ImageError, SpecError
from lkctl.oci.reference import parse_reference
from lkctl.yamlio import load_all

__all__ = [
    "BindNS",
    "Container",
    "ContainerConfig",
    "Device",
    "FileSpec",
    "IdMapping",
    "Interface",
    "KernelSpec",
    "Mount",
    "Resources",
    "Runtime",
    "Spec",
    "Volume",
    "file_source_path",
    "load_spec",
    "merge_specs",
    "parse_container_config",
    "parse_spec",
    "to_json",
]


def _internal(default: Any = "") -> Any:
    """A field that is ours, not a YAML key (not parsed, not normalised, not compared)."""
    return field(default=default, metadata={"internal": True}, compare=False)


@dataclass(frozen=True)
class Container:
    """An `onboot`, `onshutdown` or `services` entry."""

    name: str
    image: str
    config: ContainerConfig = ContainerConfig()  # noqa: RUF009 - frozen: one shared default is safe
    source: str = _internal()


@dataclass(frozen=True)
class KernelSpec:
    image: str = ""
    cmdline: str = ""
    binary: str = ""  # "" means `kernel`
    tar: str | None = None  # None means `kernel.tar`; "" or "none" means no tarball
    ucode: str | None = None

    @property
    def binary_name(self) -> str:
        return self.binary or "kernel"

    @property
    def tar_name(self) -> str:
        """The kernel tarball's name in the image, or "" for none."""
        if self.tar is None:
            return "kernel.tar"
        return "" if self.tar == "none" else self.tar


@dataclass(frozen=True)
class FileSpec:
    path: str = ""
    directory: bool = False
    symlink: str = ""
    contents: str | None = None
    source: str = ""
    metadata: str = ""
    optional: bool = False
    mode: str = ""
    uid: int | str | None = None
    gid: int | str | None = None
    origin: str = _internal()

    @property
    def clean_path(self) -> str:
        return self.path.lstrip("/")

    @property
    def file_mode(self) -> int:
        """Permission bits: `mode`, else 0600 for files and 0700 for directories (LinuxKit's defaults)."""
        if self.mode:
            return int(self.mode, 8)
        return 0o700 if self.directory else 0o600


@dataclass(frozen=True)
class Volume:
    name: str = ""
    image: str = ""
    readonly: bool = False
    format: str = ""
    platforms: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Trust:
    image: tuple[str, ...] | None = None
    org: tuple[str, ...] | None = None


@dataclass(frozen=True)
class _Document:
    kernel: KernelSpec | None = None
    init: tuple[str, ...] | None = None
    onboot: tuple[dict[str, Any], ...] | None = None
    onshutdown: tuple[dict[str, Any], ...] | None = None
    services: tuple[dict[str, Any], ...] | None = None
    trust: _Trust | None = None  # accepted (the schema still has it) and ignored, as LinuxKit does
    files: tuple[FileSpec, ...] | None = None
    volumes: tuple[Volume, ...] | None = None


@dataclass(frozen=True)
class Spec:
    """A whole LinuxKit image description (several YAML files merged)."""

    kernel: KernelSpec = KernelSpec()
    init: tuple[str, ...] = ()
    onboot: tuple[Container, ...] = ()
    onshutdown: tuple[Container, ...] = ()
    services: tuple[Container, ...] = ()
    files: tuple[FileSpec, ...] = ()
    volumes: tuple[Volume, ...] = ()
    sources: tuple[str, ...] = field(default=(), compare=False)

    def id_map(self) -> dict[str, int]:
        """Container name → uid/gid for `uid: <name>`: 100 upwards over onboot, onshutdown, services."""
        ids: dict[str, int] = {}
        for n, c in enumerate((*self.onboot, *self.onshutdown, *self.services)):
            ids[c.name] = 100 + n
        return ids

    def image_refs(self) -> list[str]:
        """Every image the build reads, in build order, without duplicates."""
        refs = [self.kernel.image] if self.kernel.image else []
        refs += [*self.init, *(v.image for v in self.volumes if v.image)]
        refs += [c.image for c in (*self.onboot, *self.onshutdown, *self.services)]
        return list(dict.fromkeys(refs))

    def normalized(self) -> dict[str, Any]:
        """Canonical JSON-able form: references expanded, defaults dropped. Used for cache keys and metadata."""
        kernel = to_json(dataclasses.replace(self.kernel, image=_expand(self.kernel.image)))
        return {
            "kernel": kernel,
            "init": [_expand(r) for r in self.init],
            "onboot": [_container_json(c) for c in self.onboot],
            "onshutdown": [_container_json(c) for c in self.onshutdown],
            "services": [_container_json(c) for c in self.services],
            "files": [to_json(f) for f in self.files],
            "volumes": [to_json(dataclasses.replace(v, image=_expand(v.image))) for v in self.volumes],
        }


def _expand(ref: str) -> str:
    return str(parse_reference(ref)) if ref else ""


def _check_ref(ref: str, path: str) -> None:
    try:
        parse_reference(ref)
    except ImageError as e:
        raise Invalid(path, e.message) from None


_VOLUME_NAME = re.compile(r"^[a-z0-9_-]*$")


def _parse_container(value: Any, path: str, source: str) -> Container:
    if not isinstance(value, dict):
        raise Invalid(path, f"expected a mapping, got {kind_of(value)}")
    for key in ("name", "image"):
        if key not in value:
            raise Invalid(f"{path}.{key}", "required")
        if not isinstance(value[key], str):
            raise Invalid(f"{path}.{key}", f"expected a string, got {kind_of(value[key])}")
    name, image = value["name"], value["image"]
    if not name or "/" in name or name in (".", "..") or "\0" in name:
        raise Invalid(f"{path}.name", f"invalid container name {name!r} (it names a directory in the image)")
    _check_ref(image, f"{path}.image")
    config = parse_object(ContainerConfig, value, path, skip=("name", "image"))
    return Container(name, image, config, source)


def _check_file(f: FileSpec, path: str) -> None:
    if not f.clean_path:
        raise Invalid(f"{path}.path", "required")
    if f.mode:
        try:
            int(f.mode, 8)
        except ValueError:
            raise Invalid(f"{path}.mode", f"{f.mode!r} is not an octal mode") from None
    if f.metadata and f.metadata not in ("yaml", "json"):
        raise Invalid(f"{path}.metadata", f"must be yaml or json, not {f.metadata!r}")
    if f.directory and f.contents is not None:
        raise Invalid(path, "a directory cannot have contents")
    if not f.directory and not f.symlink:
        given = [
            k for k, v in (("contents", f.contents is not None), ("source", f.source), ("metadata", f.metadata)) if v
        ]
        if not given:
            raise Invalid(path, "needs one of contents, source, metadata, directory or symlink")
        if len(given) > 1:
            raise Invalid(path, f"{' and '.join(given)} are mutually exclusive")


def _document_to_spec(doc: Any, source: str) -> Spec:
    if doc is None:
        return Spec(sources=(source,))
    if not isinstance(doc, dict):
        raise Invalid("", f"the document must be a mapping, not {kind_of(doc)}")
    # An empty section (`services:` with nothing under it) is an empty list, not an error.
    parsed: _Document = parse_object(_Document, {k: v for k, v in doc.items() if v is not None}, "")
    kernel = parsed.kernel or KernelSpec()
    if kernel.image:
        _check_ref(kernel.image, "kernel.image")
    for i, ref in enumerate(parsed.init or ()):
        _check_ref(ref, f"init[{i}]")
    sections = {}
    for section in ("onboot", "onshutdown", "services"):
        items = getattr(parsed, section) or ()
        sections[section] = tuple(_parse_container(v, f"{section}[{i}]", source) for i, v in enumerate(items))
    files = tuple(dataclasses.replace(f, origin=source) for f in parsed.files or ())
    for i, f in enumerate(files):
        _check_file(f, f"files[{i}]")
    volumes = parsed.volumes or ()
    names: set[str] = set()
    for i, v in enumerate(volumes):
        if not _VOLUME_NAME.match(v.name):
            raise Invalid(f"volumes[{i}].name", f"invalid volume name {v.name!r} (allowed: a-z 0-9 _ -)")
        if v.name in names:
            raise Invalid(f"volumes[{i}].name", f"duplicate volume name {v.name!r}")
        names.add(v.name)
        if v.format not in ("", "filesystem", "oci"):
            raise Invalid(f"volumes[{i}].format", f"must be filesystem or oci, not {v.format!r}")
        if v.image:
            _check_ref(v.image, f"volumes[{i}].image")
    spec = Spec(kernel, parsed.init or (), files=files, volumes=volumes, sources=(source,), **sections)
    _check_unique_services(spec.services)
    return spec


def _check_unique_services(services: Sequence[Container]) -> None:
    seen: dict[str, int] = {}
    for i, c in enumerate(services):
        if c.name in seen:
            first = services[seen[c.name]].source
            also = f" (also defined in {first})" if first != c.source else ""
            raise SpecError(f"{c.source}: services: duplicate service name {c.name!r}{also}")
        seen[c.name] = i


def parse_spec(text: str, source: str = "<string>") -> Spec:
    """Parse one YAML text (several `---` documents merge in order). `source` names it in errors."""
    try:
        docs = load_all(text, Loader)  # Loader is a SafeLoader
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{source}:{mark.line + 1}" if mark else source
        raise SpecError(f"{where}: invalid YAML: {e.problem or e.context}") from None
    except yaml.YAMLError as e:
        raise SpecError(f"{source}: invalid YAML: {e}") from None
    specs = []
    for doc in docs or [None]:
        try:
            specs.append(_document_to_spec(doc, source))
        except Invalid as e:
            raise SpecError(f"{source}: {e}") from None
    return merge_specs(specs)


def parse_container_config(obj: Any, source: str) -> ContainerConfig:
    """Validate an `org.mobyproject.config` label (already decoded JSON) as a container config."""
    if not isinstance(obj, dict):
        raise SpecError(f"{source}: expected a JSON object, got {kind_of(obj)}")
    for key in ("name", "image"):
        if key in obj:
            raise SpecError(f"{source}: {key} cannot be set in the label")
    try:
        config: ContainerConfig = parse_object(ContainerConfig, obj, "")
    except Invalid as e:
        raise SpecError(f"{source}: {e}") from None
    return config


def merge_specs(specs: Iterable[Spec]) -> Spec:
    """Merge like `linuxkit build a.yml b.yml`: later non-empty kernel fields win, lists concatenate."""
    out = Spec()
    for s in specs:
        k, nk = out.kernel, s.kernel
        kernel = KernelSpec(
            image=nk.image or k.image,
            cmdline=nk.cmdline or k.cmdline,
            binary=nk.binary or k.binary,
            tar=nk.tar if nk.tar is not None else k.tar,
            ucode=nk.ucode if nk.ucode is not None else k.ucode,
        )
        seen_volumes = {v.name for v in out.volumes}
        for v in s.volumes:
            if v.name in seen_volumes:
                raise SpecError(f"{s.sources[-1] if s.sources else '<merge>'}: duplicate volume name {v.name!r}")
        out = Spec(
            kernel,
            out.init + s.init,
            out.onboot + s.onboot,
            out.onshutdown + s.onshutdown,
            out.services + s.services,
            out.files + s.files,
            out.volumes + s.volumes,
            out.sources + tuple(x for x in s.sources if x not in out.sources),
        )
        _check_unique_services(out.services)
    return out


def load_spec(paths: Sequence[Path]) -> Spec:
    """Read and merge LinuxKit YAML files, in order."""
    if not paths:
        raise SpecError("no LinuxKit YAML file given")
    specs = []
    for p in paths:
        try:
            text = Path(p).read_text(encoding="utf-8")
        except OSError as e:
            raise SpecError(f"{p}: cannot read: {e.strerror or e}") from None
        except UnicodeDecodeError as e:
            raise SpecError(f"{p}: not UTF-8 text ({e.reason})") from None
        specs.append(parse_spec(text, str(p)))
    return merge_specs(specs)


def _container_json(c: Container) -> dict[str, Any]:
    return {"name": c.name, "image": _expand(c.image), **to_json(c.config)}


def spec_json(spec: Spec) -> str:
    """The normalised spec as canonical JSON text (sorted keys, no spaces): the cache-key input."""
    return json.dumps(spec.normalized(), sort_keys=True, separators=(",", ":"))


def file_source_path(f: FileSpec) -> str:
    """A `files` entry's `source` as the build reads it (`~/` is the user's home; relative is to the cwd)."""
    return os.path.expanduser(f.source) if f.source.startswith("~/") else f.source

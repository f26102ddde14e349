"""The whole image as one entry stream, in LinuxKit's order: kernel → init → volumes → onboot → onshutdown →
services → files. Every output format is a sink over this stream (`moby/build/build.go: Build`, ported).

The stream comes in two parts so a build can keep the first: `assemble_base` (everything the images give) and
`assemble_files` (the YAML's `files`, which change most often and cost least). The set of directories the base
emitted links the two: a file's missing parents are created only if the base did not already make them.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Union

import yaml

from lkctl.build._entry import DEFAULT_MTIME, Entry, EntryKind, clean_path, parent_dirs
from lkctl.build.ociconfig import config_to_oci, go_json, resolve_id
from lkctl.build.rootfs import RESOLV_SYMLINK, ApkDbMerger, ensure_parents, image_entries, kernel_entries
from lkctl.build.shellconfig import INIT_UNREAD, shell_assignments
from lkctl.build.spec import Container, Spec, Volume, file_source_path
from lkctl.errors import BuildError, ImageError, SpecError
from lkctl.oci.layout import REF_ANNOTATION, Image, Store
from lkctl.oci.reference import parse_reference

__all__ = [
    "ImageRun",
    "assemble",
    "assemble_base",
    "assemble_base_items",
    "assemble_files",
    "metadata_bytes",
]

Item = Union[Entry, "ImageRun"]


@dataclass
class ImageRun:
    """One image's entries at one place in the tree: the unit the initrd writer keeps compressed, by `key`.

    `entries` is lazy (nothing is read until iterated) and self-contained: parents inside the run come before
    their children whatever came earlier, so its bytes do not depend on the rest of the build. Whoever consumes
    it sets `added`/`removed`: the directories the entries after it can take as existing (or no longer)."""

    key: str
    entries: Iterator[Entry]
    apk: ApkDbMerger | None = None  # init images: the merger of their package databases
    added: set[str] | None = None
    removed: set[str] | None = None

    def consume(self) -> Iterator[Entry]:
        """The entries, noting the directories they leave behind."""
        added: set[str] = set()
        removed: set[str] = set()
        for e in self.entries:
            if e.kind is EntryKind.DIR:
                added.add(e.path)
                removed.discard(e.path)
            else:
                removed.add(e.path)
                added.discard(e.path)
            yield e
        self.added, self.removed = added, removed


def _run(
    key_parts: list[str], entries: Iterable[Entry], known: Iterable[str], apk: ApkDbMerger | None = None
) -> ImageRun:
    key = hashlib.sha256(json.dumps(["image-run-1", *key_parts]).encode()).hexdigest()
    watched = apk.watch(entries) if apk is not None else entries
    return ImageRun(key, ensure_parents(watched, set(known)), apk)


def _image_run(image: Image, store: Store, prefix: str, *, resolv_symlink: str | None = None,
               apk: ApkDbMerger | None = None) -> ImageRun:  # fmt: skip
    entries = image_entries(image, store, resolv_symlink=resolv_symlink)
    moved = (e.under(prefix) for e in entries) if prefix else entries
    known = [*parent_dirs(prefix), prefix] if prefix else []
    return _run([image.manifest_digest, prefix, resolv_symlink or ""], moved, known, apk)


def assemble(spec: Spec, images: Mapping[str, Image], store: Store) -> Iterator[Entry]:
    """Every entry of the image built from `spec`, parents always before children.

    `images` maps each reference string used in `spec` (as written) to its resolved image.
    """
    dirs: set[str] = set()
    yield from assemble_base(spec, images, store, dirs)
    yield from assemble_files(spec, dirs)


def _flat(items: Iterable[Item]) -> Iterator[Entry]:
    for item in items:
        if isinstance(item, ImageRun):
            yield from item.consume()
        else:
            yield item


def assemble_base(spec: Spec, images: Mapping[str, Image], store: Store, dirs: set[str]) -> Iterator[Entry]:
    """Every entry but the `files` section; `dirs` collects the directories emitted."""
    return ensure_parents(_flat(_sections(spec, images, store)), dirs)


def assemble_base_items(spec: Spec, images: Mapping[str, Image], store: Store, dirs: set[str]) -> Iterator[Item]:
    """`assemble_base` with each image's entries left as an `ImageRun`, for a consumer that may have them
    already compressed. The consumer must set each run's `added`/`removed` before asking for the next item."""
    for item in _sections(spec, images, store):
        if isinstance(item, ImageRun):
            yield item
            if item.added is None or item.removed is None:
                raise BuildError(f"internal: image run {item.key[:12]} was not consumed")
            dirs.update(item.added)
            dirs.difference_update(item.removed)
        else:
            yield from ensure_parents([item], dirs)


def assemble_files(spec: Spec, dirs: set[str]) -> Iterator[Entry]:
    """The `files` section, after a base that emitted the directories in `dirs` (updated as it goes)."""
    return ensure_parents(_files(spec, dirs, spec.id_map()), dirs)


def _dir(path: str, mode: int = 0o755) -> Entry:
    return Entry(path, EntryKind.DIR, mode)


def _blob(path: str, content: bytes, mode: int = 0o644) -> Entry:
    return Entry(path, EntryKind.FILE, mode, size=len(content), data=io.BytesIO(content))


def _sections(spec: Spec, images: Mapping[str, Image], store: Store) -> Iterator[Item]:
    if spec.kernel.image:
        k = spec.kernel
        image = images[k.image]
        yield _dir("boot")
        yield _blob("boot/cmdline", k.cmdline.encode())
        key = [image.manifest_digest, k.binary_name, k.tar_name or "", k.ucode or ""]
        yield _run(key, kernel_entries(image, store, k, boot=False), ["boot"])

    apk = ApkDbMerger()
    for ref in spec.init:
        yield _image_run(images[ref], store, "", resolv_symlink=RESOLV_SYMLINK, apk=apk)
    yield from apk.merged()

    for vol in spec.volumes:
        yield from _volume(vol, images, store)

    id_map = spec.id_map()
    volumes = {v.name: v for v in spec.volumes}
    extracted: dict[str, str] = {}  # image → where it was first unpacked; later bundles reuse it
    for section, items in (("onboot", spec.onboot), ("onshutdown", spec.onshutdown)):
        for i, c in enumerate(items):
            yield from _bundle(
                c,
                f"containers/{section}/{i:03d}-{c.name}",
                f"{section}[{i}]",
                images,
                store,
                extracted,
                id_map,
                volumes,
            )
    for i, c in enumerate(spec.services):
        yield from _bundle(
            c, f"containers/services/{c.name}", f"services[{i}]", images, store, extracted, id_map, volumes
        )


def _volume(vol: Volume, images: Mapping[str, Image], store: Store) -> Iterator[Item]:
    base = f"containers/volumes/{vol.name}"
    yield _dir(f"{base}/lower")
    if vol.image and vol.format == "oci":
        yield from (e.under(f"{base}/lower") for e in _oci_layout(vol, images[vol.image], store))
    elif vol.image:
        yield _image_run(images[vol.image], store, f"{base}/lower", resolv_symlink=RESOLV_SYMLINK)
    yield _dir(f"{base}/tmp")
    yield _dir(f"{base}/merged")


def _platform_matches(platform: Mapping[str, Any] | None, wanted: str) -> bool:
    os_name, _, rest = wanted.partition("/")
    arch, _, variant = rest.partition("/")
    p = platform or {}
    return p.get("os") == os_name and p.get("architecture") == arch and (not variant or p.get("variant") == variant)


def _oci_layout(vol: Volume, image: Image, store: Store) -> Iterator[Entry]:
    """`format: oci`: the image as an OCI image layout (LinuxKit's ImageOCITar) for a guest-side runtime to load.

    The root (manifest or index) is kept as stored so its digest still matches the reference; of an index, the
    manifests for `platforms` are written (default: the platform this build resolved)."""
    where = f"volume {vol.name!r} (image {vol.image})"
    root = store.lookup(vol.image)
    if root is None:
        raise BuildError(f"{where}: not in the image store")
    doc = store.read_json(root.digest)
    if "manifests" in doc:
        children = [
            str(m["digest"])
            for m in doc.get("manifests") or []
            if (m["digest"] == image.manifest_digest and not vol.platforms)
            or any(_platform_matches(m.get("platform"), p) for p in vol.platforms)
        ]
        missing = [
            p for p in vol.platforms if not any(_platform_matches(m.get("platform"), p) for m in doc["manifests"])
        ]
        if missing:
            raise BuildError(f"{where}: the image has no {', '.join(missing)} variant")
    else:
        children = []
    blobs = [root.digest]
    for digest in children or [root.digest]:
        manifest = store.read_json(digest) if digest != root.digest else doc
        if digest != root.digest:
            blobs.append(digest)
        blobs += [manifest["config"]["digest"], *(layer["digest"] for layer in manifest.get("layers") or [])]
    index = {
        "schemaVersion": 2,
        "manifests": [{**root.to_json(), "annotations": {REF_ANNOTATION: str(parse_reference(vol.image))}}],
    }
    yield _blob("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
    yield _blob("index.json", go_json(index))
    for digest in dict.fromkeys(blobs):
        try:
            f = store.open_blob(digest)
        except ImageError:
            raise BuildError(
                f"{where}: blob {digest} is not in the image store; pull the image for every platform the volume lists"
            ) from None
        with f:
            size = os.fstat(f.fileno()).st_size
            yield Entry(f"blobs/sha256/{digest.split(':', 1)[1]}", EntryKind.FILE, 0o644, size=size, data=f)


def _bundle(
    c: Container,
    prefix: str,
    where: str,
    images: Mapping[str, Image],
    store: Store,
    extracted: dict[str, str],
    id_map: Mapping[str, int],
    volumes: Mapping[str, Volume],
) -> Iterator[Item]:
    """An OCI bundle as LinuxKit lays it out: config.json, runtime.json and the root filesystem, either
    `rootfs/` (read-only) or `lower/` + `tmp/` + `rootfs/` overlaid at boot by the runtime mounts."""
    image = images[c.image]
    src = c.source or "<spec>"
    try:
        oci, runtime = config_to_oci(
            c, image.config.get("config") or {}, id_map, volumes=volumes, where=f"{where} {c.name}"
        )
    except SpecError as e:
        raise SpecError(f"{src}: {e.message}") from None
    readonly = bool(oci["root"].get("readonly"))
    key = str(parse_reference(c.image))
    root = extracted.get(key)
    reused = root is not None
    yield _dir(prefix)
    if root is None:
        root = f"{prefix}/{'rootfs' if readonly else 'lower'}"
        yield _dir(root)
        yield _image_run(image, store, root)
        extracted[key] = root
    config_json = go_json(oci)
    yield _blob(f"{prefix}/config.json", config_json)
    yield _blob(f"{prefix}/config.json.C.sh", shell_assignments(config_json, "C", omit=INIT_UNREAD))  # no awk in init
    if readonly:
        if reused:
            yield _dir(f"{prefix}/rootfs")
        # bind it onto itself even when it is our own copy: runc wants the root to be a mount point
        mounts: list[dict[str, Any]] = [{"destination": f"/{prefix}/rootfs", "source": f"/{root}", "options": ["bind"]}]
    else:
        tmp = f"{prefix}/tmp"
        yield _dir(tmp)
        yield _dir(f"{prefix}/rootfs")
        mounts = [
            {"destination": f"/{tmp}", "type": "tmpfs", "source": "tmpfs"},
            {"destination": f"/{tmp}", "options": ["remount", "private"]},  # nothing else should see the layers
            {
                "destination": f"/{prefix}/rootfs",
                "type": "overlay",
                "source": "overlay",
                "options": [f"lowerdir=/{root}", f"upperdir=/{tmp}/upper", f"workdir=/{tmp}/work"],
            },
        ]
    runtime["mounts"] = mounts + runtime["mounts"]
    runtime_json = go_json(runtime)
    yield _blob(f"{prefix}/runtime.json", runtime_json)
    yield _blob(f"{prefix}/runtime.json.R.sh", shell_assignments(runtime_json, "R"))


def metadata_bytes(spec: Spec, kind: str) -> bytes:
    """`metadata: yaml|json`: the resolved configuration, as LinuxKit writes it for the guest to read."""
    doc = spec.normalized()
    if kind == "json":
        return go_json(doc)
    return yaml.safe_dump(doc, sort_keys=False, default_flow_style=False).encode()


def _files(spec: Spec, dirs: set[str], id_map: Mapping[str, int]) -> Iterator[Entry]:
    for i, f in enumerate(spec.files):
        where = f"{f.origin or '<spec>'}: files[{i}] ({f.path})"
        try:
            path = clean_path(f.clean_path, "file path")
        except BuildError as e:
            raise SpecError(f"{where}: {e.message}") from None
        mode = f.file_mode
        uid, gid = resolve_id(f.uid, id_map, where), resolve_id(f.gid, id_map, where)
        opened = None
        if f.directory:
            entry = Entry(path, EntryKind.DIR, mode, uid, gid)
        elif f.symlink:
            entry = Entry(path, EntryKind.SYMLINK, mode, uid, gid, linkname=f.symlink)
        elif f.contents is not None:
            content = f.contents.encode()
            entry = Entry(path, EntryKind.FILE, mode, uid, gid, size=len(content), data=io.BytesIO(content))
        elif f.metadata:
            content = metadata_bytes(spec, f.metadata)
            entry = Entry(path, EntryKind.FILE, mode, uid, gid, size=len(content), data=io.BytesIO(content))
        else:
            source = file_source_path(f)
            try:
                opened = open(source, "rb")  # noqa: SIM115 - closed below, after the entry has been consumed
            except OSError as e:
                if f.optional:
                    continue
                raise BuildError(f"{where}: cannot read source {source}: {e.strerror}") from None
            st = os.fstat(opened.fileno())
            if not stat.S_ISREG(st.st_mode):
                opened.close()
                raise BuildError(f"{where}: source {source} is not a regular file")
            entry = Entry(path, EntryKind.FILE, mode, uid, gid, size=st.st_size, data=opened)
        # Missing parents take the file's owner and its mode with x added wherever r or w is (LinuxKit's dirMode).
        dir_mode = mode
        for bits in (0o700, 0o070, 0o007):
            if mode & bits:
                dir_mode |= bits & 0o111
        try:
            for p in parent_dirs(path):
                if p not in dirs:
                    yield Entry(p, EntryKind.DIR, dir_mode, uid, gid, DEFAULT_MTIME)
            yield entry
        finally:
            if opened is not None:
                opened.close()

"""Images in and out of the store as files: OCI layouts, docker-archive tarballs, root filesystems.

Import takes whatever a user has: an OCI image layout (directory or tar: `skopeo copy ... oci:`, `docker buildx
--output type=oci`, `linuxkit cache export`), a docker-archive tarball (`docker save`, `skopeo copy ...
docker-archive:`), or a plain root filesystem (directory or tar, possibly compressed) that becomes a one-layer
image. Every blob is verified against its digest on the way in. The archive is untrusted: an archive member with
a path that is not a plain relative name is ignored rather than followed, a link where a layout keeps its blobs or
index is refused, and a layout directory's files are opened without following any symlink (`O_NOFOLLOW` on
every component), so an import never copies a host file into the store.

Export writes an OCI layout tar (`docker load` and `linuxkit cache import` read it), a docker-archive, or the
flattened root filesystem as a tar.
"""

from __future__ import annotations

import bz2
import contextlib
import errno
import gzip
import io
import json
import lzma
import os
import stat
import tarfile
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from lkctl.errors import ImageError
from lkctl.fsutil import atomic_output
from lkctl.oci.layout import (
    DOCKER_LAYER_GZIP,
    MEDIA_MANIFEST,
    REF_ANNOTATION,
    Descriptor,
    Store,
)
from lkctl.oci.reference import parse_reference

__all__ = ["EXPORT_FORMATS", "export_image", "import_archive"]

EXPORT_FORMATS = ("oci", "docker", "filesystem")
_CONTAINERD_NAME = "io.containerd.image.name"
_DOCKER_LAYER_TAR = "application/vnd.docker.image.rootfs.diff.tar"
_DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
_MTIME = 1492533000


def _safe_name(name: str) -> str | None:
    parts = [p for p in name.split("/") if p and p != "."]
    return None if not parts or ".." in parts else "/".join(parts)


_LAYOUT_FILES = ("oci-layout", "index.json", "manifest.json")


def _is_layout_file(name: str) -> bool:
    """Where an image archive keeps what an import reads: a link there is an attempt to read a host file."""
    return name in _LAYOUT_FILES or name.startswith("blobs/")


def _unpack(archive: Path, dest: Path) -> None:
    """Regular files of an image archive into `dest` (names checked; links refused where blobs and the index live,
    skipped elsewhere; devices skipped)."""
    try:
        with tarfile.open(archive, "r:*") as tf:
            for m in tf:
                name = _safe_name(m.name)
                if name is not None and (m.issym() or m.islnk()) and _is_layout_file(name):
                    raise ImageError(
                        f"{archive}: {name} is a link to {m.linkname!r}; an image archive's blobs and index must be "
                        "plain files, and lkctl does not follow links in them"
                    )
                if name is None or not m.isreg():
                    continue
                target = dest / name
                target.parent.mkdir(parents=True, exist_ok=True)
                src = tf.extractfile(m)
                assert src is not None
                with src, open(target, "wb") as out:
                    while chunk := src.read(1 << 20):
                        out.write(chunk)
    except (tarfile.TarError, OSError, EOFError) as e:
        raise ImageError(f"{archive}: not a readable tar archive ({_why(e)})") from None


def _name_for(ref: str | None, *candidates: str | None) -> str:
    for c in (ref, *candidates):
        if c:
            try:
                return str(parse_reference(c))
            except ImageError:
                continue
    raise ImageError("the archive does not say what the image is called; name it with --ref NAME:TAG")


def _open_plain(root: Path, rel: str) -> IO[bytes] | None:
    """`root/rel` opened for reading without following a symlink at any component below `root` (None: missing).

    A link or anything but a regular file is refused: an archive must not make lkctl read a host file."""
    parts = rel.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise ImageError(f"{root}: {rel!r} is not a plain path inside the archive")
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW
    fd = os.open(root, os.O_RDONLY | os.O_CLOEXEC | os.O_DIRECTORY)
    try:
        for part in parts[:-1]:
            child = os.open(part, flags | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
        leaf = os.open(parts[-1], flags | os.O_NONBLOCK, dir_fd=fd)  # O_NONBLOCK: a fifo must not hang the open
    except FileNotFoundError:
        return None
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
            raise ImageError(
                f"{root}: {rel} is a symlink (or under one); lkctl does not follow links in an image archive"
            ) from None
        raise ImageError(f"{root}: cannot read {rel} ({e.strerror})") from None
    finally:
        os.close(fd)
    if not stat.S_ISREG(os.fstat(leaf).st_mode):
        os.close(leaf)
        raise ImageError(f"{root}: {rel} is not a regular file")
    return os.fdopen(leaf, "rb")


def _read_plain(root: Path, rel: str) -> bytes | None:
    f = _open_plain(root, rel)
    if f is None:
        return None
    with f:
        return f.read()


def _copy_blob(store: Store, layout: Path, d: Descriptor, *, required: bool = True) -> bool:
    algo, _, hexdigest = d.digest.partition(":")
    if not algo.isalnum() or not hexdigest.isalnum():
        raise ImageError(f"{layout}: {d.digest!r} is not a digest")
    f = _open_plain(layout, f"blobs/{algo}/{hexdigest}")
    if f is None:
        if required:
            raise ImageError(f"{layout}: blob {d.digest} is missing from the layout")
        return False
    with f:
        store.put_blob_stream(f, d.media_type, expected_digest=d.digest)
    return True


def _import_layout(store: Store, layout: Path, ref: str | None) -> list[str]:
    try:
        raw = _read_plain(layout, "index.json")
        if raw is None:
            raise ImageError(f"{layout}: index.json is missing")
        index = json.loads(raw)
    except ValueError as err:
        raise ImageError(f"{layout}: unreadable index.json ({err})") from None
    entries = [e for e in index.get("manifests") or [] if isinstance(e, dict) and "digest" in e]
    if not entries:
        raise ImageError(f"{layout}: index.json names no image")
    if ref and len(entries) > 1:
        raise ImageError(f"{layout}: it holds {len(entries)} images; --ref can name only one")
    names = []
    for e in entries:
        ann = e.get("annotations") or {}
        ref_name = ann.get(REF_ANNOTATION)
        full = ref_name if ref_name and ("/" in ref_name or ":" in ref_name) else None  # a bare tag is no name
        name = _name_for(ref, ann.get(_CONTAINERD_NAME), full)
        root = Descriptor.from_json(e)
        _copy_blob(store, layout, root)
        doc = store.read_json(root.digest)
        manifests = [Descriptor.from_json(m) for m in doc.get("manifests") or []] if "manifests" in doc else [root]
        for m in manifests:
            if m is not root and not _copy_blob(store, layout, m, required=False):
                continue  # an index exported for one platform: the others were never there
            body = store.read_json(m.digest)
            for d in [body.get("config"), *(body.get("layers") or [])]:
                if isinstance(d, dict):
                    _copy_blob(store, layout, Descriptor.from_json(d))
        store.set_ref(name, Descriptor(root.media_type or doc.get("mediaType", MEDIA_MANIFEST), root.digest, root.size))
        names.append(name)
    return names


def _digest_named(name: str) -> str | None:
    """A docker-archive names blobs by digest (`blobs/sha256/HEX`, `HEX.json`, `HEX/layer.tar`): verify it."""
    for part in name.replace(".json", "").split("/"):
        if len(part) == 64 and all(c in "0123456789abcdef" for c in part):
            return f"sha256:{part}"
    return None


def _import_docker(store: Store, root: Path, ref: str | None) -> list[str]:
    try:
        raw = _read_plain(root, "manifest.json")
        if raw is None:
            raise ImageError(f"{root}: manifest.json is missing")
        entries = json.loads(raw)
    except ValueError as err:
        raise ImageError(f"{root}: unreadable manifest.json ({err})") from None
    if ref and len(entries) > 1:
        raise ImageError(f"{root}: it holds {len(entries)} images; --ref can name only one")
    names = []
    for e in entries:
        config_name = _safe_name(e.get("Config", "")) or "-"
        config_bytes = _read_plain(root, config_name)
        if config_bytes is None:
            raise ImageError(f"{root}: config {e.get('Config')!r} is missing")
        config = store.put_blob(config_bytes, _DOCKER_CONFIG)
        named = _digest_named(config_name)
        if named is not None and named != config.digest:
            raise ImageError(f"{root}: config {config_name} does not match its digest (got {config.digest})")
        layers = []
        for layer in e.get("Layers") or []:
            layer_name = _safe_name(layer) or "-"
            f = _open_plain(root, layer_name)
            if f is None:
                raise ImageError(f"{root}: layer {layer!r} is missing")
            with f:
                gz = f.read(2) == b"\x1f\x8b"
                f.seek(0)
                expected = _digest_named(layer_name) if layer_name.startswith("blobs/") else None
                kind = DOCKER_LAYER_GZIP if gz else _DOCKER_LAYER_TAR
                layers.append(store.put_blob_stream(f, kind, expected_digest=expected))
        manifest = {
            "schemaVersion": 2,
            "mediaType": _DOCKER_MANIFEST,
            "config": config.to_json(),
            "layers": [d.to_json() for d in layers],
        }
        mdesc = store.put_blob(json.dumps(manifest, separators=(",", ":")).encode(), _DOCKER_MANIFEST)
        name = _name_for(ref, *(e.get("RepoTags") or []))
        store.set_ref(name, mdesc)
        names.append(name)
    return names


def _rootfs_tar(src: Path, out: IO[bytes]) -> None:
    """A directory as a tar, sorted, owners and modes kept, nothing outside it followed."""
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for dirpath, dirnames, filenames in os.walk(src):
            dirnames.sort()
            for n in sorted(dirnames) + sorted(filenames):
                path = Path(dirpath) / n
                tf.add(path, arcname=str(path.relative_to(src)), recursive=False)


def _decompressed(path: Path) -> IO[bytes]:
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic.startswith(b"\x1f\x8b"):
        return gzip.GzipFile(path, "rb")  # type: ignore[return-value]
    if magic.startswith(b"BZh"):
        return bz2.BZ2File(path, "rb")
    if magic.startswith(b"\xfd7zXZ\x00"):
        return lzma.LZMAFile(path, "rb")
    return open(path, "rb")


def _import_rootfs(store: Store, src: Path, ref: str | None, arch: str) -> list[str]:
    name = _name_for(ref)
    with tempfile.NamedTemporaryFile(dir=store.ingest_dir(), prefix="rootfs.", suffix=".tar") as tmp:
        if src.is_dir():
            _rootfs_tar(src, tmp)
        else:
            try:
                with tarfile.open(src, "r:*") as tf:  # any compression tarfile knows, checked member by member
                    for m in tf:
                        if _safe_name(m.name) is None and m.name not in (".", "./"):
                            raise ImageError(f"{src}: entry {m.name!r} escapes the root")
            except tarfile.TarError as e:
                raise ImageError(f"{src}: not a tar archive ({_why(e)})") from None
            with _decompressed(src) as f:
                while chunk := f.read(1 << 20):
                    tmp.write(chunk)
        tmp.flush()
        layer = store.put_layer_tar(Path(tmp.name))
    store.add_image(name, [layer], architecture=arch)
    return [name]


def import_archive(src: Path, store: Store, *, ref: str | None = None, arch: str = "amd64") -> list[str]:
    """Import `src` (see the module docstring for what it may be) into `store`; returns the names given.

    `ref` names the image (required for a root filesystem, else taken from the archive)."""
    src = Path(src)
    _check_source(src)
    store.ensure()
    try:
        return _import(src, store, ref, arch)
    except (EOFError, OSError, tarfile.TarError, zlib.error, lzma.LZMAError) as e:
        raise ImageError(f"{src}: damaged or truncated archive ({_why(e)})") from None


def _why(e: BaseException) -> str:
    """The error on one line (tarfile lists what each compression method said on lines of their own)."""
    text = (e.strerror if isinstance(e, OSError) and e.strerror else str(e)) or type(e).__name__
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


# what an importable file starts with: tar (ustar magic at 257), gzip, bzip2, xz
_MAGIC = ((b"\x1f\x8b", "gzip"), (b"BZh", "bzip2"), (b"\xfd7zXZ\x00", "xz"))


def _check_source(src: Path) -> None:
    """Refuse what cannot be an image before reading it: a missing path, a device or pipe (`/dev/zero` would be
    read forever), a file that is neither tar nor gzip/bzip2/xz."""
    try:
        st = src.stat()
    except FileNotFoundError:
        raise ImageError(f"{src} does not exist") from None
    except OSError as e:
        raise ImageError(f"{src}: cannot read it ({_why(e)})") from None
    if stat.S_ISDIR(st.st_mode):
        return
    if not stat.S_ISREG(st.st_mode):
        raise ImageError(f"{src} is not a regular file or directory; import an OCI layout, a tar or a directory")
    try:
        with open(src, "rb") as f:
            head = f.read(512)
    except OSError as e:
        raise ImageError(f"{src}: cannot read it ({_why(e)})") from None
    if head[257:262] == b"ustar" or any(head.startswith(magic) for magic, _ in _MAGIC):
        return
    if len(head) == 512 and tarfile.is_tarfile(src):  # a pre-POSIX tar without the ustar magic
        return
    raise ImageError(f"{src} is not a tar archive (plain, gzip, bzip2 or xz), an OCI layout or a directory")


def _import(src: Path, store: Store, ref: str | None, arch: str) -> list[str]:
    with contextlib.ExitStack() as stack:
        root = src
        if src.is_file() and tarfile.is_tarfile(src):
            with tarfile.open(src, "r:*") as tf:
                members = {_safe_name(n) for n in tf.getnames()}
            if members & {"oci-layout", "index.json", "manifest.json"}:
                root = Path(stack.enter_context(tempfile.TemporaryDirectory(dir=store.ingest_dir())))
                _unpack(src, root)
        if root.is_dir() and (root / "oci-layout").is_file() and (root / "index.json").is_file():
            return _import_layout(store, root, ref)
        if root.is_dir() and (root / "manifest.json").is_file():
            return _import_docker(store, root, ref)
        return _import_rootfs(store, src, ref, arch)


def _add_bytes(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    ti = tarfile.TarInfo(name)
    ti.size, ti.mode, ti.mtime = len(data), 0o644, _MTIME
    tf.addfile(ti, io.BytesIO(data))


def _add_blob(tf: tarfile.TarFile, store: Store, digest: str) -> None:
    path = store.blob_path(digest)
    ti = tarfile.TarInfo("blobs/sha256/" + digest.split(":", 1)[1])
    ti.size, ti.mode, ti.mtime = path.stat().st_size, 0o644, _MTIME
    with open(path, "rb") as f:
        tf.addfile(ti, f)


@contextlib.contextmanager
def _output(out: Path | None) -> Iterator[IO[bytes]]:
    if out is None:
        import sys

        if sys.stdout.isatty():  # as `docker save` does: a tar on a terminal is noise, and may hold escapes
            raise ImageError("refusing to write an image archive to a terminal: give --out FILE or redirect stdout")
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    from lkctl.fsutil import unmakeable_dir

    if out.is_dir():
        raise ImageError(f"--out {out} is a directory: name the file to write, e.g. {out / 'image.tar'}")
    if why := unmakeable_dir(out.parent):
        raise ImageError(f"--out {out}: {why}")
    try:
        with atomic_output(Path(out)) as f:
            yield f
    except OSError as e:  # a full disk, a file system that takes no new files: nothing is left at `out`
        raise ImageError(f"cannot write {out}: {e.strerror or e}") from None


def export_image(
    ref: str, store: Store, out: Path | None, *, fmt: str = "oci", arch: str = "amd64", name: str | None = None
) -> str:
    """Write the stored image `ref` (its `arch` variant) to `out` (None: stdout); returns the name recorded.

    `oci`: an OCI layout tar; `docker`: a docker-archive for `docker load`; `filesystem`: the flattened root."""
    if fmt not in EXPORT_FORMATS:
        raise ImageError(f"export format {fmt!r}: expected one of {', '.join(EXPORT_FORMATS)}")
    image = store.resolve(ref, arch=arch)
    recorded = str(parse_reference(name or ref))
    with _output(out) as f:
        if fmt == "filesystem":
            from lkctl.build import TarWriter
            from lkctl.build.rootfs import ensure_parents, flatten

            writer = TarWriter(f)
            for e in ensure_parents(flatten(image, store)):
                writer.add(e)
            writer.close()
            return recorded
        mdesc = Descriptor(image.manifest.get("mediaType") or MEDIA_MANIFEST, image.manifest_digest, 0)
        raw = store.read_blob(mdesc.digest)
        config = image.manifest["config"]["digest"]
        with tarfile.open(fileobj=f, mode="w|", format=tarfile.PAX_FORMAT) as tf:
            if fmt == "oci":
                entry: dict[str, Any] = {"mediaType": mdesc.media_type, "digest": mdesc.digest, "size": len(raw)}
                entry["annotations"] = {REF_ANNOTATION: recorded, _CONTAINERD_NAME: recorded}
                _add_bytes(tf, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
                _add_bytes(tf, "index.json", json.dumps({"schemaVersion": 2, "manifests": [entry]}).encode())
            else:
                layers = ["blobs/sha256/" + d.digest.split(":", 1)[1] for d in image.layers]
                entry = {"Config": "blobs/sha256/" + config.split(":", 1)[1], "RepoTags": [recorded], "Layers": layers}
                _add_bytes(tf, "manifest.json", json.dumps([entry]).encode())
            for digest in dict.fromkeys([mdesc.digest, config, *(d.digest for d in image.layers)]):
                _add_blob(tf, store, digest)
    return recorded

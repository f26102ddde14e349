"""Image layers → one stream of filesystem entries, without extracting anything to disk.

`flatten` walks an image's layers top to bottom and yields each path once (the topmost version), applying OCI
whiteouts: `.wh.<name>` deletes `<name>` and `.wh..wh..opq` empties a directory, both for *lower* layers only
(go-containerregistry, which LinuxKit uses, ignores opaque whiteouts; we do not). Layer blobs are decompressed
and parsed as they stream past, each file's bytes handed on as a reader, and the blob's digest is checked at
the end. The other stages are LinuxKit's: `image_filter` (exclude/replace/touch), `kernel_entries` (kernel image
→ boot/ + kernel.tar), `ensure_parents` (the initramfs unpacker wants parents before children).
"""

from __future__ import annotations

import hashlib
import io
import posixpath
import subprocess
import tarfile
import zlib
from collections.abc import Iterable, Iterator
from typing import IO, Any, cast

from lkctl.build._entry import DEFAULT_MTIME, Entry, EntryKind, Reader, clean_path, parent_dirs
from lkctl.build.spec import KernelSpec
from lkctl.errors import BuildError
from lkctl.oci.layout import Descriptor, Image, Store
from lkctl.proc import find_program

__all__ = [
    "ApkDbMerger",
    "ensure_parents",
    "flatten",
    "image_entries",
    "image_filter",
    "kernel_entries",
    "tar_entries",
]

_CHUNK = 1 << 20
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"

# LinuxKit's ImageTar filters (moby/build/image.go).
_EXCLUDE = frozenset({".dockerenv", "Dockerfile", "dev/console", "dev/pts", "dev/shm", "etc/hostname"})
_HOSTS = (
    b"127.0.0.1       localhost\n::1     localhost ip6-localhost ip6-loopback\nfe00::0 ip6-localnet\n"
    b"ff00::0 ip6-mcastprefix\nff02::1 ip6-allnodes\nff02::2 ip6-allrouters\n"
)
_NO_RESOLV = b"\n# no resolv.conf configured\n"
RESOLV_SYMLINK = "/run/resolvconf/resolv.conf"
_APK_DB = "lib/apk/db/installed"


class _TarStream:
    """A forward-only file object over a (possibly gzipped) blob, for `tarfile` in its seeking mode.

    tarfile's own stream mode re-copies its whole buffer on every 512-byte header read; this keeps one
    decompressed chunk and hands out slices. Seeking backwards is refused, which tarfile never needs when
    members are read in order. The raw (compressed) bytes are hashed as they pass, for the digest check.
    """

    def __init__(self, raw: Reader, what: str, hasher: hashlib._Hash | None = None, *, digest: str = "") -> None:
        self._raw, self._what, self._hash = raw, what, hasher
        self._verified = digest  # checked by whoever made `raw` (a zstd layer is hashed before decompressing)
        self._buf, self._off, self._pos = b"", 0, 0
        self._input = self._raw_chunk()
        if self._input.startswith(_ZSTD_MAGIC):
            raise BuildError(f"{what}: zstd-compressed tar data is only supported as a layer")
        self._gz = zlib.decompressobj(31) if self._input.startswith(_GZIP_MAGIC) else None

    def _raw_chunk(self) -> bytes:
        chunk = self._raw.read(_CHUNK)
        if chunk and self._hash is not None:
            self._hash.update(chunk)
        return chunk

    def _more(self) -> bytes:
        """The next piece of tar bytes; b"" at the end."""
        if self._gz is None:
            data, self._input = self._input or self._raw_chunk(), b""
            return data
        while True:
            if self._gz.eof:  # end of a gzip member: another member may follow (concatenated gzip)
                rest = self._gz.unused_data or self._input or self._raw_chunk()
                self._input = b""
                if not rest.startswith(_GZIP_MAGIC):
                    return b""  # trailing padding after the gzip stream is ignored, like gzip -d does
                self._gz = zlib.decompressobj(31)
                self._input = rest
            data = self._gz.unconsumed_tail or self._input or self._raw_chunk()
            self._input = b""
            if not data:
                raise BuildError(f"{self._what}: truncated gzip data")
            try:
                out = self._gz.decompress(data, _CHUNK)
            except zlib.error as e:
                raise BuildError(f"{self._what}: corrupt gzip data ({e})") from None
            if out:
                return out

    def read(self, n: int = -1, /) -> bytes:
        if n is None or n < 0:
            n = 1 << 62
        buf, off = self._buf, self._off
        if len(buf) - off >= n:
            self._off = off + n
            self._pos += n
            return buf[off : off + n]
        parts = [buf[off:]]
        got = len(buf) - off
        self._buf, self._off = b"", 0
        while got < n:
            chunk = self._more()
            if not chunk:
                break
            need = n - got
            if len(chunk) > need:
                parts.append(chunk[:need])
                self._buf, self._off = chunk, need
                got = n
                break
            parts.append(chunk)
            got += len(chunk)
        self._pos += got
        return b"".join(parts)

    def skip(self, n: int) -> int:
        """Discard up to n bytes without joining them; returns how many were discarded."""
        done = 0
        while done < n:
            avail = len(self._buf) - self._off
            if avail == 0:
                self._buf, self._off = self._more(), 0
                if not self._buf:
                    break
                continue
            step = min(avail, n - done)
            self._off += step
            done += step
        self._pos += done
        return done

    def seek(self, pos: int, whence: int = 0) -> int:
        target = pos if whence == 0 else self._pos + pos if whence == 1 else -1
        if target < self._pos:
            raise io.UnsupportedOperation(f"{self._what}: cannot seek backwards in a layer stream")
        self.skip(target - self._pos)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def at_end(self) -> bool:
        if len(self._buf) - self._off > 0:
            return False
        self._buf, self._off = self._more(), 0
        return not self._buf

    def drain(self) -> None:
        """Read the raw blob to its end (so its digest can be checked)."""
        while self._raw_chunk():
            pass

    def digest(self) -> str:
        return "sha256:" + self._hash.hexdigest() if self._hash is not None else self._verified


class _Window:
    """Exactly `size` bytes of the stream at its current position: one tar member's content."""

    __slots__ = ("_left", "_stream", "_what")

    def __init__(self, stream: _TarStream, size: int, what: str) -> None:
        self._stream, self._left, self._what = stream, size, what

    def read(self, n: int = -1, /) -> bytes:
        if n is None or n < 0 or n > self._left:
            n = self._left
        if n == 0:
            return b""
        data = self._stream.read(n)
        if len(data) < n:
            raise BuildError(f"{self._what}: unexpected end of data")
        self._left -= n
        return data


def _tar_members(stream: _TarStream, what: str) -> Iterator[tuple[tarfile.TarInfo, Reader | None]]:
    """(member, content reader) for each member; the reader is valid until the next member is requested."""
    if stream.at_end():
        return
    try:
        tf = tarfile.TarFile(fileobj=stream, mode="r")  # type: ignore[arg-type]
        count = 0
        while (m := tf.next()) is not None:
            data: Reader | None = None
            if m.isreg():
                data = tf.extractfile(m) if m.sparse is not None else _Window(stream, m.size, f"{what}: {m.name}")
            yield m, data
            count += 1
            if count % 1024 == 0:
                cast(Any, tf).members.clear()  # we never look members up again; don't keep them all in memory
    except (tarfile.TarError, io.UnsupportedOperation, EOFError) as e:
        raise BuildError(f"{what}: unreadable tar data ({e})") from None


def _member_entry(m: tarfile.TarInfo, path: str, data: Reader | None, what: str) -> Entry:
    mode, uid, gid, mtime = m.mode & 0o7777, m.uid, m.gid, max(0, int(m.mtime))
    if m.isreg():
        return Entry(path, EntryKind.FILE, mode, uid, gid, mtime, size=m.size, data=data)
    if m.isdir():
        return Entry(path, EntryKind.DIR, mode, uid, gid, mtime)
    if m.issym():
        return Entry(path, EntryKind.SYMLINK, mode, uid, gid, mtime, linkname=m.linkname)
    if m.islnk():
        # LinuxKit's initrd turns hard links into relative symlinks; doing it here keeps them valid when the
        # tree is moved under a prefix (containers/.../lower) and lets every sink treat them alike.
        try:
            target = clean_path(m.linkname, "hard link target")
        except BuildError:
            raise BuildError(f"{what}: hard link {m.name!r} points outside the root ({m.linkname!r})") from None
        rel = posixpath.relpath("/" + target, "/" + posixpath.dirname(path))
        return Entry(path, EntryKind.SYMLINK, mode or 0o777, uid, gid, mtime, linkname=rel)
    if m.ischr() or m.isblk():
        kind = EntryKind.CHAR if m.ischr() else EntryKind.BLOCK
        return Entry(path, kind, mode, uid, gid, mtime, devmajor=m.devmajor, devminor=m.devminor)
    if m.isfifo():
        return Entry(path, EntryKind.FIFO, mode, uid, gid, mtime)
    raise BuildError(f"{what}: entry {m.name!r} has unsupported tar type {m.type!r}")


def _clean(name: str, what: str) -> str:
    try:
        return clean_path(name)
    except BuildError as e:
        raise BuildError(f"{what}: {e.message}") from None


def tar_entries(raw: Reader, what: str) -> Iterator[Entry]:
    """The entries of one tar (plain or gzip) as they are, names cleaned and hard links made symlinks.
    Used for `kernel.tar`, which LinuxKit appends verbatim."""
    stream = _TarStream(raw, what)
    for m, data in _tar_members(stream, what):
        path = _clean(m.name, what)
        if path:
            yield _member_entry(m, path, data, what)


class _Zstd:
    """A zstd layer decompressed by the `zstd` program (the standard library has no zstd before 3.14).

    The blob is hashed first, so a layer with the wrong digest never reaches the decompressor."""

    def __init__(self, path: str, what: str, digest: str) -> None:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
        if "sha256:" + h.hexdigest() != digest:
            raise BuildError(f"{what}: blob content does not match its digest; remove the image and pull it again")
        self._what = what
        argv = [find_program("zstd"), "-dcq", "--", path]
        self._proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def read(self, n: int = -1, /) -> bytes:
        assert self._proc.stdout is not None
        data = self._proc.stdout.read(n)
        if not data and self._proc.wait() != 0:
            err = self._proc.stderr.read().decode(errors="replace").strip() if self._proc.stderr else ""
            raise BuildError(f"{self._what}: zstd failed: {err or 'exit status ' + str(self._proc.returncode)}")
        return data

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()
        for pipe in (self._proc.stdout, self._proc.stderr):
            if pipe is not None:
                pipe.close()

    def __enter__(self) -> _Zstd:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _layer_stream(store: Store, image: Image, layer: Descriptor) -> tuple[IO[bytes] | _Zstd, _TarStream, str]:
    what = f"image {image.ref}, layer {layer.digest}"
    raw = store.open_blob(layer.digest)
    try:
        if raw.read(4) == _ZSTD_MAGIC:
            raw.close()
            zstd = _Zstd(str(store.blob_path(layer.digest)), what, layer.digest)
            try:
                return zstd, _TarStream(zstd, what, None, digest=layer.digest), what
            except BaseException:
                zstd.close()
                raise
        raw.seek(0)
        return raw, _TarStream(raw, what, hashlib.sha256()), what
    except BaseException:
        raw.close()
        raise


def flatten(image: Image, store: Store) -> Iterator[Entry]:
    """Every path of `image`'s merged filesystem once, topmost layer first (OCI whiteout semantics)."""
    seen: set[str] = set()  # paths already yielded
    nondirs: set[str] = set()  # yielded non-directories: nothing below them can exist
    implied: set[str] = set()  # parents of yielded paths: must stay directories
    deleted: set[str] = set()  # whiteouts of upper layers: the path and everything below it
    opaque: set[str] = set()  # opaque dirs of upper layers: everything below them
    for layer in reversed(image.layers):
        raw, stream, what = _layer_stream(store, image, layer)
        new_deleted: list[str] = []
        own_nondirs: set[str] = set()  # symlinks and files this layer made: nothing of its own may be below them
        new_opaque: list[str] = []
        with raw:
            for m, data in _tar_members(stream, what):
                path = _clean(m.name, what)
                if not path:
                    continue
                slash = path.rfind("/")
                parent, base = (path[:slash], path[slash + 1 :]) if slash >= 0 else ("", path)
                if base.startswith(".wh."):
                    if base == ".wh..wh..opq":
                        new_opaque.append(parent)
                    elif not base.startswith(".wh..wh."):  # other .wh..wh.* are aufs bookkeeping
                        new_deleted.append(f"{parent}/{base[4:]}" if parent else base[4:])
                    continue
                parents = parent_dirs(path)
                through = next((p for p in parents if p in own_nondirs), None)
                if through is not None:  # e.g. `evil -> /etc` then `evil/passwd`: a write through a symlink
                    raise BuildError(f"{what}: entry {m.name!r} lies below {through!r}, which the same layer made "
                                     "a symlink or file")  # fmt: skip
                if path in seen or path in deleted or "" in opaque:
                    if not m.isdir():
                        own_nondirs.add(path)
                    continue
                if any(p in deleted or p in opaque or p in nondirs for p in parents):
                    continue
                entry = _member_entry(m, path, data, what)
                if entry.kind is not EntryKind.DIR:
                    own_nondirs.add(path)
                    if path in implied:
                        continue  # an upper layer has children here, so it is a directory
                    nondirs.add(path)
                seen.add(path)
                implied.update(parents)
                yield entry
            stream.drain()
        if stream.digest() != layer.digest:
            raise BuildError(f"{what}: blob content does not match its digest; remove the image and pull it again")
        deleted.update(new_deleted)
        opaque.update(new_opaque)


def _file(path: str, content: bytes, like: Entry | None = None) -> Entry:
    uid, gid = (like.uid, like.gid) if like else (0, 0)
    mode = like.mode if like is not None and like.kind is EntryKind.FILE else 0o644
    return Entry(path, EntryKind.FILE, mode, uid, gid, DEFAULT_MTIME, len(content), data=io.BytesIO(content))


def image_filter(entries: Iterable[Entry], *, resolv_symlink: str | None = None) -> Iterator[Entry]:
    """LinuxKit's per-image fix-ups: drop docker artefacts, standard /etc/hosts, no (or a symlinked)
    resolv.conf, and make sure dev/, etc/, proc/, sys/ and friends exist."""
    seen: set[str] = set()

    def resolv(like: Entry | None) -> Entry:
        if resolv_symlink:
            return Entry("etc/resolv.conf", EntryKind.SYMLINK, 0o644, linkname=resolv_symlink)
        return _file("etc/resolv.conf", _NO_RESOLV, like)

    for e in entries:
        if e.path in _EXCLUDE:
            continue
        seen.add(e.path)
        if e.path == "etc/hosts":
            yield _file(e.path, _HOSTS, e)
        elif e.path == "etc/resolv.conf":
            yield resolv(e)
        else:
            yield e
    for d in ("dev", "dev/pts", "dev/shm", "etc"):
        if d not in seen:
            yield Entry(d, EntryKind.DIR, 0o755)
    if "etc/hosts" not in seen:
        yield _file("etc/hosts", _HOSTS)
    if "etc/mtab" not in seen:
        yield Entry("etc/mtab", EntryKind.SYMLINK, 0o755, linkname="/proc/mounts")
    if "etc/resolv.conf" not in seen:
        yield resolv(None)
    for d in ("proc", "sys"):
        if d not in seen:
            yield Entry(d, EntryKind.DIR, 0o755)


def image_entries(image: Image, store: Store, *, resolv_symlink: str | None = None) -> Iterator[Entry]:
    """An image's filesystem as LinuxKit lays it into a build: flattened, then filtered."""
    return image_filter(flatten(image, store), resolv_symlink=resolv_symlink)


class ApkDbMerger:
    """Init images each carry `lib/apk/db/installed`; LinuxKit re-emits their concatenation after them all so
    `apk` in the guest knows every package, not just the last image's."""

    def __init__(self) -> None:
        self._dbs: list[bytes] = []

    @property
    def dbs(self) -> list[bytes]:
        """The databases seen so far, in order."""
        return list(self._dbs)

    def add(self, db: bytes) -> None:
        """A database seen without its entries passing through `watch` (an image served from a cache)."""
        self._dbs.append(db)

    def watch(self, entries: Iterable[Entry]) -> Iterator[Entry]:
        for e in entries:
            if e.path == _APK_DB and e.kind is EntryKind.FILE and e.data is not None:
                content = e.data.read(e.size)
                self._dbs.append(content)
                e = Entry(e.path, e.kind, e.mode, e.uid, e.gid, e.mtime, len(content), data=io.BytesIO(content))
            yield e

    def merged(self) -> Iterator[Entry]:
        if len(self._dbs) > 1:
            yield _file(_APK_DB, b"".join(db + b"\n\n" for db in self._dbs))


def kernel_entries(image: Image, store: Store, kernel: KernelSpec, *, boot: bool = True) -> Iterator[Entry]:
    """`boot/` (ucode.cpio first if asked for, cmdline, kernel) plus the kernel tarball's entries at `/`.

    Everything else in the kernel image (headers, System.map, ...) is dropped, as LinuxKit does. `boot=False`:
    the caller emits `boot/` and `boot/cmdline` (which do not come from the image) itself.
    """
    binary = clean_path(kernel.binary_name, "kernel binary")
    tar_name = clean_path(kernel.tar_name, "kernel tar") if kernel.tar_name else ""
    ucode = clean_path(kernel.ucode, "ucode") if kernel.ucode else ""
    where = f"kernel image {image.ref}"
    boot_dir = [Entry("boot", EntryKind.DIR, 0o755)] if boot else []
    if ucode:
        # An extra pass so the microcode leads the stream: it has to precede the compressed initrd.
        for e in flatten(image, store):
            if e.path == ucode and e.kind is EntryKind.FILE and e.data is not None:
                content = e.data.read(e.size)
                break
        else:
            raise BuildError(f"did not find ucode {ucode!r} in {where}")
        yield from boot_dir
        yield Entry("boot/ucode.cpio", EntryKind.FILE, 0o644, size=len(content), data=io.BytesIO(content))
    found_kernel = found_tar = False
    for e in flatten(image, store):
        if e.path == binary:
            if e.kind is not EntryKind.FILE:
                raise BuildError(f"{binary!r} in {where} is not a regular file")
            found_kernel = True
            if not ucode:
                yield from boot_dir
            if boot:
                cmdline = kernel.cmdline.encode()
                yield Entry("boot/cmdline", EntryKind.FILE, 0o644, size=len(cmdline), data=io.BytesIO(cmdline))
            yield Entry("boot/kernel", EntryKind.FILE, e.mode, size=e.size, data=e.data)
        elif tar_name and e.path == tar_name:
            if e.kind is not EntryKind.FILE or e.data is None:
                raise BuildError(f"{tar_name!r} in {where} is not a regular file")
            found_tar = True
            yield from tar_entries(e.data, f"{where}: {tar_name}")
    if not found_kernel:
        raise BuildError(f"did not find kernel {binary!r} in {where}")
    if tar_name and not found_tar:
        raise BuildError(f"did not find kernel tar {tar_name!r} in {where} (set kernel.tar: none if it has none)")


def ensure_parents(entries: Iterable[Entry], dirs: set[str] | None = None) -> Iterator[Entry]:
    """Insert a 0755 directory before any entry whose parent has not gone by yet.

    `dirs` (shared with whoever else needs to know) collects every directory emitted. An entry is never
    dropped: a real directory header that arrives after a synthetic one is passed on and fixes its metadata.
    """
    known = dirs if dirs is not None else set()
    for e in entries:
        path = e.path
        slash = path.rfind("/")
        if slash > 0 and path[:slash] not in known:
            for p in parent_dirs(path):
                if p not in known:
                    known.add(p)
                    yield Entry(p, EntryKind.DIR, 0o755)
        if e.kind is EntryKind.DIR:
            known.add(path)
        else:
            known.discard(path)
        yield e

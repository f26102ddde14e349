"""A build's intermediate products ("parts"), kept beside its outputs so that a rebuild redoes only what changed.

Two kinds of part come out of the entry stream: `initrd` (the kernel, its command line and the gzip cpio initrd:
what every bootable format is made from) and `tar` (the root filesystem as a tar, LinuxKit's `tar` format). Each
is written in two steps, the images' entries then the YAML's `files`, with a checkpoint between them: the
initrd's gzip stream is sync-flushed there (a resumable deflate state: CRC, length, last 32 KiB) and the tar gets
no end marker until the end. `parts.json` records where the checkpoint is and which inputs made each part, so
when only `files` changed the next build copies the bytes up to the checkpoint and appends a new files section:
still one cpio archive in one gzip member, one tar.

A part is reused only if its recorded size and mtime still match (nothing else rewrote it) and its keys match.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import io
import json
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

from lkctl.build._assemble import ImageRun, assemble_base_items, assemble_files
from lkctl.build._entry import Entry, EntryKind
from lkctl.build._fragments import FragmentCache
from lkctl.build._kernel import decompress_kernel
from lkctl.build._tar import TarWriter
from lkctl.build.initrd import GzipState, InitrdCheckpoint, InitrdWriter, is_boot_path
from lkctl.build.spec import Spec
from lkctl.errors import BuildError
from lkctl.fsutil import atomic_write
from lkctl.oci.layout import Image, Store

__all__ = ["KINDS", "Parts", "PartsRequest", "make_parts"]

KINDS = ("initrd", "tar")
_VERSION = 1
_TEE_IN_MEMORY = 64 << 20  # a file bigger than this is spooled to disk when two parts both need its bytes
_BUFFER = 1 << 20


@dataclass(frozen=True)
class Parts:
    """Where the parts are; `kernel`/`initrd` exist if the `initrd` kind was asked for, `tar` for `tar`."""

    dir: Path
    cmdline: str
    kernel: Path
    initrd: Path
    tar: Path


@dataclass(frozen=True)
class PartsRequest:
    kinds: frozenset[str]
    base_key: str  # everything but `files`
    content_key: str  # everything
    level: int
    threads: int | None
    decompress_kernel: bool = False
    fragments: bool = True  # keep and reuse compressed image runs (`_fragments`)


class _Part(Protocol):
    def add(self, e: Entry) -> None: ...

    def open_run(self, run: ImageRun) -> _RunSink | None: ...

    def checkpoint(self) -> None: ...

    def finish(self) -> None: ...

    def abort(self) -> None: ...


def _stat(path: Path) -> list[int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def _copy_prefix(src: Path, dst: IO[bytes], length: int) -> None:
    """The first `length` bytes of `src` into `dst` (in the kernel where it can: copy_file_range)."""
    dst.flush()
    with open(src, "rb") as f:
        done = 0
        with contextlib.suppress(OSError):
            while done < length:
                n = os.copy_file_range(f.fileno(), dst.fileno(), length - done)
                if n == 0:
                    break
                done += n
        f.seek(done)
        dst.seek(done)
        while done < length:
            chunk = f.read(min(_BUFFER, length - done))
            if not chunk:
                raise BuildError(f"{src} is shorter than its recorded checkpoint; rebuild with the cache removed")
            dst.write(chunk)
            done += len(chunk)


class _Staged:
    """Temp files in the parts dir that replace their targets only on `commit()`; removed otherwise."""

    def __init__(self, directory: Path) -> None:
        self._dir = directory
        self._files: list[tuple[Path, Path, IO[bytes]]] = []

    def open(self, target: Path) -> IO[bytes]:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=self._dir)
        f = os.fdopen(fd, "w+b", buffering=_BUFFER)
        self._files.append((target, Path(tmp), f))
        return f

    def commit(self) -> None:
        for _, _, f in self._files:
            f.flush()
            os.fsync(f.fileno())
            f.close()
        for target, tmp, _ in self._files:
            os.chmod(tmp, 0o644)
            os.replace(tmp, target)
        self._files.clear()

    def discard(self) -> None:
        for _, tmp, f in self._files:
            f.close()
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        self._files.clear()


class _InitrdPart:
    """boot/kernel → `kernel`, boot/cmdline → the command line, boot/ucode.cpio leads the initrd uncompressed,
    everything else outside boot/ → the gzip cpio `initrd.img`. Image runs go through the fragment cache."""

    def __init__(
        self,
        staged: _Staged,
        parts: Parts,
        req: PartsRequest,
        resume: Mapping[str, Any] | None,
        fragments: FragmentCache | None,
    ) -> None:
        self._parts, self._req, self._fragments = parts, req, fragments
        self._out = staged.open(parts.initrd)
        self._staged = staged
        self._writer: InitrdWriter | None = None
        self.record: dict[str, Any] = {}
        if resume is not None:
            _copy_prefix(parts.initrd, self._out, int(resume["base_len"]))
            state = GzipState(int(resume["crc"]), int(resume["usize"]), base64.b64decode(resume["tail"]))
            cp = InitrdCheckpoint(state, int(resume["ino"]))
            self._writer = InitrdWriter(self._out, level=req.level, threads=req.threads, resume=cp)
            self.record = {k: resume[k] for k in ("base_len", "crc", "usize", "tail", "ino", "cmdline", "kernel")}
        self.cmdline: str | None = self.record.get("cmdline")
        self._kernel = resume is not None

    def _start(self) -> InitrdWriter:
        if self._writer is None:
            self._writer = InitrdWriter(self._out, level=self._req.level, threads=self._req.threads)
        return self._writer

    def _write_kernel(self, src: Any, size: int) -> None:
        f = self._staged.open(self._parts.kernel)
        if self._req.decompress_kernel:
            data = src.read(size)
            f.write(decompress_kernel(data))
        else:
            _copy(src, f, size, "boot/kernel")
        self._kernel = True

    def _write_ucode(self, content: bytes) -> None:
        if self._writer is not None:
            raise BuildError("boot/ucode.cpio came after the initrd had started")
        self._out.write(content)

    def add(self, e: Entry) -> None:
        if e.path == "boot/kernel":
            self._write_kernel(e.data if e.data is not None else io.BytesIO(), e.size)
        elif e.path == "boot/cmdline":
            self.cmdline = e.data.read(e.size).decode() if e.data is not None else ""
        elif e.path == "boot/ucode.cpio":
            self._write_ucode(e.data.read(e.size) if e.data is not None else b"")
        elif not is_boot_path(e.path):
            self._start().add(e)

    def open_run(self, run: ImageRun) -> _RunSink | None:
        """None when the run's fragment is cached (then it is used here and now); else a sink for its entries."""
        key = hashlib.sha256(f"{run.key}:{self._req.level}".encode()).hexdigest()
        frag = self._fragments.get(key) if self._fragments is not None else None
        if frag is None:
            return _RunFragment(self, run, key, self._fragments or FragmentCache(None))
        if "ucode" in frag.side:
            self._write_ucode((frag.dir / "ucode").read_bytes())
        if "kernel" in frag.side:
            with open(frag.dir / "kernel", "rb") as k:
                self._write_kernel(k, os.fstat(k.fileno()).st_size)
        with open(frag.data, "rb") as data:
            self._start().splice(data, frag.state)
        if run.apk is not None and frag.apk is not None:
            run.apk.add(frag.apk)
        run.added, run.removed = set(frag.added), set(frag.removed)
        return None

    def checkpoint(self) -> None:
        cp = self._start().checkpoint()
        self._out.flush()
        self.record = {
            "base_len": self._out.tell(),
            "crc": cp.gzip.crc,
            "usize": cp.gzip.size,
            "tail": base64.b64encode(cp.gzip.tail).decode(),
            "ino": cp.ino,
            "cmdline": self.cmdline or "",
            "kernel": self._kernel,
        }

    def finish(self) -> None:
        if not self.record.get("kernel"):
            raise BuildError("the build produced no kernel (the YAML needs kernel.image)")
        self._start().close()

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.abort()


class _RunSink(Protocol):
    def add(self, e: Entry) -> None: ...

    def close(self) -> None: ...

    def abort(self) -> None: ...


class _RunFragment:
    """An image run compressed on its own (kept in the fragment cache), then spliced into the initrd."""

    def __init__(self, part: _InitrdPart, run: ImageRun, key: str, cache: FragmentCache) -> None:
        self._part, self._run, self._cache = part, run, cache
        self._stack = contextlib.ExitStack()
        self._draft = self._stack.enter_context(cache.draft(key))
        req = part._req
        self._writer = InitrdWriter(self._draft.data, level=req.level, threads=req.threads, fragment=True)
        self._apk_before = len(run.apk.dbs) if run.apk is not None else 0

    def add(self, e: Entry) -> None:
        if e.path in ("boot/kernel", "boot/ucode.cpio"):
            content = e.data.read(e.size) if e.data is not None else b""
            with self._draft.side("kernel" if e.path == "boot/kernel" else "ucode") as side:
                side.write(content)
            self._part.add(dataclasses.replace(e, data=io.BytesIO(content)))
        elif not is_boot_path(e.path):
            self._writer.add(e)

    def close(self) -> None:
        try:
            state = self._writer.checkpoint().gzip
            self._writer.abort()  # the pool only: a fragment has no trailer
            added, removed = self._run.added, self._run.removed
            assert added is not None and removed is not None
            new_dbs = self._run.apk.dbs[self._apk_before :] if self._run.apk is not None else []
            self._cache.finish(self._draft, state, added, removed, new_dbs[0] if new_dbs else None)
            self._draft.data.flush()
            self._draft.data.seek(0)
            self._part._start().splice(self._draft.data, state)
        except BaseException:
            self.abort()
            raise
        self._stack.close()

    def abort(self) -> None:
        self._writer.abort()
        self._stack.close()


def _copy(src: Any, dst: IO[bytes], size: int, what: str) -> None:
    left = size
    while left:
        chunk = src.read(min(_BUFFER, left))
        if not chunk:
            raise BuildError(f"{what} is shorter than its recorded size ({size - left} < {size})")
        dst.write(chunk)
        left -= len(chunk)


class _TarPart:
    """Every entry, boot/ included, → `rootfs.tar`."""

    def __init__(self, staged: _Staged, parts: Parts, resume: Mapping[str, Any] | None) -> None:
        self._out = staged.open(parts.tar)
        self.record: dict[str, Any] = {}
        if resume is not None:
            _copy_prefix(parts.tar, self._out, int(resume["base_len"]))
            self.record = {"base_len": resume["base_len"]}
        self._writer = TarWriter(self._out)

    def add(self, e: Entry) -> None:
        self._writer.add(e)

    def checkpoint(self) -> None:
        self._out.flush()
        self.record = {"base_len": self._out.tell()}

    def finish(self) -> None:
        self._writer.close()

    def abort(self) -> None:
        pass

    def open_run(self, run: ImageRun) -> _RunSink | None:
        return _Adder(self.add)


class _Adder:
    def __init__(self, add: Any) -> None:
        self.add = add

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


def _feed(items: Iterable[Entry | ImageRun], parts: list[_Part], spool_dir: Path) -> None:
    """Entries to every part; an image run to those that do not have it cached already."""
    for item in items:
        if not isinstance(item, ImageRun):
            _tee([item], parts, spool_dir)
            continue
        sinks = [s for s in (p.open_run(item) for p in parts) if s is not None]
        try:
            if sinks:
                _tee(item.consume(), sinks, spool_dir)
        except BaseException:
            for s in sinks:
                s.abort()
            raise
        for s in sinks:
            s.close()


def _tee(entries: Iterable[Entry], parts: Sequence[_Part | _RunSink], spool_dir: Path) -> None:
    """Give every entry to every part; a file's bytes (readable once) are read once and handed to each."""
    if len(parts) == 1:
        add = parts[0].add
        for e in entries:
            add(e)
        return
    for e in entries:
        if e.kind is not EntryKind.FILE or not e.size or e.data is None:
            for p in parts:
                p.add(e)
        elif e.size <= _TEE_IN_MEMORY:
            content = e.data.read(e.size)
            for p in parts:
                p.add(dataclasses.replace(e, data=io.BytesIO(content)))
        else:
            with tempfile.TemporaryFile(dir=spool_dir) as spool:
                _copy(e.data, spool, e.size, e.path)
                for p in parts:
                    spool.seek(0)
                    p.add(dataclasses.replace(e, data=spool))


def _load(path: Path) -> dict[str, Any]:
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) and state.get("version") == _VERSION else {}


def _reuse(state: Mapping[str, Any], kind: str, parts: Parts, req: PartsRequest) -> str:
    """ "current" (nothing to do), "base" (redo the files section) or "none" for one kind of part."""
    rec = state.get(kind)
    if not isinstance(rec, dict):
        return "none"
    for name, recorded in (rec.get("files") or {}).items():
        if _stat(parts.dir / name) != recorded:
            return "none"
    if not rec.get("files"):
        return "none"
    if rec.get("content_key") == req.content_key:
        return "current"
    if rec.get("base_key") == req.base_key and state.get("dirs_key") == req.base_key and "base_len" in rec:
        return "base"
    return "none"


def make_parts(
    spec: Spec, images: Mapping[str, Image], store: Store, directory: Path, req: PartsRequest
) -> tuple[Parts, str]:
    """Bring the parts `req.kinds` in `directory` up to date with `spec`; returns them and what was assembled:
    "none" (all current), "files" (only the files section) or "all"."""
    directory.mkdir(parents=True, exist_ok=True)
    manifest = directory / "parts.json"
    state = _load(manifest)
    parts = Parts(directory, "", directory / "kernel", directory / "initrd.img", directory / "rootfs.tar")
    reuse = {kind: _reuse(state, kind, parts, req) for kind in sorted(req.kinds)}
    full = [k for k, r in reuse.items() if r == "none"]
    tail = [k for k, r in reuse.items() if r == "base"]
    cmdline = str((state.get("initrd") or {}).get("cmdline", ""))
    if not full and not tail:
        return dataclasses.replace(parts, cmdline=cmdline), "none"

    staged = _Staged(directory)
    fragments = FragmentCache(store.root / ".lkctl" / "initrd-fragments") if req.fragments else None
    made: dict[str, Any] = {}
    try:
        for kind in (*full, *tail):
            resume = state[kind] if kind in tail else None
            made[kind] = (
                _InitrdPart(staged, parts, req, resume, fragments)
                if kind == "initrd"
                else _TarPart(staged, parts, resume)
            )
        try:
            dirs: set[str] = set(state.get("dirs") or []) if not full else set()
            if full:
                _feed(assemble_base_items(spec, images, store, dirs), [made[k] for k in full], directory)
                for k in full:
                    made[k].checkpoint()
                state["dirs"], state["dirs_key"] = sorted(dirs), req.base_key
            _tee(assemble_files(spec, dirs), list(made.values()), directory)
            for p in made.values():
                p.finish()
        except BaseException:
            for p in made.values():
                p.abort()
            raise
        staged.commit()
    finally:
        staged.discard()
    for kind, p in made.items():
        files = ["kernel", "initrd.img"] if kind == "initrd" else ["rootfs.tar"]
        rec = dict(p.record, base_key=req.base_key, content_key=req.content_key)
        rec["files"] = {name: _stat(directory / name) for name in files}
        state[kind] = rec
    state["version"] = _VERSION
    atomic_write(manifest, json.dumps(state))
    if fragments is not None:
        fragments.prune()
    if "initrd" in made:
        cmdline = made["initrd"].record.get("cmdline", "")
    return dataclasses.replace(parts, cmdline=cmdline), "all" if full else "files"

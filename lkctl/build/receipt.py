"""Build receipts: an unchanged `image.build` answered before any spec is parsed or any builder module imported.

After a build succeeds, `lkctl.images.build_source` writes a receipt: every fact that decided the outputs, in a
form that is cheap to check again. The next build of the same request checks them first; when every one holds,
the outputs are those the full path would call "unchanged, from cache", and the BuildResult comes from the
receipt. The facts:

- the request itself (build_source's arguments: source, files, name, out dir, the template's variable values as
  resolved from --var, config and environment, formats, size, arch, compression level, pull policy,
  decompress_kernel), the working directory (relative paths, workspace templates) and the environment lkctl's
  paths and programs depend on (PATH, HOME, LKCTL_*, XDG_*);
- lkctl's own code (every file of the package, by identity), the Python version and environment, and the
  directories on `sys.path` (installing or upgrading a library changes its directory);
- the template file a name resolved to and the YAML files, by sha256 of their bytes;
- the host files the spec's `files:` entries read (`source:`), by identity (dev, inode, size, mtime, ctime, mode),
  and optional ones that were missing must still be missing;
- the local image store: index.json's bytes (sha256) and the blobs `resolve` reads for each image (index,
  manifest, config) by identity; a build with `--pull always` and a registry image gets no receipt, since it
  contacts the registry every time;
- each of lkctl's base images the spec uses: its stamp, recipe files and host facts (`baseimages.freshness_holds`);
- the build's stamp (sha256) and each output file by identity: a deleted or edited output is rebuilt.

It is conservative: a receipt is written only when the inputs read before the build equal those after it (no
template, YAML, store or code change while it ran; each source still holds the bytes the build hashed, and
none changed within its file system's timestamp tick, where a later edit could keep its identity), and
anything unexpected in a receipt (unreadable, malformed, over 8 MiB, another version, another request, a result
that is not shaped like this request's build) means "no receipt".
Receipts live with the build bookkeeping (`cache/build-state/receipts/`, 0600 in a 0700 dir), never in the
user's output directory. Templates rendered with jinja2 get none (they may include other files).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lkctl import __version__, paths
from lkctl.build import BuildOptions, BuildResult
from lkctl.errors import LkError
from lkctl.fsutil import file_identity as _identity

__all__ = [
    "BuildRequest",
    "InputSnapshot",
    "check_receipt",
    "racy_identity",
    "receipt_path",
    "snapshot_inputs",
    "write_receipt",
]

log = logging.getLogger("lkctl.build.receipt")

_VERSION = 1
_MAX_BYTES = 8 << 20  # a receipt is a few KiB, plus ~150 bytes per file source
_PACKAGE = Path(__file__).resolve().parent.parent  # lkctl/


@dataclass(frozen=True)
class BuildRequest:
    """What `build_source` was asked, and the files it resolved to before building."""

    source: str
    template: Path | None  # the template file a name resolved to (None: YAML files)
    files: tuple[Path, ...]  # YAML files, merged in order (empty for a template)
    variables: Mapping[str, str] = field(default_factory=dict)
    name: str = ""
    out_dir: Path | None = None
    options: BuildOptions = field(default_factory=BuildOptions)

    @property
    def eligible(self) -> bool:
        """Whether a receipt can stand for this request (a jinja2 template can read any file: never)."""
        return self.template is None or not self.template.name.endswith(".j2")


@dataclass(frozen=True)
class InputSnapshot:
    """The inputs as they were before a build: a receipt is written only if they are the same after it."""

    inputs: list[Any]


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _code() -> str:
    """lkctl's own code, by the identity of every file in the package: any change invalidates every receipt."""
    h = hashlib.sha256(f"{__version__} {sys.version} {sys.prefix}\n".encode())
    for entry in sys.path:  # where the libraries come from: installing or upgrading one changes its directory
        h.update(repr(_identity(entry or ".", follow=True)).encode())
    todo = [_PACKAGE]
    while todo:
        d = todo.pop()
        with os.scandir(d) as it:
            entries = sorted(it, key=lambda e: e.name)
        for e in entries:
            if e.is_dir(follow_symlinks=False):
                if e.name != "__pycache__":
                    todo.append(Path(e.path))
                continue
            st = e.stat(follow_symlinks=False)
            h.update(f"{e.path}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ino}\0{st.st_ctime_ns}\n".encode())
    return h.hexdigest()


def _request_doc(request: BuildRequest) -> dict[str, Any]:
    o = request.options
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME") or k.startswith(("LKCTL_", "XDG_"))}
    return {
        "source": request.source,
        "template": str(request.template) if request.template else None,
        "files": [str(p) for p in request.files],
        "variables": dict(sorted(request.variables.items())),
        "name": request.name,
        "out_dir": str(request.out_dir) if request.out_dir is not None else None,
        "options": [list(o.formats), o.arch, o.level, o.threads, o.size, o.decompress_kernel, o.pull],
        "cwd": os.getcwd(),
        "env": dict(sorted(env.items())),
        "store": str(paths.oci_store_dir()),
    }


def receipt_path(request: BuildRequest) -> Path:
    """Where the receipt of `request` is kept (named by a digest of the request)."""
    doc = json.dumps(_request_doc(request), sort_keys=True, separators=(",", ":"))
    return paths.cache_dir() / "build-state" / "receipts" / f"{hashlib.sha256(doc.encode()).hexdigest()[:32]}.json"


def _read_inputs(request: BuildRequest) -> list[Any]:
    """The bytes-level inputs known before building: code, template / YAML files, the store's index."""
    files = [request.template] if request.template is not None else list(request.files)
    index = paths.oci_store_dir() / "index.json"
    return [
        _code(),
        [[str(p), _sha256(p)] for p in files],
        _sha256(index) if index.exists() else None,
    ]


def snapshot_inputs(request: BuildRequest) -> InputSnapshot | None:
    """The inputs before a build (None when the request cannot have a receipt or they cannot be read)."""
    if not request.eligible:
        return None
    try:
        return InputSnapshot(_read_inputs(request))
    except OSError:
        return None


def _store_facts(refs: Sequence[str], arch: str) -> dict[str, Any]:
    """The blobs `Store.resolve` reads for each reference, by identity."""
    from lkctl.oci.layout import Store

    store = Store(paths.oci_store_dir())
    blobs: list[Any] = []
    for ref in refs:
        desc = store.lookup(ref)
        if desc is None:
            raise LookupError(ref)
        image = store.resolve(ref, arch=arch)
        for digest in dict.fromkeys((desc.digest, image.manifest_digest, image.manifest["config"]["digest"])):
            blobs.append(_identity(store.blob_path(digest)))
    return {"blobs": blobs}


def write_receipt(request: BuildRequest, result: BuildResult, before: InputSnapshot | None) -> Path | None:
    """Write the receipt of a build that just succeeded; None (and nothing written) when any fact is in doubt.
    Never raises for a fact it cannot establish: a missing receipt only costs the next build its full path."""
    if before is None:
        return None
    try:
        return _write(request, result, before)
    except (OSError, ValueError, KeyError, TypeError, LookupError, LkError) as e:  # in doubt: no receipt
        log.debug("no receipt for %s: %s", request.source, e)
        return None


def _write(request: BuildRequest, result: BuildResult, before: InputSnapshot) -> Path | None:
    from lkctl.baseimages import freshness_facts, is_base_image
    from lkctl.build import host_arch
    from lkctl.build._bookkeeping import build_paths
    from lkctl.build._image import stamp_vouches_for
    from lkctl.fsutil import atomic_write, file_lock, private_dir
    from lkctl.oci.layout import Store
    from lkctl.oci.reference import parse_reference

    o = request.options
    if o.pull == "always" and any(not parse_reference(r).is_local for r in result.image_refs):
        log.debug("no receipt for %s: --pull always asks the registry every time", request.source)
        return None
    sources = [_source_identity(path, digest) for path, digest in result.sources]
    if None in sources:
        log.debug("no receipt for %s: a file source changed since the build hashed it", request.source)
        return None
    now = time.time_ns()
    if any(racy_identity(s, now) for s in sources if s is not None):
        log.debug("no receipt for %s: a file source changed within its file system's timestamp tick", request.source)
        return None
    store = Store(paths.oci_store_dir())
    bases = []
    for ref in result.image_refs:
        if is_base_image(ref):
            facts = freshness_facts(ref, store)
            if facts is None:
                log.debug("no receipt for %s: base image %s is not fresh", request.source, ref)
                return None
            bases.append(facts)
    out_dir, name = result.kernel.parent, result.kernel.name.removesuffix("-kernel")  # <out>/<name>-kernel, always
    bp = build_paths(out_dir, name)
    with file_lock(bp.lock):  # no build of this name changes the stamp or the outputs while they are recorded
        if not stamp_vouches_for(result, name, out_dir):
            log.debug("no receipt for %s: another build changed %s meanwhile", request.source, out_dir)
            return None
        stamp = _sha256(bp.stamp)
        outputs = [_identity(p) for files in result.outputs.values() for p in files]
    if _read_inputs(request) != before.inputs:
        log.debug("no receipt for %s: the template, YAML, image store or lkctl changed while it built", request.source)
        return None
    receipt = {
        "version": _VERSION,
        "request": _request_doc(request),
        "inputs": before.inputs,
        "sources": sources,
        "store": _store_facts(result.image_refs, _arch(o.arch) or host_arch()),
        "bases": bases,
        "stamp": [str(bp.stamp), stamp],
        "outputs": outputs,
        "result": {
            "kernel": str(result.kernel),
            "initrd": str(result.initrd),
            "cmdline": str(result.cmdline),
            "cmdline_text": result.cmdline_text,
            "key": result.key,
            "outputs": {f: [str(p) for p in files] for f, files in result.outputs.items()},
            "format_keys": dict(result.format_keys),
            "image_refs": list(result.image_refs),
            "sources": [list(s) for s in result.sources],
        },
    }
    path = receipt_path(request)
    private_dir(path.parent.parent)
    private_dir(path.parent)
    atomic_write(path, json.dumps(receipt, indent=1), mode=0o600)
    return path


def _source_identity(path: str, digest: str) -> list[Any] | None:
    """The identity of a `files:` source whose bytes are still those the build hashed (`digest`), else None."""
    path = os.path.abspath(path)
    first = _identity(path, follow=True)
    try:
        now = _sha256(Path(path))
    except FileNotFoundError:
        now = "missing"
    return first if now == digest and _identity(path, follow=True) == first else None


_COARSE_TICK_NS = 10_000_000  # the kernel's coarse clock, which stamps files, at CONFIG_HZ=100 (the slowest)


def racy_identity(identity: Sequence[Any], now_ns: int) -> bool:
    """Whether a later edit of this file could keep `identity` (file_identity's list): its ctime is within two
    ticks of its file system's timestamps before `now_ns` (or after it). A tick is guessed from the ctime's
    trailing zeros: whole seconds (ext3, FAT, some network and FUSE file systems), 10 ms... An edit of the same
    size in the same tick would leave every field as it was, while the full path (which hashes sources) rebuilds.
    Nanosecond file systems still tick with the kernel's coarse clock (1-10 ms by CONFIG_HZ), so a tick is at
    least _COARSE_TICK_NS: a source rewritten with its own bytes just before the receipt (while a whole build ran
    since the build hashed it) gets none, and the next unchanged build writes it. Pure."""
    if len(identity) < 7:
        return False  # missing: its appearing changes the identity
    ctime = int(identity[6])
    tick = 1
    while tick < 1_000_000_000 and ctime % (tick * 10) == 0:
        tick *= 10
    return ctime + 2 * max(tick, _COARSE_TICK_NS) > now_ns


def _arch(arch: str | None) -> str | None:
    """`arch` as an OCI architecture name (what the build resolves images for), None for the host's."""
    if not arch:
        return None
    from lkctl.flags import parse_arch

    return parse_arch(arch)


def check_receipt(request: BuildRequest) -> BuildResult | None:
    """The result of `request` from its receipt when every fact in it still holds (cached=True); else None."""
    if not request.eligible:
        return None
    try:
        with open(receipt_path(request), "rb") as f:
            raw = f.read(_MAX_BYTES + 1)
    except OSError:
        return None
    if len(raw) > _MAX_BYTES:  # no build writes one this big: not ours to parse
        return None
    try:
        return _check(request, json.loads(raw))
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError, RecursionError) as e:
        log.debug("receipt of %s not used: %s", request.source, e)
        return None


def _check(request: BuildRequest, r: Any) -> BuildResult | None:
    if not isinstance(r, dict) or r.get("version") != _VERSION or r.get("request") != _request_doc(request):
        return None
    out = r["result"]
    if not _consistent(request, out, r["stamp"]):
        return None
    if [_identity(p) for p in _all_outputs(out)] != r["outputs"]:
        return None
    stamp_path, stamp = r["stamp"]
    if _sha256(Path(stamp_path)) != stamp:
        return None
    if any(_identity(s[0], follow=True) != s for s in r["sources"]):
        return None
    if any(_identity(b[0]) != b for b in r["store"]["blobs"]):
        return None
    if _read_inputs(request) != r["inputs"]:
        return None
    if r["bases"]:
        from lkctl.baseimages import freshness_holds

        if not all(freshness_holds(b) for b in r["bases"]):
            return None
    log.info("build %s: unchanged, answered from its receipt", request.source)
    return BuildResult(
        Path(out["kernel"]),
        Path(out["initrd"]),
        Path(out["cmdline"]),
        str(out["cmdline_text"]),
        str(out["key"]),
        cached=True,
        receipt=True,
        outputs={str(f): tuple(Path(p) for p in files) for f, files in out["outputs"].items()},
        format_keys={str(f): str(k) for f, k in out["format_keys"].items()},
        image_refs=tuple(str(x) for x in out["image_refs"]),
        sources=tuple((str(p), str(d)) for p, d in out["sources"]),
    )


def _all_outputs(out: Mapping[str, Any]) -> list[str]:
    return [str(p) for files in out["outputs"].values() for p in files]


def _consistent(request: BuildRequest, out: Mapping[str, Any], stamp: Sequence[Any]) -> bool:
    """Whether a receipt's result has the shape a build of `request` gives: the formats asked for, each with its
    files (`<dir>/<name><suffix>`) in one output dir, that dir's bookkeeping as the stamp. A receipt is ours, in a
    private dir; this keeps a damaged or planted one from naming other files as the build's outputs."""
    from lkctl.build._bookkeeping import build_paths
    from lkctl.build._formats import FORMATS

    kernel = Path(out["kernel"])
    out_dir, name = kernel.parent, kernel.name.removesuffix("-kernel")
    outputs = out["outputs"]
    if not name or list(outputs) != list(dict.fromkeys(request.options.formats)):
        return False
    expected = [str(out_dir / n) for n in FORMATS["kernel+initrd"].files(name)]  # set whatever the formats
    if [out["kernel"], out["initrd"], out["cmdline"]] != expected:
        return False
    if any(outputs[f] != [str(out_dir / n) for n in FORMATS[f].files(name)] for f in outputs):
        return False
    if request.out_dir is not None and out_dir != request.out_dir:
        return False
    return list(stamp) == [str(build_paths(out_dir, name).stamp), stamp[1]]

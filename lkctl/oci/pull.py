"""Pull images from a registry into the local OCI store, and push them back out.

A pull fetches the root (manifest or index), the manifests for the platforms asked for (plus the attestation
manifests that describe them, so LinuxKit's own cache validation accepts the result), then every config and
layer blob the store lacks, several at once. Each blob is verified against its digest as it streams (the
registry client's `download`: retries with backoff on 429/5xx and dropped connections, resumable) into the
store's `ingest/`, then renamed into `blobs/`. Naming the image happens last, under the store lock, after
checking that every blob it needs is present: a concurrent `image.rm` cannot leave a name without its blobs.

Pushing is the reverse: blobs the registry lacks (config, layers, then child manifests), then the root manifest
under its tag, byte for byte as stored so digests are preserved.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lkctl.arch import Platform
from lkctl.errors import ImageError
from lkctl.fsutil import file_lock
from lkctl.http import ProgressFn
from lkctl.oci.layout import Descriptor, Store
from lkctl.oci.reference import Reference, parse_reference
from lkctl.oci.registry import Manifest, Registry, RegistryError, RegistryNotFound

__all__ = ["PullResult", "PushResult", "is_oci_reference", "pull_image", "push_image", "stored_name"]

log = logging.getLogger("lkctl.oci.pull")

_SCHEMA1 = (
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
)
_ATTESTATION = "attestation-manifest"
_ATTEMPTS = 3  # commits retried when a concurrent `image.rm` removed a blob between fetch and commit


@dataclass(frozen=True)
class PullResult:
    name: str  # the name in the store's index.json
    digest: str  # of the root manifest or index
    platforms: tuple[str, ...]  # whose blobs are now in the store ("" for a single-platform image)
    fetched: int  # blobs downloaded by this pull
    fetched_bytes: int


@dataclass(frozen=True)
class PushResult:
    name: str  # where it went
    digest: str
    pushed: int  # blobs and manifests uploaded (the registry already had the others)


def is_oci_reference(text: str) -> bool:
    """Whether `text` can only be an OCI reference: installed image names never contain `/` or `@`."""
    return "/" in text or "@" in text


def stored_name(ref: str | Reference) -> str:
    """The name a pulled image gets in the store: the expanded reference, `:latest` if it had no tag."""
    parsed = parse_reference(ref) if isinstance(ref, str) else ref
    return str(parsed if parsed.tag or parsed.digest else parsed.with_tag("latest"))


def _matches(platform: Any, wanted: Platform) -> bool:
    if not isinstance(platform, dict):
        return False
    return platform.get("os") == wanted.os and platform.get("architecture") in wanted.arch_aliases


def _platform_text(p: Any) -> str:
    p = p or {}
    text = f"{p.get('os')}/{p.get('architecture')}"
    return text + (f"/{p['variant']}" if p.get("variant") else "")


def _select(
    index: Manifest, platforms: Sequence[Platform], all_platforms: bool, ref: Reference
) -> list[dict[str, Any]]:
    """The index entries to fetch: the wanted platforms' manifests and the attestations that describe them."""
    entries = [e for e in index.json.get("manifests") or [] if isinstance(e, dict) and "digest" in e]
    if all_platforms:
        return entries
    chosen = []
    for want in platforms:
        found = [e for e in entries if _matches(e.get("platform"), want)]
        if not found:
            have = sorted({_platform_text(e.get("platform")) for e in entries if e.get("platform")})
            have = [h for h in have if h != "unknown/unknown"]
            raise RegistryNotFound(f"{ref}: no image for {want} (available: {', '.join(have) or 'none'})")
        chosen.append(found[0])  # LinuxKit takes the first OS/arch match, whatever the variant
    digests = {e["digest"] for e in chosen}
    for e in entries:
        ann = e.get("annotations") or {}
        if ann.get("vnd.docker.reference.type") == _ATTESTATION and ann.get("vnd.docker.reference.digest") in digests:
            chosen.append(e)
    return chosen


class _Progress:
    """Per-blob (done, total) callbacks summed into one (done, total) for the whole pull."""

    def __init__(self, total: int, report: ProgressFn | None) -> None:
        self._done: dict[str, int] = {}
        self._total, self._report = total, report
        self._lock = threading.Lock()

    def for_blob(self, digest: str) -> ProgressFn | None:
        if self._report is None:
            return None

        def update(done: int, _total: int | None) -> None:
            with self._lock:
                self._done[digest] = done
                assert self._report is not None
                self._report(sum(self._done.values()), self._total)

        return update


def _run_parallel(jobs: int, items: Iterable[Any], fn: Callable[[Any], Any]) -> list[Any]:
    with ThreadPoolExecutor(max_workers=max(1, jobs), thread_name_prefix="lkctl-blob") as pool:
        futures = [pool.submit(fn, item) for item in items]
        try:
            return [f.result() for f in futures]
        except BaseException:
            for f in futures:
                f.cancel()
            raise


def pull_image(
    ref: str,
    store: Store,
    *,
    platforms: Sequence[Platform] | None = None,
    all_platforms: bool = False,
    registry: Registry | None = None,
    insecure: Iterable[str] = (),
    jobs: int = 4,
    progress: ProgressFn | None = None,
) -> PullResult:
    """Pull `ref` into `store` (default platform: this machine's) and name it `stored_name(ref)`."""
    parsed = parse_reference(ref)
    if parsed.is_local:
        raise ImageError(f"{parsed.name} is made by lkctl on this machine (lkctl image.base), not pulled")
    wanted = list(platforms or [Platform.host()])
    store.ensure()
    with contextlib.ExitStack() as stack:
        reg = registry or stack.enter_context(Registry(parsed.domain, insecure=insecure))
        root = reg.get_manifest(parsed)
        if root.media_type in _SCHEMA1:
            raise RegistryError(f"{parsed}: Docker schema 1 manifests are not supported (push the image again)")
        manifests: dict[str, Manifest] = {root.digest: root}
        images = [root]
        names: list[str] = [""]
        if root.is_index:
            entries = _select(root, wanted, all_platforms, parsed)
            images, names = [], []
            for e in entries:
                m = reg.get_manifest(Reference(parsed.domain, parsed.path, None, str(e["digest"])))
                if m.is_index:
                    raise RegistryError(f"{parsed}: nested index {m.digest} is not supported")
                manifests[m.digest] = m
                images.append(m)
                names.append(_platform_text(e.get("platform")))
        blobs: dict[str, Descriptor] = {}
        for m in images:
            for d in [m.config, *m.layers]:
                if d is not None:
                    blobs[d.digest] = d
        fetched = fetched_bytes = 0
        for _attempt in range(_ATTEMPTS):
            todo = [d for d in blobs.values() if not store.has_blob(d.digest)]
            meter = _Progress(sum(d.size for d in todo), progress)
            ingest = store.ingest_dir()

            def fetch(d: Descriptor, reg: Registry = reg, ingest: Path = ingest, meter: _Progress = meter) -> int:
                dest = ingest / d.digest.replace(":", "-")
                # one process at a time per blob: a second pull of the same layer waits, then finds it in place
                with file_lock(ingest / f".{dest.name}.pull"):
                    if store.has_blob(d.digest):
                        return 0
                    progress = meter.for_blob(d.digest)
                    got = reg.get_blob(parsed, d.digest, dest, size=d.size or None, progress=progress)
                    store.adopt_blob(got.path, d.digest)
                    return got.size

            fetched_bytes += sum(_run_parallel(jobs, todo, fetch))
            fetched += len(todo)
            for m in manifests.values():
                store.put_blob(m.raw, m.media_type)
            name = stored_name(parsed)
            with store.lock():
                if all(store.has_blob(d) for d in (*blobs, *manifests)):
                    store.set_ref(name, Descriptor(root.media_type, root.digest, len(root.raw)), locked=True)
                    log.info("pulled %s (%s): %d blobs, %d bytes", name, root.digest, fetched, fetched_bytes)
                    plats = tuple(n for n in names if n and n != "unknown/unknown")
                    return PullResult(name, root.digest, plats, fetched, fetched_bytes)
        raise ImageError(f"{parsed}: blobs kept disappearing from {store.root} while pulling (a concurrent rm?)")


def _child_manifests(store: Store, doc: dict[str, Any], name: str) -> list[tuple[Descriptor, bytes]]:
    out = []
    missing = []
    for e in doc.get("manifests") or []:
        d = Descriptor.from_json(e)
        if not store.has_blob(d.digest):
            missing.append(_platform_text(e.get("platform")))
            continue
        out.append((d, store.read_blob(d.digest)))
    if missing:
        raise ImageError(
            f"{name}: the store has only some of its platforms (missing {', '.join(missing)}); "
            f"pull it with `lkctl image.pull --oci --all-platforms {name}` before pushing"
        )
    return out


def push_image(
    ref: str,
    store: Store,
    *,
    to: str | None = None,
    registry: Registry | None = None,
    insecure: Iterable[str] = (),
    jobs: int = 4,
) -> PushResult:
    """Push the stored image `ref` to its registry, or to `to` (another reference); byte-identical manifests."""
    desc = store.lookup(ref)
    if desc is None:
        raise ImageError(f"image {parse_reference(ref)} is not in the local image store {store.root}")
    target = parse_reference(to or ref)
    if target.is_local:
        raise ImageError(f"{target}: lkctl.local images live on this machine only; push them under a registry name")
    if target.digest and target.digest != desc.digest:
        raise ImageError(f"{target}: the stored image has digest {desc.digest}")
    raw = store.read_blob(desc.digest)
    doc = json.loads(raw)
    media = doc.get("mediaType") or desc.media_type
    children = _child_manifests(store, doc, str(parse_reference(ref))) if "manifests" in doc else []
    manifests = children or [(Descriptor(media, desc.digest, len(raw)), raw)]
    blobs: dict[str, Descriptor] = {}
    for _, body in manifests:
        m = json.loads(body)
        for d in [m.get("config"), *(m.get("layers") or [])]:
            if isinstance(d, dict):
                blobs[d["digest"]] = Descriptor.from_json(d)
    with contextlib.ExitStack() as stack:
        reg = registry or stack.enter_context(Registry(target.domain, insecure=insecure))

        def upload(d: Descriptor) -> None:
            reg.push_blob(target, store.blob_path(d.digest), d.media_type)

        if blobs:  # the first upload settles auth; the rest go in parallel
            first, *rest = blobs.values()
            upload(first)
            _run_parallel(jobs, rest, upload)
        if children:
            for d, body in children:
                reg.push_manifest(Reference(target.domain, target.path, None, d.digest), body, d.media_type)
        tagged = target if target.tag or target.digest else target.with_tag("latest")
        pushed_digest = reg.push_manifest(tagged, raw, media)
    if pushed_digest != desc.digest:
        raise ImageError(f"{target}: the registry stored digest {pushed_digest}, expected {desc.digest}")
    return PushResult(str(tagged), desc.digest, len(blobs) + len(children) + 1)

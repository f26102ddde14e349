"""Synthetic OCI images for tests: write layer tars member by member and put them in a `Store`.

Public so that any test (ours, or a user's) can make a kernel image, an init image or a hostile layer without
Docker: `add_image(store, "lkctl.local/x:1", [[file("etc/a", b"1")], [whiteout("etc/a")]])`.
"""

from __future__ import annotations

import io
import json
import tarfile
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lkctl.oci.layout import MEDIA_INDEX, Descriptor, Store

__all__ = [
    "Member",
    "add_image",
    "add_index",
    "device",
    "directory",
    "fifo",
    "file",
    "hardlink",
    "opaque",
    "symlink",
    "whiteout",
    "write_tar",
]


@dataclass(frozen=True)
class Member:
    """One tar member: its header and (for regular files) its content."""

    info: tarfile.TarInfo
    data: bytes = b""


def _info(name: str, type_: bytes, mode: int, uid: int, gid: int, mtime: int) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type, ti.mode, ti.uid, ti.gid, ti.mtime = type_, mode, uid, gid, mtime
    return ti


def file(name: str, data: bytes = b"", mode: int = 0o644, uid: int = 0, gid: int = 0, mtime: int = 1000) -> Member:
    ti = _info(name, tarfile.REGTYPE, mode, uid, gid, mtime)
    ti.size = len(data)
    return Member(ti, data)


def directory(name: str, mode: int = 0o755, uid: int = 0, gid: int = 0, mtime: int = 1000) -> Member:
    return Member(_info(name, tarfile.DIRTYPE, mode, uid, gid, mtime))


def symlink(name: str, target: str, uid: int = 0, gid: int = 0) -> Member:
    ti = _info(name, tarfile.SYMTYPE, 0o777, uid, gid, 1000)
    ti.linkname = target
    return Member(ti)


def hardlink(name: str, target: str, mode: int = 0o644) -> Member:
    ti = _info(name, tarfile.LNKTYPE, mode, 0, 0, 1000)
    ti.linkname = target
    return Member(ti)


def device(name: str, kind: str, major: int, minor: int, mode: int = 0o600) -> Member:
    ti = _info(name, tarfile.CHRTYPE if kind == "c" else tarfile.BLKTYPE, mode, 0, 0, 1000)
    ti.devmajor, ti.devminor = major, minor
    return Member(ti)


def fifo(name: str, mode: int = 0o644) -> Member:
    return Member(_info(name, tarfile.FIFOTYPE, mode, 0, 0, 1000))


def whiteout(path: str) -> Member:
    """Deletes `path` (and everything below it) from the layers underneath."""
    parent, _, base = path.rpartition("/")
    return file(f"{parent}/.wh.{base}" if parent else f".wh.{base}", mode=0o600)


def opaque(dir_path: str) -> Member:
    """Hides everything the layers underneath have below `dir_path`."""
    return file(f"{dir_path}/.wh..wh..opq", mode=0o600)


def write_tar(path: Path, members: Sequence[Member]) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        for m in members:
            tf.addfile(m.info, io.BytesIO(m.data) if m.info.isreg() else None)
    return path


def add_image(
    store: Store,
    ref: str,
    layers: Sequence[Sequence[Member]],
    *,
    config: dict[str, Any] | None = None,
    labels: dict[str, str] | None = None,
    architecture: str = "amd64",
) -> Descriptor:
    """Store an image whose layers (bottom first) hold `layers`, named `ref`."""
    with tempfile.TemporaryDirectory(prefix="lkctl-layers-") as tmp:
        stored = [store.put_layer_tar(write_tar(Path(tmp) / f"{i}.tar", ms)) for i, ms in enumerate(layers)]
    return store.add_image(ref, stored, config=config, labels=labels, architecture=architecture)


def add_index(
    store: Store,
    ref: str,
    per_arch: dict[str, Sequence[Sequence[Member]]],
    *,
    config: dict[str, Any] | None = None,
    attestations: bool = False,
) -> Descriptor:
    """Store a multi-platform image: an OCI index over one image per architecture (`{"amd64": layers, ...}`).

    `attestations` adds, as BuildKit does, an `unknown/unknown` manifest per platform describing it."""
    entries = []
    helpers = []  # names the per-platform manifests get while they are made; only the index keeps one
    for arch, layers in per_arch.items():
        helpers.append(f"{ref}-{arch}")
        d = add_image(store, helpers[-1], layers, config=config, architecture=arch)
        entries.append({**d.to_json(), "platform": {"os": "linux", "architecture": arch}})
    for e in list(entries) if attestations else []:
        helpers.append(f"{ref}-{e['platform']['architecture']}-attestation")
        sbom = json.dumps({"describes": e["digest"]}).encode()
        att = add_image(store, helpers[-1], [[file("sbom.spdx.json", sbom)]])
        ann = {"vnd.docker.reference.type": "attestation-manifest", "vnd.docker.reference.digest": e["digest"]}
        entries.append({**att.to_json(), "platform": {"os": "unknown", "architecture": "unknown"}, "annotations": ann})
    index = {"schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": entries}
    desc = store.put_blob(json.dumps(index, separators=(",", ":")).encode(), MEDIA_INDEX)
    store.set_ref(ref, desc)
    for name in helpers:
        store.remove(name)  # the blobs stay: the index reaches them
    return desc

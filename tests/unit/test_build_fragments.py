"""The compressed-layer cache: a build reuses each image's compressed cpio from earlier builds, with output
byte-identical to a build that read every layer, apk databases and microcode still right, and a size limit."""

from __future__ import annotations

import gzip
import json
import zlib
from pathlib import Path

import pytest

from lkctl.build import BuildResult, build_image, parse_spec
from lkctl.build.initrd import crc32_combine
from lkctl.build.testing import add_image, directory, file
from lkctl.oci.layout import Store

UCODE = b"070701" + b"0" * 104 + b"early".ljust(8, b"\0")
SPEC = """
kernel:
  image: lkctl.local/kernel:1
  cmdline: console=ttyS0
  ucode: intel-ucode.cpio
  tar: none
init:
  - lkctl.local/init:1
  - lkctl.local/runc:1
services:
  - name: web
    image: lkctl.local/web:1
"""


@pytest.fixture
def store(tmp_path: Path) -> Store:
    store = Store(tmp_path / "store").ensure()
    add_image(store, "lkctl.local/kernel:1", [[file("kernel", b"MZ" + bytes(range(256)) * 64),
                                               file("intel-ucode.cpio", UCODE)]])  # fmt: skip
    add_image(store, "lkctl.local/init:1", [[directory("lib/apk/db"), file("lib/apk/db/installed", b"P:busybox"),
                                             file("init", b"#!/bin/sh\n", 0o755)]])  # fmt: skip
    add_image(store, "lkctl.local/runc:1", [[file("lib/apk/db/installed", b"P:runc"), file("usr/bin/runc", b"R")]])
    add_image(store, "lkctl.local/web:1", [[file("usr/bin/web", bytes(range(256)) * 8192, 0o755)]])
    return store


def fragments(store: Store) -> Path:
    return store.root / ".lkctl" / "initrd-fragments"


def build(store: Store, out: Path, text: str = SPEC, **kw: object) -> BuildResult:
    return build_image(parse_spec(text), name="vm", out_dir=out, store=store, **kw)  # type: ignore[arg-type]


def test_crc32_combine_matches_crc32_of_the_concatenation() -> None:
    a, b = b"lkctl " * 1000, bytes(range(256)) * 333
    assert crc32_combine(zlib.crc32(a), zlib.crc32(b), len(b)) == zlib.crc32(a + b)
    assert crc32_combine(zlib.crc32(a), zlib.crc32(b""), 0) == zlib.crc32(a)


def test_a_second_build_reuses_the_compressed_images_and_writes_the_same_bytes(store: Store, tmp_path: Path) -> None:
    first = build(store, tmp_path / "a")
    kept = sorted(p.name for p in fragments(store).iterdir())
    assert len(kept) == 4  # the kernel run, two init images, the web service
    data_files = {p: p.stat().st_mtime_ns for p in fragments(store).glob("*/data")}

    second = build(store, tmp_path / "b", SPEC.replace("console=ttyS0", "console=ttyS0 quiet"))

    assert {p: p.stat().st_mtime_ns for p in fragments(store).glob("*/data")} == data_files  # only read
    for s in (first, second):
        initrd = s.initrd.read_bytes()
        assert initrd.startswith(UCODE)  # the microcode came from the cache the second time
        d = zlib.decompressobj(31)
        cpio = d.decompress(initrd[len(UCODE) :])
        assert d.eof and not d.unused_data  # one gzip member whose CRC and length check out
        assert b"P:busybox\n\nP:runc\n\n" in cpio  # the merged apk database, though no layer was read
    assert second.kernel.read_bytes() == first.kernel.read_bytes()

    # the same as a build that read every layer again
    for frag in fragments(store).iterdir():
        (frag / "meta.json").unlink()  # an unreadable fragment is a miss, not an error
    cold = build(store, tmp_path / "c", SPEC.replace("console=ttyS0", "console=ttyS0 quiet"))
    assert cold.initrd.read_bytes() == second.initrd.read_bytes()


def test_a_changed_image_gets_a_new_fragment_and_the_old_one_is_not_used(store: Store, tmp_path: Path) -> None:
    build(store, tmp_path / "a")
    add_image(store, "lkctl.local/web:1", [[file("usr/bin/web", b"version 2", 0o755)]])
    result = build(store, tmp_path / "b")
    cpio = gzip.decompress(result.initrd.read_bytes()[len(UCODE) :])
    assert b"version 2" in cpio and len(list(fragments(store).iterdir())) == 5


def test_the_cache_is_pruned_to_its_size_limit_least_recently_used_first(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    build(store, tmp_path / "a")
    sizes = {d.name: sum(f.stat().st_size for f in d.iterdir()) for d in fragments(store).iterdir()}
    biggest = max(sizes.values())
    monkeypatch.setenv("LKCTL_BUILD_FRAGMENT_LIMIT", str(biggest))
    add_image(store, "lkctl.local/web:1", [[file("usr/bin/web", b"v3", 0o755)]])
    build(store, tmp_path / "b")  # uses three fragments, adds one, then prunes
    left = [d for d in fragments(store).iterdir() if not d.name.startswith(".")]
    assert sum(sum(f.stat().st_size for f in d.iterdir()) for d in left) <= biggest
    meta = [json.loads((d / "meta.json").read_text()) for d in left]
    assert all(m["version"] == 1 for m in meta)
    assert build(store, tmp_path / "c").initrd.read_bytes() == build(store, tmp_path / "b").initrd.read_bytes()


def test_decompress_kernel_applies_to_a_cached_kernel_too(store: Store, tmp_path: Path) -> None:
    add_image(store, "lkctl.local/kernel:gz", [[file("kernel", gzip.compress(b"\x7fELF vmlinux"))]])
    text = SPEC.replace("lkctl.local/kernel:1", "lkctl.local/kernel:gz").replace("  ucode: intel-ucode.cpio\n", "")
    build(store, tmp_path / "a", text)
    result = build(store, tmp_path / "b", text, decompress_kernel=True)
    assert result.kernel.read_bytes() == b"\x7fELF vmlinux"


def test_prune_reclaims_the_draft_of_a_killed_build_and_keeps_a_live_ones(tmp_path: Path) -> None:
    import os

    from lkctl.build._fragments import FragmentCache

    cache = FragmentCache(tmp_path / "fragments")
    dead = tmp_path / "fragments" / f".draft-p{os.getpid()}s0000000000.abc"  # our PID, another start: not ours
    dead.mkdir(parents=True)
    (dead / "data").write_bytes(b"half a fragment")
    with cache.draft("k" * 64) as draft:
        cache.prune()
        assert not dead.exists() and draft.dir.exists()

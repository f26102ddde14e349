"""The build cache's second level: parts kept beside the outputs, so a changed `files` entry redoes only the files
section, byte-identical to a build from scratch, and an added format reuses what exists."""

from __future__ import annotations

import gzip
import tarfile
import time
import zlib
from pathlib import Path

import pytest

from lkctl.build import build_image, build_paths, parse_spec
from lkctl.build.testing import add_image, directory, file, symlink
from lkctl.oci.layout import Store

BASE = """
kernel:
  image: lkctl.local/kernel:1
  cmdline: console=ttyS0
  tar: none
init:
  - lkctl.local/init:1
services:
  - name: web
    image: lkctl.local/web:1
"""


def spec(motd: str = "hello", extra: str = "") -> str:
    files = f"files:\n  - path: etc/motd\n    contents: {motd!r}\n  - path: srv/www/index.html\n    contents: hi\n"
    return BASE + files + extra


@pytest.fixture
def store(tmp_path: Path) -> Store:
    store = Store(tmp_path / "store").ensure()
    add_image(store, "lkctl.local/kernel:1", [[file("kernel", b"MZ" + b"k" * 4000)]])
    big = bytes(range(256)) * 4096  # 1 MiB: the initrd spans several compression blocks
    init = [
        directory("bin"),
        file("bin/busybox", big, 0o755),
        symlink("bin/sh", "busybox"),
        file("init", b"#!/bin/sh\n", 0o755),
    ]
    add_image(store, "lkctl.local/init:1", [init])
    add_image(store, "lkctl.local/web:1", [[file("usr/bin/web", b"web" * 1000, 0o755)]])
    return store


def cpio_names(initrd: bytes) -> list[str]:
    """Names in a newc archive (parsed here, so the test does not trust the writer's own reader)."""
    data = gzip.decompress(initrd)
    names: list[str] = []
    off = 0
    while True:
        assert data[off : off + 6] == b"070701", off
        size, namesize = int(data[off + 54 : off + 62], 16), int(data[off + 94 : off + 102], 16)
        name = data[off + 110 : off + 110 + namesize - 1].decode()
        off = (off + 110 + namesize + 3) & ~3
        off = (off + size + 3) & ~3
        if name == "TRAILER!!!":
            assert not data[off:].strip(b"\0")  # one archive, nothing after its trailer
            return names
        names.append(name)


def one_gzip_member(data: bytes) -> bool:
    d = zlib.decompressobj(31)
    d.decompress(data)
    return d.eof and not d.unused_data


def build(store: Store, out: Path, text: str, formats: tuple[str, ...] = ("kernel+initrd", "tar")):  # type: ignore[no-untyped-def]
    return build_image(parse_spec(text, "vm.yml"), name="vm", out_dir=out, store=store, formats=formats)


def test_a_changed_file_redoes_only_the_files_section_byte_identical_to_a_full_build(
    store: Store, tmp_path: Path
) -> None:
    first = build(store, tmp_path / "inc", spec("hello"))
    assert first.assembled == "all"
    start = time.monotonic()
    changed = build(store, tmp_path / "inc", spec("changed", "  - path: opt/new/file\n    contents: x\n"))
    incremental = time.monotonic() - start
    scratch = build(store, tmp_path / "scratch", spec("changed", "  - path: opt/new/file\n    contents: x\n"))

    assert (changed.assembled, scratch.assembled) == ("files", "all")
    for f in ("kernel+initrd", "tar"):
        for a, b in zip(changed.outputs[f], scratch.outputs[f], strict=True):
            assert a.read_bytes() == b.read_bytes(), a.name
    initrd = changed.initrd.read_bytes()
    assert one_gzip_member(initrd)
    names = cpio_names(initrd)
    assert names.index("etc/motd") > names.index("containers/services/web/config.json")
    assert {"opt", "opt/new", "opt/new/file"} <= set(names) and names.count("etc") == 1
    with tarfile.open(changed.outputs["tar"][0]) as tf:
        assert tf.extractfile("etc/motd").read() == b"changed"  # type: ignore[union-attr]
        assert "boot/kernel" in tf.getnames()  # the tar keeps boot/, the initrd does not
    assert "boot/kernel" not in names
    assert incremental < 1.0


def test_an_image_change_reassembles_everything_and_no_change_reassembles_nothing(store: Store, tmp_path: Path) -> None:
    out = tmp_path / "out"
    build(store, out, spec())
    assert build(store, out, spec()).cached
    add_image(store, "lkctl.local/web:1", [[file("usr/bin/web", b"v2", 0o755)]])
    again = build(store, out, spec())
    assert (again.cached, again.assembled) == (False, "all")
    with tarfile.open(again.outputs["tar"][0]) as tf:
        assert tf.extractfile("containers/services/web/lower/usr/bin/web").read() == b"v2"  # type: ignore[union-attr]


def test_a_format_added_later_reuses_the_parts_and_leaves_other_outputs_alone(store: Store, tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = build(store, out, spec(), formats=("kernel+initrd",))
    mtime = first.initrd.stat().st_mtime_ns
    both = build(store, out, spec(), formats=("kernel+initrd", "tar"))
    assert (both.assembled, both.built) == ("all", ("tar",))  # the tar part did not exist yet
    assert first.initrd.stat().st_mtime_ns == mtime
    assert build(store, out, spec(), formats=("tar",)).cached


def test_a_part_changed_behind_the_caches_back_is_not_reused(store: Store, tmp_path: Path) -> None:
    out = tmp_path / "out"
    build(store, out, spec("one"))
    parts = build_paths(out, "vm").parts / "initrd.img"
    data = parts.read_bytes()
    parts.write_bytes(data[:100] + b"\0" * (len(data) - 100))  # same size, new mtime
    again = build(store, out, spec("two"))
    assert again.assembled == "all" and one_gzip_member(again.initrd.read_bytes())


def test_the_tar_part_lists_what_the_initrd_holds_plus_boot(store: Store, tmp_path: Path) -> None:
    result = build(store, tmp_path / "out", spec())
    with tarfile.open(result.outputs["tar"][0]) as tf:
        tar_names = [n.rstrip("/") for n in tf.getnames()]
    assert [n for n in tar_names if n != "boot" and not n.startswith("boot/")] == cpio_names(result.initrd.read_bytes())
    assert result.outputs["tar"][0].read_bytes()[-1024:] == b"\0" * 1024  # the end-of-archive marker, once

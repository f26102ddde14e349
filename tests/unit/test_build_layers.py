"""Layer formats and hostile layers beyond the first slice's tests: zstd layers, writes through a symlink."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest

from lkctl.build.rootfs import flatten
from lkctl.build.testing import add_image, directory, file, symlink, write_tar
from lkctl.errors import BuildError
from lkctl.oci.layout import Store

ZSTD_LAYER = "application/vnd.oci.image.layer.v1.tar+zstd"


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "store").ensure()


def zstd_image(store: Store, tmp_path: Path, *, corrupt: bool = False) -> None:
    if shutil.which("zstd") is None:
        pytest.skip("zstd not installed")
    tar = write_tar(tmp_path / "layer.tar", [directory("etc"), file("etc/os", b"zstd!"), file("big", b"z" * 3_000_000)])
    data = subprocess.run(["zstd", "-q", "-c", str(tar)], capture_output=True, check=True).stdout
    blob = store.put_blob(data, ZSTD_LAYER)
    diff_id = "sha256:" + hashlib.sha256(tar.read_bytes()).hexdigest()
    if corrupt:
        store.blob_path(blob.digest).write_bytes(data[:-2] + b"\0\0")
    store.add_image("lkctl.local/zstd:1", [(blob, diff_id)])


def test_zstd_layers_are_read(store: Store, tmp_path: Path) -> None:
    zstd_image(store, tmp_path)
    got = {e.path: e.data.read(e.size) if e.data else None for e in flatten(store.resolve("lkctl.local/zstd:1"), store)}
    assert got["etc/os"] == b"zstd!" and got["big"] == b"z" * 3_000_000


def test_a_zstd_layer_with_the_wrong_digest_never_reaches_the_decompressor(store: Store, tmp_path: Path) -> None:
    zstd_image(store, tmp_path, corrupt=True)
    with pytest.raises(BuildError, match="does not match its digest"):
        list(flatten(store.resolve("lkctl.local/zstd:1"), store))


def test_an_entry_below_a_symlink_of_the_same_layer_is_refused(store: Store) -> None:
    add_image(store, "lkctl.local/evil:1", [[symlink("etc", "/host/etc"), file("etc/passwd", b"root::0:0")]])
    with pytest.raises(BuildError, match=r"lkctl\.local/evil:1, layer sha256:\w+: entry 'etc/passwd' lies below 'etc'"):
        list(flatten(store.resolve("lkctl.local/evil:1"), store))


def test_an_upper_layer_may_replace_a_lower_symlink_with_a_directory(store: Store) -> None:
    add_image(store, "lkctl.local/ok:1", [[symlink("lib", "usr/lib")], [directory("lib"), file("lib/x", b"x")]])
    entries = {e.path: e.kind.value for e in flatten(store.resolve("lkctl.local/ok:1"), store)}
    assert entries == {"lib": "dir", "lib/x": "file"}

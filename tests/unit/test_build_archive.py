"""image.import / image.export as library calls: root filesystems, OCI layouts and docker-archives in and out of
the store, digests preserved, hostile archives refused."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from lkctl.build.testing import add_image, directory, file, opaque, whiteout, write_tar
from lkctl.errors import ImageError
from lkctl.oci.archive import export_image, import_archive
from lkctl.oci.layout import Store


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "store").ensure()


def names_in(tar: Path) -> list[str]:
    with tarfile.open(tar) as tf:
        return [n.rstrip("/") for n in tf.getnames()]


def test_a_root_filesystem_directory_or_tarball_becomes_a_one_layer_image(store: Store, tmp_path: Path) -> None:
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "issue").write_text("hello\n")
    (root / "bin").mkdir()
    (root / "bin" / "sh").symlink_to("busybox")
    assert import_archive(root, store, ref="lkctl.test/dir:1") == ["lkctl.test/dir:1"]
    image = store.resolve("lkctl.test/dir:1")
    assert len(image.layers) == 1 and image.config["architecture"] == "amd64"

    tgz = tmp_path / "rootfs.tar.gz"
    with tarfile.open(tgz, "w:gz") as tf:
        tf.add(root, arcname=".")
    import_archive(tgz, store, ref="lkctl.test/tgz:1")
    out = tmp_path / "fs.tar"
    export_image("lkctl.test/tgz:1", store, out, fmt="filesystem")
    assert {"etc/issue", "bin/sh"} <= set(names_in(out))
    with pytest.raises(ImageError, match="name it with --ref"):
        import_archive(root, store)


def test_a_rootfs_tarball_that_escapes_is_refused(store: Store, tmp_path: Path) -> None:
    evil = write_tar(tmp_path / "evil.tar", [file("etc/ok", b"1"), file("../../etc/cron.d/x", b"* * * * * root sh")])
    with pytest.raises(ImageError, match=r"entry '\.\./\.\./etc/cron\.d/x' escapes the root"):
        import_archive(evil, store, ref="lkctl.test/evil:1")
    assert store.lookup("lkctl.test/evil:1") is None


def test_oci_export_then_import_keeps_the_digest(store: Store, tmp_path: Path) -> None:
    desc = add_image(store, "lkctl.test/app:1", [[file("a", b"1")], [file("b", b"2")]])
    layout = tmp_path / "app.tar"
    export_image("lkctl.test/app:1", store, layout)
    other = Store(tmp_path / "other").ensure()
    assert import_archive(layout, other) == ["lkctl.test/app:1"]
    assert other.lookup("lkctl.test/app:1").digest == desc.digest  # type: ignore[union-attr]
    with tarfile.open(layout) as tf:
        index = json.load(tf.extractfile("index.json"))  # type: ignore[arg-type]
    assert index["manifests"][0]["annotations"]["io.containerd.image.name"] == "lkctl.test/app:1"


def test_docker_archive_round_trip_keeps_layers_and_config(store: Store, tmp_path: Path) -> None:
    add_image(store, "lkctl.test/app:1", [[file("a", b"1")]], config={"Cmd": ["/a"]})
    archive = tmp_path / "app-docker.tar"
    export_image("lkctl.test/app:1", store, archive, fmt="docker", name="example.org/app:2")
    with tarfile.open(archive) as tf:
        manifest = json.load(tf.extractfile("manifest.json"))  # type: ignore[arg-type]
    assert manifest[0]["RepoTags"] == ["example.org/app:2"]
    other = Store(tmp_path / "other").ensure()
    assert import_archive(archive, other) == ["example.org/app:2"]
    a, b = store.resolve("lkctl.test/app:1"), other.resolve("example.org/app:2")
    assert [d.digest for d in a.layers] == [d.digest for d in b.layers] and b.config["config"]["Cmd"] == ["/a"]


def test_the_filesystem_export_is_the_merged_tree(store: Store, tmp_path: Path) -> None:
    add_image(store, "lkctl.test/wh:1", [[directory("d"), file("d/old", b"o"), file("gone", b"g")],
                                         [opaque("d"), file("d/new", b"n"), whiteout("gone")]])  # fmt: skip
    out = tmp_path / "fs.tar"
    export_image("lkctl.test/wh:1", store, out, fmt="filesystem")
    assert set(names_in(out)) == {"d", "d/new"}  # `d` twice: made for d/new, then the real header (mode, owner)


def test_an_archive_whose_layout_lacks_a_blob_is_refused(store: Store, tmp_path: Path) -> None:
    add_image(store, "lkctl.test/app:1", [[file("a", b"1")]])
    layout = tmp_path / "app.tar"
    export_image("lkctl.test/app:1", store, layout)
    broken = tmp_path / "broken.tar"
    with tarfile.open(layout) as src, tarfile.open(broken, "w") as dst:
        members = [m for m in src.getmembers() if m.isreg()]
        for m in members[:-1]:  # the last blob (a layer) left out
            dst.addfile(m, io.BytesIO(src.extractfile(m).read()))  # type: ignore[union-attr]
    with pytest.raises(ImageError, match="is missing from the layout"):
        import_archive(broken, Store(tmp_path / "other").ensure())

"""The local OCI store as the builder and `image.rm` use it: reference-counted removal, reachability, and a
layout other OCI tools (skopeo, LinuxKit's cache) read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lkctl.build.testing import add_image, add_index, file
from lkctl.errors import ImageError
from lkctl.oci.layout import REF_ANNOTATION, Store


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "store").ensure()


def blobs(store: Store) -> set[str]:
    return {"sha256:" + p.name for p in (store.root / "blobs" / "sha256").iterdir()}


def test_rm_deletes_only_blobs_no_other_image_uses(store: Store) -> None:
    shared = [file("usr/lib/libc.so", b"libc")]
    a = add_image(store, "lkctl.test/a:1", [shared, [file("a", b"a")]])
    b = add_image(store, "lkctl.test/b:1", [shared, [file("b", b"b")]])
    a_only = store.reachable([a.digest]) - store.reachable([b.digest])
    assert len(a_only) == 3  # a's manifest, config and own layer

    deleted = store.remove("lkctl.test/a:1")

    assert set(deleted) == a_only
    assert blobs(store) == store.reachable([b.digest])
    assert store.lookup("lkctl.test/a:1") is None and store.resolve("lkctl.test/b:1").manifest_digest == b.digest


def test_rm_of_one_tag_keeps_an_image_another_tag_names(store: Store) -> None:
    desc = add_image(store, "lkctl.test/a:1", [[file("x", b"x")]])
    store.set_ref("lkctl.test/a:latest", desc)
    assert store.remove("lkctl.test/a:1") == []
    assert store.remove("lkctl.test/a") != []  # an untagged name means :latest
    assert blobs(store) == set()


def test_rm_of_an_index_removes_every_platform_and_an_unknown_name_is_an_error(store: Store) -> None:
    index = add_index(store, "lkctl.test/multi:1", {"amd64": [[file("a", b"1")]], "arm64": [[file("a", b"2")]]},
                      attestations=True)  # fmt: skip
    assert len(store.reachable([index.digest])) == 1 + 4 * 3  # index; 2 images + 2 attestations, 3 blobs each
    assert [n for n, _ in store.refs()] == ["lkctl.test/multi:1"]
    store.remove("lkctl.test/multi:1")
    assert blobs(store) == set()
    with pytest.raises(ImageError, match=r"image lkctl\.test/nothing:1 is not in the local image store"):
        store.remove("lkctl.test/nothing:1")


def test_reachability_tolerates_platforms_that_were_never_pulled(store: Store) -> None:
    index = add_index(store, "lkctl.test/multi:1", {"amd64": [[file("a", b"1")]], "arm64": [[file("a", b"2")]]})
    entries = json.loads(store.read_blob(index.digest))["manifests"]
    arm = next(m for m in entries if m["platform"]["architecture"] == "arm64")
    for d in store.reachable([arm["digest"]]):
        store.blob_path(d).unlink()
    assert arm["digest"] in store.reachable([index.digest])  # named, though absent
    store.remove("lkctl.test/multi:1")
    assert blobs(store) == set()


def test_index_json_names_images_the_way_linuxkit_cache_does(store: Store) -> None:
    add_image(store, "alpine", [[file("etc/alpine-release", b"3.20")]])
    index = json.loads((store.root / "index.json").read_text())
    assert [m["annotations"][REF_ANNOTATION] for m in index["manifests"]] == ["docker.io/library/alpine"]
    assert json.loads((store.root / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    assert store.lookup("docker.io/library/alpine") is not None and store.lookup("alpine:latest") is None


def test_a_single_platform_image_of_another_architecture_is_not_used_instead(store: Store) -> None:
    add_image(store, "lkctl.local/kernel:latest", [[file("k", b"x86")]], architecture="amd64")
    assert store.resolve("lkctl.local/kernel:latest", arch="amd64").config["architecture"] == "amd64"
    with pytest.raises(ImageError, match=r"lkctl.local/kernel:latest is for linux/amd64 only, not linux/arm64"):
        store.resolve("lkctl.local/kernel:latest", arch="arm64")
    index = add_index(store, "lkctl.test/multi:1", {"amd64": [[file("a", b"1")]], "arm64": [[file("a", b"2")]]})
    assert index and store.resolve("lkctl.test/multi:1", arch="arm64").config["architecture"] == "arm64"

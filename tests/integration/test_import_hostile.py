"""`image.import` of a hostile OCI layout or docker-archive: symlinked blobs, a symlinked blobs dir, fifos and bad
digests are refused in one line, and no host file reaches the store (directory and tar forms)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from lkctl.build.testing import add_image, file
from lkctl.errors import ImageError
from lkctl.oci.archive import export_image, import_archive
from lkctl.oci.layout import Store

SECRET = b"a host secret the archive must not read\n"


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    path = tmp_path / "host-secret"
    path.write_bytes(SECRET)
    return path


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _layout(tmp_path: Path) -> Path:
    """A genuine OCI layout directory (exported from a store, then unpacked)."""
    store = Store(tmp_path / "src-store").ensure()
    add_image(store, "lkctl.test/app:1", [[file("a", b"1")]])
    tar = tmp_path / "app.tar"
    export_image("lkctl.test/app:1", store, tar)
    out = tmp_path / "layout"
    with tarfile.open(tar) as tf:
        tf.extractall(out, filter="data")
    return out


def _aim_config_at(layout: Path, secret: Path) -> str:
    """Rewrite the layout so its config descriptor names the secret's digest, with blobs/sha256/<that> a symlink to
    the host file: the digest check alone would pass, so only refusing the link protects the host."""
    index = json.loads((layout / "index.json").read_text())
    mdigest = index["manifests"][0]["digest"].split(":", 1)[1]
    manifest = json.loads((layout / "blobs" / "sha256" / mdigest).read_text())
    hexdigest = _sha(secret.read_bytes())
    manifest["config"]["digest"] = f"sha256:{hexdigest}"
    manifest["config"]["size"] = len(SECRET)
    raw = json.dumps(manifest).encode()
    (layout / "blobs" / "sha256" / _sha(raw)).write_bytes(raw)
    index["manifests"][0].update(digest=f"sha256:{_sha(raw)}", size=len(raw))
    (layout / "index.json").write_text(json.dumps(index))
    (layout / "blobs" / "sha256" / hexdigest).symlink_to(secret)
    return hexdigest


def _as_tar(layout: Path, out: Path) -> Path:
    with tarfile.open(out, "w") as tf:
        for p in sorted(layout.rglob("*")):
            tf.add(p, arcname=str(p.relative_to(layout)), recursive=False)
    return out


def _store_has_no(store: Store, hexdigest: str) -> None:
    assert not store.has_blob(f"sha256:{hexdigest}")
    for blob in (store.root / "blobs").rglob("*"):
        assert not blob.is_file() or blob.read_bytes() != SECRET
    assert store.refs() == []


def test_a_symlinked_blob_with_the_right_digest_is_refused_in_dir_and_tar_form(tmp_path: Path, secret: Path) -> None:
    layout = _layout(tmp_path)
    hexdigest = _aim_config_at(layout, secret)
    store = Store(tmp_path / "store").ensure()
    with pytest.raises(ImageError, match=rf"blobs/sha256/{hexdigest} is a symlink .*does not follow links"):
        import_archive(layout, store, ref="lkctl.test/evil:1")
    _store_has_no(store, hexdigest)
    with pytest.raises(ImageError, match=rf"blobs/sha256/{hexdigest} is a link to .*does not follow links"):
        import_archive(_as_tar(layout, tmp_path / "evil.tar"), store, ref="lkctl.test/evil:1")
    _store_has_no(store, hexdigest)


def test_etc_hostname_as_a_blob_is_refused(tmp_path: Path) -> None:
    hostname = Path("/etc/hostname")
    if not hostname.is_file():
        pytest.skip("this machine has no /etc/hostname")
    layout = _layout(tmp_path)
    hexdigest = _aim_config_at(layout, hostname)
    store = Store(tmp_path / "store").ensure()
    with pytest.raises(ImageError, match="is a symlink"):
        import_archive(layout, store, ref="lkctl.test/evil:1")
    assert not store.has_blob(f"sha256:{hexdigest}") and store.refs() == []


def test_a_symlinked_blobs_directory_is_refused(tmp_path: Path, secret: Path) -> None:
    layout = _layout(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    (layout / "blobs" / "sha256").rename(elsewhere)
    (layout / "blobs" / "sha256").symlink_to(elsewhere)
    store = Store(tmp_path / "store").ensure()
    with pytest.raises(ImageError, match="is a symlink \\(or under one\\)"):
        import_archive(layout, store)
    assert store.refs() == []


def test_a_symlinked_index_is_refused(tmp_path: Path, secret: Path) -> None:
    layout = _layout(tmp_path)
    (layout / "index.json").unlink()
    (layout / "index.json").symlink_to(secret)
    with pytest.raises(ImageError):
        import_archive(layout, Store(tmp_path / "store").ensure())


def test_a_fifo_blob_is_refused_without_hanging(tmp_path: Path) -> None:
    layout = _layout(tmp_path)
    index = json.loads((layout / "index.json").read_text())
    blob = layout / "blobs" / "sha256" / index["manifests"][0]["digest"].split(":", 1)[1]
    blob.unlink()
    os.mkfifo(blob)
    with pytest.raises(ImageError, match="is not a regular file"):
        import_archive(layout, Store(tmp_path / "store").ensure())


def test_a_blob_whose_bytes_do_not_match_its_digest_is_refused(tmp_path: Path) -> None:
    layout = _layout(tmp_path)
    index = json.loads((layout / "index.json").read_text())
    mdigest = index["manifests"][0]["digest"].split(":", 1)[1]
    manifest = json.loads((layout / "blobs" / "sha256" / mdigest).read_text())
    layer = layout / "blobs" / "sha256" / manifest["layers"][0]["digest"].split(":", 1)[1]
    layer.write_bytes(layer.read_bytes() + b"tampered")
    store = Store(tmp_path / "store").ensure()
    with pytest.raises(ImageError, match="digest mismatch"):
        import_archive(layout, store)
    assert store.refs() == []


def test_a_docker_archive_with_a_symlinked_layer_is_refused(tmp_path: Path, secret: Path) -> None:
    store = Store(tmp_path / "src-store").ensure()
    add_image(store, "lkctl.test/app:1", [[file("a", b"1")]])
    archive = tmp_path / "docker.tar"
    export_image("lkctl.test/app:1", store, archive, fmt="docker")
    out = tmp_path / "docker"
    with tarfile.open(archive) as tf:
        tf.extractall(out, filter="data")
    manifest = json.loads((out / "manifest.json").read_text())
    layer = out / manifest[0]["Layers"][0]
    layer.unlink()
    layer.symlink_to(secret)
    target = Store(tmp_path / "store").ensure()
    with pytest.raises(ImageError, match="is a symlink"):
        import_archive(out, target)
    with pytest.raises(ImageError, match="is a link to"):
        import_archive(_as_tar(out, tmp_path / "docker-evil.tar"), target)
    assert target.refs() == []


def test_the_cli_says_it_in_one_line(tmp_path: Path, secret: Path) -> None:
    layout = _layout(tmp_path)
    _aim_config_at(layout, secret)
    env = dict(os.environ, LKCTL_HOME=str(tmp_path / "home"))
    for src in (layout, _as_tar(layout, tmp_path / "evil.tar")):
        proc = subprocess.run([str(Path(sys.executable).parent / "lkctl"), "image.import", str(src), "--ref",
                               "lkctl.test/evil:1"], env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
        assert proc.returncode != 0
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "does not follow links" in lines[0], proc.stderr
    blobs = tmp_path / "home" / "cache" / "oci" / "blobs"
    assert not any(p.is_file() and p.read_bytes() == SECRET for p in blobs.rglob("*"))


def test_a_plain_layout_still_imports(tmp_path: Path) -> None:
    layout = _layout(tmp_path)
    store = Store(tmp_path / "store").ensure()
    assert import_archive(layout, store) == ["lkctl.test/app:1"]
    assert import_archive(_as_tar(layout, tmp_path / "ok.tar"), Store(tmp_path / "s2").ensure()) == ["lkctl.test/app:1"]

"""Flattening image layers into one entry stream: OCI whiteouts, hostile layers, LinuxKit's image filters and
kernel-image handling. Layers are real tar (and tar.gz) blobs in a real Store under tmp_path."""

from __future__ import annotations

import gzip
import io
import os
import tarfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pytest

from lkctl.build._entry import Entry, EntryKind
from lkctl.build.rootfs import ApkDbMerger, ensure_parents, flatten, image_entries, image_filter, kernel_entries
from lkctl.build.spec import KernelSpec
from lkctl.build.testing import (
    Member,
    add_image,
    device,
    directory,
    fifo,
    file,
    hardlink,
    opaque,
    symlink,
    whiteout,
    write_tar,
)
from lkctl.errors import BuildError
from lkctl.oci.layout import MEDIA_LAYER_TAR, Image, Store


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "store").ensure()


def _image(store: Store, layers: Sequence[Sequence[Member]], ref: str = "lkctl.local/test:1", **kw: Any) -> Image:
    add_image(store, ref, layers, **kw)
    return store.resolve(ref)


def _collect(entries: Iterable[Entry]) -> list[tuple[str, str, Any]]:
    """(path, kind, content-or-link-target) in stream order, reading each file while it is current."""
    out: list[tuple[str, str, Any]] = []
    for e in entries:
        payload: Any = e.data.read() if e.data is not None else e.linkname or None
        out.append((e.path, e.kind.value, payload))
    return out


def _paths(entries: Iterable[Entry]) -> list[str]:
    return [p for p, _, _ in _collect(entries)]


def test_upper_layers_win_and_come_first(store: Store) -> None:
    img = _image(store, [[directory("etc"), file("etc/a", b"lower"), file("etc/b", b"b")], [file("etc/a", b"upper")]])
    assert _collect(flatten(img, store)) == [
        ("etc/a", "file", b"upper"),
        ("etc", "dir", None),
        ("etc/b", "file", b"b"),
    ]


def test_whiteouts_delete_lower_paths_and_are_never_emitted(store: Store) -> None:
    lower = [directory("etc"), file("etc/a", b"a"), file("etc/b", b"b"), directory("var"), directory("var/lib"),
             file("var/lib/db", b"db"), file("keep", b"k")]  # fmt: skip
    upper = [whiteout("etc/a"), whiteout("var")]
    paths = _paths(flatten(_image(store, [lower, upper]), store))
    assert sorted(paths) == ["etc", "etc/b", "keep"]
    assert not any(".wh." in p for p in paths)


def test_whiteout_applies_to_lower_layers_only(store: Store) -> None:
    # the same layer deletes the old file and adds a new one; a later layer re-adds a deleted path
    img = _image(
        store,
        [
            [file("f", b"v1"), file("g", b"g1")],
            [whiteout("f"), file("f", b"v2"), whiteout("g")],
            [file("g", b"g3")],
        ],
    )
    assert sorted(_collect(flatten(img, store))) == [("f", "file", b"v2"), ("g", "file", b"g3")]


def test_opaque_whiteout_hides_everything_below_in_lower_layers(store: Store) -> None:
    lower = [directory("usr"), directory("usr/lib", mode=0o750), file("usr/lib/x", b"x"), directory("usr/lib/sub"),
             file("usr/lib/sub/y", b"y"), file("usr/keep", b"k")]  # fmt: skip
    upper = [directory("usr/lib", mode=0o755), opaque("usr/lib"), file("usr/lib/z", b"z")]
    entries = list(flatten(_image(store, [lower, upper]), store))
    assert sorted(e.path for e in entries) == ["usr", "usr/keep", "usr/lib", "usr/lib/z"]
    (lib,) = [e for e in entries if e.path == "usr/lib"]
    assert lib.mode == 0o755  # the opaque layer's own directory header wins


def test_opaque_whiteout_at_the_root_hides_all_lower_layers(store: Store) -> None:
    img = _image(store, [[file("old", b"o")], [opaque(""), file("new", b"n")]])
    # a root-level opaque marker is named ".wh..wh..opq" once cleaned
    assert _paths(flatten(img, store)) == ["new"]


def test_a_non_directory_hides_what_lower_layers_have_below_it(store: Store) -> None:
    img = _image(store, [[directory("lib"), file("lib/libc.so", b"c")], [symlink("lib", "usr/lib")]])
    assert _collect(flatten(img, store)) == [("lib", "symlink", "usr/lib")]


def test_a_path_an_upper_layer_uses_as_a_directory_stays_one(store: Store) -> None:
    img = _image(store, [[file("a", b"was a file")], [file("a/b", b"child")]])
    assert _collect(ensure_parents(flatten(img, store))) == [("a", "dir", None), ("a/b", "file", b"child")]


def test_headers_are_kept_modes_owners_links_devices(store: Store) -> None:
    img = _image(
        store,
        [[
            directory("bin", uid=1, gid=2),
            file("bin/su", b"su", mode=0o4755, uid=0, gid=0),
            file("home", b"h", mode=0o600, uid=1000, gid=1001),
            symlink("sh", "/bin/busybox"),
            device("null", "c", 1, 3, mode=0o666),
            device("sda", "b", 8, 0),
            fifo("pipe", mode=0o620),
        ]],
    )  # fmt: skip
    by = {e.path: e for e in flatten(img, store)}
    assert (by["bin"].uid, by["bin"].gid) == (1, 2)
    assert by["bin/su"].mode == 0o4755
    assert (by["home"].mode, by["home"].uid, by["home"].gid, by["home"].mtime) == (0o600, 1000, 1001, 1000)
    assert by["sh"].kind is EntryKind.SYMLINK and by["sh"].linkname == "/bin/busybox"  # absolute: resolved in the guest
    assert (by["null"].kind, by["null"].devmajor, by["null"].devminor, by["null"].mode) == (EntryKind.CHAR, 1, 3, 0o666)
    assert by["sda"].kind is EntryKind.BLOCK
    assert by["pipe"].kind is EntryKind.FIFO and by["pipe"].mode == 0o620


def test_hard_links_become_relative_symlinks(store: Store) -> None:
    img = _image(
        store, [[file("usr/bin/a", b"x"), hardlink("usr/bin/b", "usr/bin/a"), hardlink("sbin/c", "usr/bin/a")]]
    )
    by = {e.path: e for e in flatten(img, store)}
    assert by["usr/bin/b"].kind is EntryKind.SYMLINK and by["usr/bin/b"].linkname == "a"
    assert by["sbin/c"].linkname == "../usr/bin/a"


@pytest.mark.parametrize(
    ("member", "problem"),
    [
        (file("../etc/passwd", b"root::0:0"), "'../etc/passwd' escapes the root"),
        (file("etc/../../x", b"x"), "escapes the root"),
        (hardlink("etc/shadow", "../../etc/shadow"), "hard link 'etc/shadow' points outside the root"),
    ],
)
def test_hostile_layers_are_refused_naming_image_layer_and_entry(store: Store, member: Member, problem: str) -> None:
    img = _image(store, [[file("ok", b"1")], [member]], ref="lkctl.local/evil:1")
    with pytest.raises(BuildError) as info:
        list(flatten(img, store))
    message = info.value.message
    assert "image lkctl.local/evil:1" in message
    assert img.layers[1].digest in message
    assert problem in message


def test_absolute_member_names_are_taken_as_relative(store: Store) -> None:
    img = _image(store, [[file("/etc/issue", b"i"), file("./etc//motd", b"m")]])
    assert sorted(_paths(flatten(img, store))) == ["etc/issue", "etc/motd"]


def test_uncompressed_and_multi_member_gzip_layers_are_read(store: Store, tmp_path: Path) -> None:
    plain = write_tar(tmp_path / "plain.tar", [file("plain", b"p")])
    with open(plain, "rb") as f:
        plain_desc = store.put_blob_stream(f, MEDIA_LAYER_TAR)
    raw = write_tar(tmp_path / "two.tar", [file("one", b"1" * 5000), file("two", os.urandom(70_000))]).read_bytes()
    two_members = gzip.compress(raw[:3000], mtime=0) + gzip.compress(raw[3000:], mtime=0)
    gz_desc = store.put_blob(two_members, "application/vnd.oci.image.layer.v1.tar+gzip")
    store.add_image("lkctl.local/mixed:1", [(plain_desc, plain_desc.digest), (gz_desc, "sha256:" + "0" * 64)])
    got = dict((p, c) for p, _, c in _collect(flatten(store.resolve("lkctl.local/mixed:1"), store)))
    assert got["plain"] == b"p" and got["one"] == b"1" * 5000 and len(got["two"]) == 70_000


def test_empty_layers_are_fine(store: Store, tmp_path: Path) -> None:
    empty_tar = store.put_layer_tar(write_tar(tmp_path / "empty.tar", []))
    zero = store.put_blob(b"", MEDIA_LAYER_TAR)
    store.add_image("lkctl.local/empty:1", [empty_tar, (zero, zero.digest)])
    assert list(flatten(store.resolve("lkctl.local/empty:1"), store)) == []


def test_a_layer_whose_content_does_not_match_its_digest_is_refused(store: Store, tmp_path: Path) -> None:
    img = _image(store, [[file("a", b"original")]])
    other = gzip.compress(write_tar(tmp_path / "other.tar", [file("a", b"tampered")]).read_bytes())
    store.blob_path(img.layers[0].digest).write_bytes(other)
    with pytest.raises(BuildError, match="does not match its digest"):
        _collect(flatten(img, store))


def test_truncated_layers_are_refused(store: Store) -> None:
    img = _image(store, [[file("big", os.urandom(200_000))]])
    path = store.blob_path(img.layers[0].digest)
    path.write_bytes(path.read_bytes()[:50_000])
    with pytest.raises(BuildError, match=r"truncated|unexpected end"):
        _collect(flatten(img, store))


def test_large_files_stream_through_intact(store: Store) -> None:
    big = os.urandom(3 << 20) + b"z" * (2 << 20)
    img = _image(store, [[file("big", big), file("after", b"a")]])
    assert _collect(flatten(img, store)) == [("big", "file", big), ("after", "file", b"a")]


def test_unread_file_content_is_skipped_correctly(store: Store) -> None:
    img = _image(store, [[file("a", os.urandom(3 << 20)), file("b", b"bee")]])
    entries = flatten(img, store)
    next(entries)  # "a": not read at all
    b = next(entries)
    assert b.path == "b" and b.data is not None and b.data.read() == b"bee"


def test_ensure_parents_puts_directories_first_and_real_headers_still_apply() -> None:
    entries = [
        Entry("a/b/c", EntryKind.FILE, 0o644, size=0),
        Entry("a/b", EntryKind.DIR, 0o700, uid=5),  # a lower layer's header arriving late
        Entry("a/b/d", EntryKind.FILE, 0o644, size=0),
    ]
    dirs: set[str] = {"a"}
    out = [(e.path, e.kind, e.mode, e.uid) for e in ensure_parents(entries, dirs)]
    assert out == [
        ("a/b", EntryKind.DIR, 0o755, 0),
        ("a/b/c", EntryKind.FILE, 0o644, 0),
        ("a/b", EntryKind.DIR, 0o700, 5),
        ("a/b/d", EntryKind.FILE, 0o644, 0),
    ]
    assert dirs == {"a", "a/b"}


def _docker_export(store: Store) -> Image:
    return _image(
        store,
        [[
            file(".dockerenv"), file("Dockerfile", b"FROM x"), directory("dev"), device("dev/console", "c", 5, 1),
            directory("dev/pts"), directory("etc"), file("etc/hostname", b"abc123"),
            file("etc/hosts", b"172.17.0.2 abc123\n", mode=0o640), file("etc/resolv.conf", b"nameserver 8.8.8.8\n"),
            file("bin/app", b"app"),
        ]],
    )  # fmt: skip


def test_image_filter_drops_docker_artefacts_and_fixes_etc(store: Store) -> None:
    got = {p: (k, c) for p, k, c in _collect(image_filter(flatten(_docker_export(store), store)))}
    for gone in (".dockerenv", "Dockerfile", "dev/console", "etc/hostname"):
        assert gone not in got
    assert got["etc/hosts"][1].startswith(b"127.0.0.1       localhost\n::1     localhost")
    assert got["etc/resolv.conf"] == ("file", b"\n# no resolv.conf configured\n")
    for d in ("dev", "dev/pts", "dev/shm", "etc", "proc", "sys"):
        assert got[d][0] == "dir"
    assert got["etc/mtab"] == ("symlink", "/proc/mounts")
    assert got["bin/app"] == ("file", b"app")


def test_init_images_get_resolv_conf_as_a_symlink(store: Store) -> None:
    got = {p: (k, c) for p, k, c in _collect(image_entries(_docker_export(store), store, resolv_symlink="/run/r.conf"))}
    assert got["etc/resolv.conf"] == ("symlink", "/run/r.conf")


def test_touch_entries_do_not_replace_what_the_image_has(store: Store) -> None:
    img = _image(store, [[directory("proc", mode=0o555), symlink("etc/mtab", "../proc/self/mounts")]])
    entries = list(image_entries(img, store))
    assert [e.mode for e in entries if e.path == "proc"] == [0o555]
    assert [e.linkname for e in entries if e.path == "etc/mtab"] == ["../proc/self/mounts"]


def _kernel_tar() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for m in (directory("./lib"), directory("./lib/modules"), directory("./lib/modules/6.1"),
                  file("./lib/modules/6.1/modules.dep", b"dep"),
                  hardlink("./lib/modules/6.1/alias", "./lib/modules/6.1/modules.dep"),
                  file("./boot/dtb/x.dtb", b"dtb")):  # fmt: skip
            tf.addfile(m.info, io.BytesIO(m.data) if m.info.isreg() else None)
    return buf.getvalue()


def test_kernel_image_gives_boot_files_and_kernel_tar_contents(store: Store) -> None:
    img = _image(
        store,
        [[file("kernel", b"bzImage", mode=0o600), file("kernel.tar", _kernel_tar()), file("System.map", b"map"),
          file("kernel-headers.tar", b"h")]],
    )  # fmt: skip
    got = _collect(kernel_entries(img, store, KernelSpec("k", "console=ttyS0")))
    assert got[:3] == [
        ("boot", "dir", None),
        ("boot/cmdline", "file", b"console=ttyS0"),
        ("boot/kernel", "file", b"bzImage"),
    ]
    paths = [p for p, _, _ in got]
    assert "lib/modules/6.1/modules.dep" in paths and "boot/dtb/x.dtb" in paths
    assert ("lib/modules/6.1/alias", "symlink", "modules.dep") in got
    assert "System.map" not in paths and "kernel-headers.tar" not in paths


def test_kernel_binary_and_tar_names_can_be_changed_or_the_tar_dropped(store: Store) -> None:
    img = _image(store, [[file("vmlinuz", b"K"), file("mods.tar", _kernel_tar())]])
    got = _paths(kernel_entries(img, store, KernelSpec("k", "", binary="vmlinuz", tar="mods.tar")))
    assert "boot/kernel" in got and "lib/modules/6.1/modules.dep" in got
    got = _paths(kernel_entries(img, store, KernelSpec("k", "", binary="vmlinuz", tar="none")))
    assert got == ["boot", "boot/cmdline", "boot/kernel"]


def test_missing_kernel_or_kernel_tar_is_an_error(store: Store) -> None:
    img = _image(store, [[file("kernel.tar", _kernel_tar())]])
    with pytest.raises(BuildError, match=r"did not find kernel 'kernel' in kernel image lkctl\.local/test:1"):
        _collect(kernel_entries(img, store, KernelSpec("k")))
    img = _image(store, [[file("kernel", b"K")]], ref="lkctl.local/notar:1")
    with pytest.raises(BuildError, match=r"did not find kernel tar 'kernel\.tar'"):
        _collect(kernel_entries(img, store, KernelSpec("k")))


def test_ucode_leads_the_stream(store: Store) -> None:
    img = _image(store, [[file("kernel", b"K"), file("kernel.tar", _kernel_tar()), file("ucode.cpio", b"UCODE")]])
    got = _collect(kernel_entries(img, store, KernelSpec("k", ucode="ucode.cpio")))
    assert got[:2] == [("boot", "dir", None), ("boot/ucode.cpio", "file", b"UCODE")]
    assert [p for p, _, _ in got].count("boot") == 1
    with pytest.raises(BuildError, match=r"did not find ucode 'other\.cpio'"):
        _collect(kernel_entries(img, store, KernelSpec("k", ucode="other.cpio")))


def test_apk_databases_of_init_images_are_concatenated(store: Store) -> None:
    a = _image(store, [[file("lib/apk/db/installed", b"P:busybox")]], ref="lkctl.local/a:1")
    b = _image(store, [[file("lib/apk/db/installed", b"P:runc")]], ref="lkctl.local/b:1")
    merger = ApkDbMerger()
    first = _collect([*merger.watch(flatten(a, store)), *merger.watch(flatten(b, store))])
    assert ("lib/apk/db/installed", "file", b"P:busybox") in first  # passed through unchanged
    assert _collect(merger.merged()) == [("lib/apk/db/installed", "file", b"P:busybox\n\nP:runc\n\n")]


def test_a_corrupt_zstd_layer_is_refused_clearly(store: Store) -> None:
    blob = store.put_blob(b"\x28\xb5\x2f\xfd" + b"\0" * 64, "application/vnd.oci.image.layer.v1.tar+zstd")
    store.add_image("lkctl.local/zstd:1", [(blob, blob.digest)])
    with pytest.raises(BuildError, match=r"layer sha256:[0-9a-f]+: zstd failed"):
        list(flatten(store.resolve("lkctl.local/zstd:1"), store))


def test_unknown_tar_entry_types_are_refused(store: Store) -> None:
    label = tarfile.TarInfo("volume-label")
    label.type = b"V"  # a GNU volume header: not a filesystem entry
    img = _image(store, [[Member(label)]], ref="lkctl.local/odd:1")
    with pytest.raises(BuildError, match="entry 'volume-label' has unsupported tar type"):
        list(flatten(img, store))

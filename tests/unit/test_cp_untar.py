"""What a guest's tar stream may do to the host in `vm.cp VM:SRC DEST`: nothing outside DEST, nothing half-done."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from lkctl.errors import ConfigError
from lkctl.ssh._untar import StreamRefused, plan_copy, receive_tar


def _tar(*entries: tuple[str, str, str | bytes]) -> io.BytesIO:
    """(kind, name, data-or-linkname) with kind in dir|file|sym|hard|fifo."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for kind, name, data in entries:
            ti = tarfile.TarInfo(name)
            ti.mtime = 1000
            if kind == "dir":
                ti.type, ti.mode = tarfile.DIRTYPE, 0o755
                tf.addfile(ti)
            elif kind == "file":
                raw = data.encode() if isinstance(data, str) else data
                ti.size, ti.mode = len(raw), 0o4755 if name.endswith("suid") else 0o640
                tf.addfile(ti, io.BytesIO(raw))
            elif kind in ("sym", "hard"):
                ti.type = tarfile.SYMTYPE if kind == "sym" else tarfile.LNKTYPE
                ti.linkname = str(data)
                tf.addfile(ti)
            else:
                ti.type = tarfile.FIFOTYPE
                tf.addfile(ti)
    buf.seek(0)
    return buf


def _receive(stream: io.BytesIO, dest: Path | str, name: str | None = "d") -> Path:
    plan = plan_copy(dest, name or "", contents=name is None)
    return receive_tar(stream, plan, name=name, origin="VM t:/x")


@pytest.fixture
def host(tmp_path: Path) -> Path:
    """A host directory with files a hostile stream would like to replace; the copy goes to host/dest."""
    (tmp_path / ".bashrc").write_text("mine\n")
    (tmp_path / "x").write_text("mine\n")
    return tmp_path


def _untouched(host: Path) -> None:
    assert (host / ".bashrc").read_text() == "mine\n"
    assert (host / "x").read_text() == "mine\n"
    assert sorted(p.name for p in host.iterdir()) == [".bashrc", "x"]  # no dest, no temp dir left


HOSTILE: dict[str, list[tuple[str, str, str | bytes]]] = {
    "dotdot_through_a_subdir": [("dir", "./d", ""), ("dir", "./d/f", ""), ("file", "./d/f/../../.bashrc", "pwn")],
    "parent": [("dir", "./d", ""), ("file", "../x", "pwn")],
    "absolute": [("dir", "./d", ""), ("file", "/tmp/lkctl-cp-absolute", "pwn")],
    "other_root": [("dir", "./d", ""), ("file", "./e/x", "pwn")],
    "symlink_absolute": [("dir", "./d", ""), ("sym", "./d/l", "/etc")],
    "symlink_up": [("dir", "./d", ""), ("sym", "./d/l", "../x")],
    "symlink_chain": [("dir", "./d", ""), ("sym", "./d/a", "."), ("sym", "./d/b", "a/..")],
    "symlink_forward_chain": [("dir", "./d", ""), ("sym", "./d/b", "a/.."), ("sym", "./d/a", ".")],
    "write_through_symlink": [("dir", "./d", ""), ("sym", "./d/l", "."), ("file", "./d/l/x", "pwn")],
    "hardlink_host_file": [("dir", "./d", ""), ("hard", "./d/pw", "/etc/passwd")],
    "hardlink_outside": [("dir", "./d", ""), ("hard", "./d/pw", "../x")],
    "hardlink_missing": [("dir", "./d", ""), ("hard", "./d/pw", "./d/nothing")],
    "duplicate": [("dir", "./d", ""), ("file", "./d/f", "a"), ("sym", "./d/f", "/etc/passwd")],
    "fifo": [("dir", "./d", ""), ("fifo", "./d/p", "")],
    "root_symlink_absolute": [("sym", "./d", "/etc/passwd")],
    "root_not_first": [("file", "./d/f", "a"), ("dir", "./d", "")],
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_hostile_stream_is_refused_and_leaves_nothing(host: Path, case: str) -> None:
    entries = [*HOSTILE[case], ("file", "./d/big", os.urandom(4096))]
    with pytest.raises(StreamRefused) as e:
        _receive(_tar(*entries), host / "dest")
    assert "\n" not in str(e.value) and "refusing the copy of VM t:/x" in str(e.value)
    _untouched(host)
    assert not Path("/tmp/lkctl-cp-absolute").exists()


def test_a_tree_with_inside_links_and_hardlinks_is_copied_with_modes(host: Path) -> None:
    stream = _tar(
        ("dir", "./d", ""),
        ("dir", "./d/sub", ""),
        ("file", "./d/sub/f", "hello"),
        ("file", "./d/suid", "s"),
        ("hard", "./d/h", "./d/sub/f"),
        ("sym", "./d/up", "sub/../sub/f"),
        ("sym", "./d/sub/back", "../up"),
    )
    landed = _receive(stream, host / "dest")
    assert landed == host / "dest"
    assert (landed / "sub" / "f").read_text() == "hello"
    assert (landed / "h").stat().st_ino == (landed / "sub" / "f").stat().st_ino
    assert os.readlink(landed / "up") == "sub/../sub/f" and (landed / "sub" / "back").read_text() == "hello"
    assert (landed / "sub" / "f").stat().st_mode & 0o7777 == 0o640
    assert (landed / "suid").stat().st_mode & 0o7777 == 0o755  # setuid dropped
    assert sorted(p.name for p in host.iterdir()) == [".bashrc", "dest", "x"]


def test_a_directory_into_an_existing_directory_lands_under_its_name(host: Path) -> None:
    (host / "dest").mkdir()
    landed = _receive(_tar(("dir", "./d", ""), ("file", "./d/f", "1")), host / "dest")
    assert landed == host / "dest" / "d" and (landed / "f").read_text() == "1"


def test_contents_merge_into_an_existing_directory_and_replace_files(host: Path) -> None:
    dest = host / "dest"
    (dest / "keep").mkdir(parents=True)
    (dest / "keep" / "old").write_text("old")
    (dest / "f").write_text("old")
    stream = _tar(("dir", ".", ""), ("dir", "./keep", ""), ("file", "./keep/new", "n"), ("file", "./f", "new"))
    landed = _receive(stream, dest, name=None)
    assert landed == dest
    assert (dest / "keep" / "old").read_text() == "old" and (dest / "keep" / "new").read_text() == "n"
    assert (dest / "f").read_text() == "new"
    assert sorted(p.name for p in dest.iterdir()) == ["f", "keep"]


def test_a_merge_never_follows_a_host_symlink_in_the_destination(host: Path) -> None:
    dest = host / "dest"
    dest.mkdir()
    (dest / "keep").symlink_to(host)  # the user's own link; the guest's `keep/` must not be merged through it
    with pytest.raises(ConfigError, match="exists and is not a directory"):
        _receive(_tar(("dir", ".", ""), ("dir", "./keep", ""), ("file", "./keep/x", "pwn")), dest, name=None)
    assert (host / "x").read_text() == "mine\n"
    assert sorted(p.name for p in dest.iterdir()) == ["keep"]


def test_a_file_onto_a_file_replaces_it_and_a_directory_onto_a_file_is_refused(host: Path) -> None:
    (host / "dest").write_text("old")
    _receive(_tar(("file", "./d", "new")), host / "dest")
    assert (host / "dest").read_text() == "new"
    with pytest.raises(ConfigError, match="directory VM t:/x over the file"):
        _receive(_tar(("dir", "./d", ""), ("file", "./d/f", "1")), host / "dest")
    assert (host / "dest").read_text() == "new"


def test_missing_parent_and_missing_trailing_slash_directory_are_refused_in_lkctls_words(host: Path) -> None:
    with pytest.raises(ConfigError, match=r"parent directory .* does not exist"):
        plan_copy(host / "no" / "dest", "d", contents=False)
    with pytest.raises(ConfigError, match="that directory does not exist"):
        _receive(_tar(("file", "./d", "1")), f"{host}/newdir/")
    _untouched(host)


def test_an_empty_stream_says_the_guest_sent_nothing(host: Path) -> None:
    with pytest.raises(StreamRefused, match="sent no copy"):
        _receive(io.BytesIO(b""), host / "dest")
    _untouched(host)

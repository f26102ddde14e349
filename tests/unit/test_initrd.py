"""The initrd sink: newc framing, parallel gzip, and what the real `cpio`/`gzip` tools make of its output."""

from __future__ import annotations

import gzip
import io
import os
import shutil
import subprocess
import threading
import zlib
from pathlib import Path

import pytest

from lkctl.build._entry import DEFAULT_MTIME, Entry, EntryKind
from lkctl.build.initrd import CpioWriter, GzipStream, InitrdWriter
from lkctl.errors import BuildError


def _file(path: str, data: bytes, mode: int = 0o644, *, uid: int = 0, gid: int = 0) -> Entry:
    return Entry(path, EntryKind.FILE, mode, uid=uid, gid=gid, size=len(data), data=io.BytesIO(data))


def _parse_newc(raw: bytes) -> list[dict[str, object]]:
    """A strict newc reader: every header at a 4-byte boundary, data padded to 4, ends at TRAILER!!!."""
    out: list[dict[str, object]] = []
    pos = 0
    while True:
        assert pos % 4 == 0
        assert raw[pos : pos + 6] == b"070701", f"bad magic at {pos}"
        fields = [int(raw[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i in range(13)]
        ino, mode, uid, gid, nlink, mtime, size, _, _, rmaj, rmin, namesize, check = fields
        name = raw[pos + 110 : pos + 110 + namesize - 1].decode()
        assert raw[pos + 110 + namesize - 1] == 0
        pos += 110 + namesize
        pos += -pos % 4
        data = raw[pos : pos + size]
        pos += size
        pos += -pos % 4
        if name == "TRAILER!!!":
            assert pos == len(raw)
            return out
        assert check == 0
        out.append(
            dict(
                name=name, ino=ino, mode=mode, uid=uid, gid=gid, nlink=nlink, mtime=mtime, data=data, rdev=(rmaj, rmin)
            )
        )


def _sample_entries(big: bytes) -> list[Entry]:
    return [
        Entry("etc", EntryKind.DIR, 0o755),
        _file("etc/hostname", b"vm\n", uid=12, gid=34),
        _file("a", b"abc"),  # names of every length mod 4 exercise the padding
        _file("ab", b""),
        _file("abc", b"x" * 5),
        _file("abcd", b"y" * 6),
        _file("big.bin", big, 0o600),
        Entry("usr", EntryKind.DIR, 0o700),
        Entry("usr/link", EntryKind.SYMLINK, 0o777, linkname="../etc/hostname"),
        Entry("dev", EntryKind.DIR, 0o755),
        Entry("dev/null", EntryKind.CHAR, 0o666, devmajor=1, devminor=3),
        Entry("dev/sda", EntryKind.BLOCK, 0o660, devmajor=8, devminor=0),
        Entry("run.fifo", EntryKind.FIFO, 0o644),
        Entry("setuid", EntryKind.FILE, 0o4755, size=0),
    ]


def _big() -> bytes:
    # random + repetitive so several 1 MiB gzip blocks are made, some of them using the dictionary
    return os.urandom(1 << 20) + b"0123456789abcdef" * (200_000) + os.urandom(12345)


def test_cpio_framing_has_aligned_headers_unique_inodes_and_a_trailer() -> None:
    buf = io.BytesIO()
    w = CpioWriter(buf)
    big = _big()
    for e in _sample_entries(big):
        w.add(e)
    w.close()
    records = _parse_newc(buf.getvalue())
    assert [r["name"] for r in records] == [e.path for e in _sample_entries(b"")]
    assert len({r["ino"] for r in records}) == len(records)
    by_name = {r["name"]: r for r in records}
    assert by_name["etc"]["mode"] == 0o040755 and by_name["etc"]["nlink"] == 2
    assert by_name["etc/hostname"]["mode"] == 0o100644
    assert (by_name["etc/hostname"]["uid"], by_name["etc/hostname"]["gid"]) == (12, 34)
    assert by_name["etc/hostname"]["mtime"] == DEFAULT_MTIME
    assert by_name["big.bin"]["data"] == big
    assert by_name["usr/link"]["mode"] == 0o120777 and by_name["usr/link"]["data"] == b"../etc/hostname"
    assert by_name["dev/null"]["mode"] == 0o020666 and by_name["dev/null"]["rdev"] == (1, 3)
    assert by_name["dev/sda"]["mode"] == 0o060660 and by_name["dev/sda"]["rdev"] == (8, 0)
    assert by_name["run.fifo"]["mode"] == 0o010644
    assert by_name["setuid"]["mode"] == 0o104755


def test_parallel_gzip_output_is_one_valid_member_equal_to_the_input(tmp_path: Path) -> None:
    data = _big() * 3
    out = tmp_path / "x.gz"
    with open(out, "wb") as f:
        gz = GzipStream(f, 6, threads=2)
        for i in range(0, len(data), 70_000):  # uneven writes across block boundaries
            gz.write(data[i : i + 70_000])
        gz.close()
    raw = out.read_bytes()
    assert gzip.decompress(raw) == data
    d = zlib.decompressobj(31)
    assert d.decompress(raw) == data and d.eof and d.unused_data == b""  # a single gzip member
    subprocess.run(["gzip", "-t", str(out)], check=True)


def test_parallel_gzip_compresses_as_well_as_single_threaded_zlib() -> None:
    data = b"".join(b"line %d of a fairly compressible text file\n" % i for i in range(300_000))
    buf = io.BytesIO()
    gz = GzipStream(buf, 6, threads=2)
    gz.write(data)
    gz.close()
    reference = len(gzip.compress(data, 6))
    assert len(buf.getvalue()) <= reference * 1.01


def test_initrd_extracts_with_real_cpio_and_leaves_out_boot(tmp_path: Path) -> None:
    if shutil.which("cpio") is None:
        pytest.skip("cpio is not installed")
    big = _big()
    img = tmp_path / "initrd.img"
    with open(img, "wb") as f, InitrdWriter(f) as w:
        w.add(Entry("boot", EntryKind.DIR, 0o755))
        w.add(_file("boot/kernel", b"KERNEL"))
        for e in _sample_entries(big):
            if e.kind not in (EntryKind.CHAR, EntryKind.BLOCK) or os.geteuid() == 0:
                w.add(e)
    subprocess.run(["gzip", "-t", str(img)], check=True)
    root = tmp_path / "root"
    root.mkdir()
    with subprocess.Popen(["gzip", "-dc", str(img)], stdout=subprocess.PIPE) as unzip:
        subprocess.run(["cpio", "-idm", "--quiet"], stdin=unzip.stdout, cwd=root, check=True)
    assert unzip.returncode == 0
    assert not (root / "boot").exists()
    assert (root / "etc/hostname").read_bytes() == b"vm\n"
    assert (root / "big.bin").read_bytes() == big
    assert (root / "big.bin").stat().st_mode & 0o7777 == 0o600
    assert os.readlink(root / "usr/link") == "../etc/hostname"
    assert (root / "usr").stat().st_mode & 0o7777 == 0o700
    assert (root / "etc/hostname").stat().st_mtime == DEFAULT_MTIME
    assert (root / "setuid").stat().st_mode & 0o7777 == 0o4755
    assert (root / "run.fifo").is_fifo()
    if os.geteuid() == 0:
        assert (root / "dev/null").is_char_device() and os.major((root / "dev/null").stat().st_rdev) == 1
        assert (root / "dev/sda").is_block_device()


def test_empty_initrd_is_still_a_valid_archive(tmp_path: Path) -> None:
    img = tmp_path / "empty.img"
    with open(img, "wb") as f, InitrdWriter(f):
        pass
    assert _parse_newc(gzip.decompress(img.read_bytes())) == []


def test_content_shorter_than_declared_size_is_refused() -> None:
    w = CpioWriter(io.BytesIO())
    with pytest.raises(BuildError, match="shorter than its recorded size"):
        w.add(Entry("x", EntryKind.FILE, 0o644, size=10, data=io.BytesIO(b"abc")))
    with pytest.raises(BuildError, match="shorter than its recorded size"):
        w.add(Entry("y", EntryKind.FILE, 0o644, size=3 << 20, data=io.BytesIO(b"a" * (2 << 20))))


def test_files_over_the_newc_4gib_limit_are_refused() -> None:
    with pytest.raises(BuildError, match="4 GiB"):
        CpioWriter(io.BytesIO()).add(Entry("huge", EntryKind.FILE, 0o644, size=1 << 32, data=io.BytesIO()))


def test_ids_that_do_not_fit_the_header_are_refused() -> None:
    with pytest.raises(BuildError, match="uid/gid"):
        CpioWriter(io.BytesIO()).add(Entry("x", EntryKind.DIR, 0o755, uid=1 << 32))


def test_bad_gzip_level_is_refused() -> None:
    with pytest.raises(BuildError, match="level"):
        GzipStream(io.BytesIO(), 10)


def test_writer_stops_its_threads_when_the_build_fails(tmp_path: Path) -> None:
    before = threading.active_count()
    with pytest.raises(RuntimeError), open(tmp_path / "x", "wb") as f, InitrdWriter(f, threads=2) as w:
        w.add(_file("a", os.urandom(3 << 20)))
        raise RuntimeError("source failed")
    assert threading.active_count() == before

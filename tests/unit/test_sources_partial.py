"""FollowHash (hashing a file while it is written, a resumed file's kept bytes first) and WriteBack."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import pytest

from lkctl.http._partial import FollowHash, WriteBack
from lkctl.http._sha256 import Sha256

BLOCK = os.urandom(1 << 20)


def test_the_kept_bytes_and_the_ones_written_meanwhile_hash_like_the_whole_file(tmp_path: Path) -> None:
    path = tmp_path / "f.part"
    kept = BLOCK * 5 + BLOCK[:12345]
    path.write_bytes(kept)
    h = Sha256()
    follow = FollowHash(path, h, 0, len(kept))
    written = len(kept)
    with open(path, "ab", buffering=0) as f:
        for i in range(20):  # small and large writes, each reported as the writer makes progress
            chunk = BLOCK[: 1000 * (i + 1)] if i % 2 else BLOCK
            f.write(chunk)
            written += len(chunk)
            follow.advance(written)
    assert follow.finish(written) == written == path.stat().st_size
    assert h.hexdigest() == hashlib.sha256(path.read_bytes()).hexdigest()


def test_hashing_resumes_where_an_earlier_hash_stopped(tmp_path: Path) -> None:
    path = tmp_path / "f.part"
    path.write_bytes(BLOCK * 3)
    h = Sha256()
    h.update(BLOCK)  # the first MiB was hashed by an earlier attempt
    assert FollowHash(path, h, len(BLOCK), len(BLOCK) * 3).finish(len(BLOCK) * 3) == len(BLOCK) * 3
    assert h.hexdigest() == hashlib.sha256(BLOCK * 3).hexdigest()


def test_a_writer_in_another_thread_is_followed_until_finish(tmp_path: Path) -> None:
    path = tmp_path / "f.part"
    path.write_bytes(b"")
    h = Sha256()
    follow = FollowHash(path, h, 0, 0)
    total = 0

    def write() -> None:
        nonlocal total
        with open(path, "ab", buffering=0) as f:
            for _ in range(16):
                f.write(BLOCK[:300_000])
                total += 300_000
                follow.advance(total)

    t = threading.Thread(target=write)
    t.start()
    t.join()
    assert follow.finish(total) == total
    assert h.hexdigest() == hashlib.sha256(BLOCK[:300_000] * 16).hexdigest()


def test_a_file_shorter_than_reported_is_an_error_not_a_wrong_hash(tmp_path: Path) -> None:
    path = tmp_path / "f.part"
    path.write_bytes(BLOCK)
    follow = FollowHash(path, Sha256(), 0, len(BLOCK) * 2)
    with pytest.raises(OSError, match="ended at"):
        follow.finish(len(BLOCK) * 2)


def test_writeback_syncs_in_the_background_and_stops(tmp_path: Path) -> None:
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        wb = WriteBack(fd, every=1 << 20)
        for i in range(1, 5):
            os.write(fd, BLOCK)
            wb.written(i << 20)
        wb.stop(flush=True)
        wb.join()
    finally:
        os.close(fd)
    assert (tmp_path / "f").read_bytes() == BLOCK * 4

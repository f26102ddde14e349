"""lkctl.http._sha256: the same digests as hashlib, a midstate that can be taken up again, file regions hashed."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from lkctl.http import _sha256
from lkctl.http._sha256 import Midstate, Sha256

DATA = os.urandom((3 << 20) + 12345)

needs_midstate = pytest.mark.skipif(not Sha256.can_resume(), reason="this Python's libcrypto takes no midstate")


def test_buffers_of_every_kind_hash_like_hashlib() -> None:
    h = Sha256()
    h.update(DATA[:100])
    h.update(bytearray(DATA[100:5000]))
    h.update(memoryview(DATA)[5000:70000])  # read-only view
    h.update(memoryview(bytearray(DATA[70000:])))
    h.update(b"")
    assert h.hexdigest() == hashlib.sha256(DATA).hexdigest()
    assert h.hexdigest() == hashlib.sha256(DATA).hexdigest()  # a digest does not end the hash
    assert h.length == len(DATA)


def test_a_file_region_hashes_like_its_bytes(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(DATA)
    h = Sha256()
    with open(path, "rb") as f:
        h.update(DATA[:777])
        h.update_file(f.fileno(), 777, len(DATA) - 777)  # unaligned start, several windows
    assert h.hexdigest() == hashlib.sha256(DATA).hexdigest()


def test_a_region_past_the_end_of_the_file_is_an_error_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(DATA[:10000])
    with open(path, "rb") as f, pytest.raises(OSError, match="ended"):
        Sha256().update_file(f.fileno(), 4096, 10000)


@needs_midstate
def test_a_midstate_taken_up_again_gives_the_whole_digest() -> None:
    h = Sha256()
    h.update(DATA[:1_000_003])  # not on a block boundary: the midstate stops at the last whole block
    state = h.midstate()
    assert state is not None and state.length == 1_000_003 - 1_000_003 % 64
    again = Sha256(Midstate.from_hex(state.to_hex(), state.length))
    again.update(DATA[state.length :])
    assert again.hexdigest() == hashlib.sha256(DATA).hexdigest() and again.length == len(DATA)


@needs_midstate
def test_a_midstate_beyond_4_gib_keeps_its_length() -> None:
    words = tuple(range(1, 9))
    h = Sha256(Midstate(words, (5 << 30) + 64))
    assert h.midstate() == Midstate(words, (5 << 30) + 64)


@pytest.mark.parametrize(("text", "length"), [("ab" * 31, 64), ("xy" * 32, 64), ("ab" * 32, 65), ("ab" * 32, -64)])
def test_a_malformed_midstate_is_refused(text: str, length: int) -> None:
    with pytest.raises(ValueError):
        Midstate.from_hex(text, length)


def test_without_libcrypto_hashlib_hashes_files_and_no_midstate_is_offered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_sha256, "_LIBS", None)  # as on a platform where libcrypto is not found
    path = tmp_path / "f"
    path.write_bytes(DATA)
    h = Sha256()
    with open(path, "rb") as f:
        h.update_file(f.fileno(), 0, len(DATA))
    assert h.hexdigest() == hashlib.sha256(DATA).hexdigest()
    assert h.midstate() is None and not Sha256.can_resume()
    with pytest.raises(ValueError):
        Sha256(Midstate((0,) * 8, 64))


def test_a_file_that_grows_between_calls_and_a_second_file_are_both_read_right(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(DATA[:1000])
    b.write_bytes(DATA)
    h = Sha256()
    with open(a, "rb") as fa, open(b, "rb") as fb:
        h.update_file(fa.fileno(), 0, 1000)  # maps a window reaching past a's end
        with open(a, "ab") as grow:
            grow.write(DATA[1000:200_000])
        h.update_file(fa.fileno(), 1000, 199_000)  # the same mapping now sees the new bytes
        h.update_file(fb.fileno(), 5, 1000)  # another file: another mapping
        h.close()
    assert h.hexdigest() == hashlib.sha256(DATA[:200_000] + DATA[5:1005]).hexdigest()


_TRUNCATE_WHILE_HASHING = """
import os, sys, threading
from pathlib import Path
from lkctl.http._partial import hash_file

path = Path(sys.argv[1])
size = 48 << 20
stop = threading.Event()

def cut() -> None:  # another program rewriting the file in place, as `cp new old` does
    while not stop.is_set():
        os.truncate(path, 0)
        os.truncate(path, size)

with open(path, "wb") as f:
    f.truncate(size)
t = threading.Thread(target=cut)
t.start()
results = {"digest": 0, "error": 0}
try:
    for _ in range(40):
        try:
            hash_file(path)
            results["digest"] += 1
        except OSError:
            results["error"] += 1
finally:
    stop.set()
    t.join()
print(results["digest"] + results["error"])
"""


def test_a_file_cut_short_while_it_is_hashed_is_an_error_not_a_crash(tmp_path: Path) -> None:
    # hash_file verifies files anyone may rewrite meanwhile; through a mapping, a page past the new end is SIGBUS
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", _TRUNCATE_WHILE_HASHING, str(tmp_path / "image.raw")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, f"exit {done.returncode}: {done.stderr[-2000:]}"
    assert done.stdout.split() == ["40"]  # every attempt ended in a digest or an OSError

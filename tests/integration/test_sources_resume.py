"""Resuming a download another attempt left behind, against a real HTTP server on loopback: the checkpoint the
stopped attempt records (the sha256 midstate bound to the `.part`) is taken up, and anything that no longer matches
the file falls back to hashing the kept bytes, so the digest always describes the bytes on disk."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from lkctl.http import DownloadError, _sha256
from lkctl.http._partial import Part
from lkctl.http._sha256 import Sha256
from lkctl.http.client import RetryPolicy, download
from tests.integration.test_sources_http import DATA, SHA, Faults, faulty_server

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not Sha256.can_resume(), reason="this Python's libcrypto takes no midstate"),
]

HALF = len(DATA) // 2


def once() -> RetryPolicy:
    return RetryPolicy(attempts=1, sleep=lambda _: None)


def interrupted(tmp_path: Path) -> tuple[Path, Path, dict[str, Any]]:
    """A download whose connection dropped at half the file, with no retry left: the `.part` and its sidecar."""
    dest = tmp_path / "file.img"
    with faulty_server(Faults(["drop"])) as url, pytest.raises(DownloadError, match="gave up"):
        download([url], dest, sha256=SHA, retry=once())
    part = tmp_path / "file.img.part"
    return dest, part, json.loads((tmp_path / "file.img.part.json").read_text())


def adopted(part: Path) -> Part:
    p = Part(part, part.with_name(part.name + ".json"))
    p.load(SHA)
    return p


def test_a_dropped_download_leaves_a_durable_checkpoint_that_the_resume_takes_up(tmp_path: Path) -> None:
    dest, part, meta = interrupted(tmp_path)
    cp = meta["checkpoint"]
    st = part.stat()
    assert part.read_bytes() == DATA[:HALF]
    assert (cp["size"], cp["mtime_ns"], cp["ino"]) == (HALF, st.st_mtime_ns, st.st_ino)
    assert cp["length"] == HALF - HALF % 64
    assert adopted(part).hashed == cp["length"]  # the kept bytes are not hashed again
    faults = Faults()
    with faulty_server(faults) as url:
        got = download([url], dest, sha256=SHA, retry=once())
    assert got.resumed_from == HALF and got.sha256 == SHA and dest.read_bytes() == DATA
    assert faults.seen[0]["range"] == f"bytes={HALF}-"
    assert not part.exists() and not part.with_name(part.name + ".json").exists()


def test_ctrl_c_mid_download_leaves_a_checkpoint_too(tmp_path: Path) -> None:
    dest = tmp_path / "file.img"

    def stop_halfway(done: int, total: int | None) -> None:
        if done >= HALF:
            raise KeyboardInterrupt

    with faulty_server(Faults()) as url:
        with pytest.raises(KeyboardInterrupt):
            download([url], dest, sha256=SHA, progress=stop_halfway, retry=once())
        kept = (tmp_path / "file.img.part").stat().st_size
        assert adopted(tmp_path / "file.img.part").hashed == kept - kept % 64
        got = download([url], dest, sha256=SHA, retry=once())
    assert got.resumed_from == kept and dest.read_bytes() == DATA


def touch(path: Path) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1000))


def rewrite_last_block(path: Path) -> None:
    st = path.stat()
    with open(path, "r+b") as f:
        f.seek(st.st_size - 10)
        f.write(b"x" * 10)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size and mtime: only the tail hash tells


def replace_with_a_copy(path: Path) -> None:
    st = path.stat()
    copy = path.with_name("copy")
    copy.write_bytes(path.read_bytes())
    os.utime(copy, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(copy, path)  # same bytes, size and mtime; another inode


def append_a_byte(path: Path) -> None:
    with open(path, "ab") as f:
        f.write(DATA[HALF : HALF + 1])


@pytest.mark.parametrize("change", [touch, rewrite_last_block, replace_with_a_copy, append_a_byte])
def test_a_part_that_changed_since_its_checkpoint_is_hashed_again_from_disk(tmp_path: Path, change: Any) -> None:
    dest, part, _ = interrupted(tmp_path)
    change(part)
    kept = part.stat().st_size
    assert adopted(part).hashed == 0
    with faulty_server(Faults()) as url:
        got = download([url], dest, sha256=SHA, retry=RetryPolicy(attempts=2, sleep=lambda _: None))
    # a rewritten block is read from disk, caught by the hash, and the file fetched again from byte 0
    assert got.resumed_from == (0 if change is rewrite_last_block else kept)
    assert dest.read_bytes() == DATA and got.sha256 == SHA


def test_a_wrong_midstate_is_caught_by_the_final_hash_and_the_file_fetched_again(tmp_path: Path) -> None:
    dest, part, meta = interrupted(tmp_path)
    meta["checkpoint"]["state"] = "00" * 32
    part.with_name(part.name + ".json").write_text(json.dumps(meta))
    faults = Faults()
    with faulty_server(faults) as url:
        got = download([url], dest, sha256=SHA, retry=RetryPolicy(attempts=2, sleep=lambda _: None))
    assert got.resumed_from == 0 and dest.read_bytes() == DATA
    assert [h.get("range") for h in faults.seen] == [f"bytes={HALF}-", None]


def test_without_an_exportable_hash_the_resume_hashes_the_kept_bytes_from_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_sha256, "_LIBS", None)  # a Python whose libcrypto lkctl cannot use
    dest, part, meta = interrupted(tmp_path)
    assert "checkpoint" not in meta and adopted(part).hashed == 0
    with faulty_server(Faults()) as url:
        got = download([url], dest, sha256=SHA, retry=once())
    assert got.resumed_from == HALF and dest.read_bytes() == DATA

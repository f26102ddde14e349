"""The download engine's failure handling against a real HTTP server on loopback that misbehaves on purpose:
connections dropped mid-body, 503/429 with Retry-After, Range ignored, a `.part` that is already whole."""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from lkctl.http import DownloadError, HttpError
from lkctl.http.client import RetryPolicy, download, request
from lkctl.http.client import new_client as http_client
from tests.integration._loopback import QuietHandler, serve_http

pytestmark = pytest.mark.integration

DATA = hashlib.sha256(b"lkctl").digest() * (1 << 15)  # 1 MiB
SHA = hashlib.sha256(DATA).hexdigest()


@dataclass
class Faults:
    """What the server does to the next requests, consumed in order; then it behaves."""

    script: list[str] = field(default_factory=list)  # "drop", "stall", "503", "429", "ignore-range"
    seen: list[dict[str, str]] = field(default_factory=list)


@contextlib.contextmanager
def faulty_server(faults: Faults) -> Iterator[str]:
    class H(QuietHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            faults.seen.append({k.lower(): v for k, v in self.headers.items()})
            fault = faults.script.pop(0) if faults.script else ""
            if fault in ("503", "429"):
                body = b"busy"
                self.send_response(int(fault))
                self.send_header("Retry-After", "2")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            start = 0
            rng = self.headers.get("Range", "")
            if rng.startswith("bytes=") and fault != "ignore-range":
                start = int(rng[6:].rstrip("-"))
                if start >= len(DATA):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(DATA)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(DATA) - 1}/{len(DATA)}")
            else:
                self.send_response(200)
            self.send_header("ETag", '"v1"')
            self.send_header("Content-Length", str(len(DATA) - start))
            self.end_headers()
            if fault == "stall":  # half the body, then nothing until the client gives up
                self.wfile.write(DATA[start : start + (len(DATA) - start) // 2])
                self.wfile.flush()
                time.sleep(3)
                self.close_connection = True
                return
            if fault == "drop":
                self.wfile.write(DATA[start : start + (len(DATA) - start) // 2])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(2)  # mid-body: the client sees a short read
                return
            self.wfile.write(DATA[start:])

    with serve_http(H) as server:
        yield f"http://127.0.0.1:{server.server_address[1]}/file.img"


def policy(waits: list[float], attempts: int = 4) -> RetryPolicy:
    return RetryPolicy(attempts=attempts, base_delay=0.01, max_delay=5, sleep=waits.append)


def test_connection_dropped_mid_body_is_resumed_from_where_it_stopped(tmp_path: Path) -> None:
    faults, waits = Faults(["drop"]), list[float]()
    with faulty_server(faults) as url:
        got = download([url], tmp_path / "file.img", sha256=SHA, retry=policy(waits))
    assert got.path.read_bytes() == DATA
    assert faults.seen[1]["range"] == f"bytes={len(DATA) // 2}-" and faults.seen[1]["if-range"] == '"v1"'
    assert len(waits) == 1  # one backoff between the drop and the resume
    assert faults.seen[0]["accept-encoding"] == "identity"


def test_a_stalled_body_times_out_and_is_resumed(tmp_path: Path) -> None:
    faults, waits = Faults(["stall"]), list[float]()
    with faulty_server(faults) as url, http_client(timeout=0.5) as client:
        started = time.monotonic()
        got = download([url], tmp_path / "file.img", sha256=SHA, client=client, retry=policy(waits))
    assert got.path.read_bytes() == DATA and got.resumed_from == 0
    assert time.monotonic() - started < 2.5  # the read timeout ended the stall, not the server
    assert faults.seen[1]["range"] == f"bytes={len(DATA) // 2}-"


def test_a_kept_part_of_another_file_is_caught_by_the_hash_and_fetched_again(tmp_path: Path) -> None:
    dest = tmp_path / "file.img"
    part = tmp_path / "file.img.part"
    part.write_bytes(b"x" * (len(DATA) // 2))  # hashed while the rest downloads: the sum cannot match
    (tmp_path / "file.img.part.json").write_text(f'{{"url": "", "validator": "", "sha256": "{SHA}", "total": null}}')
    faults = Faults()
    with faulty_server(faults) as url:
        got = download([url], dest, sha256=SHA, retry=policy([]))
    assert dest.read_bytes() == DATA and got.resumed_from == 0
    assert [h.get("range") for h in faults.seen] == [f"bytes={len(DATA) // 2}-", None]
    assert not part.exists()


def test_a_resumed_download_hashes_the_kept_part_and_the_rest(tmp_path: Path) -> None:
    dest = tmp_path / "file.img"
    (tmp_path / "file.img.part").write_bytes(DATA[: len(DATA) // 3])
    (tmp_path / "file.img.part.json").write_text(f'{{"url": "", "validator": "", "sha256": "{SHA}", "total": null}}')
    with faulty_server(Faults()) as url:
        got = download([url], dest, sha256=SHA, retry=policy([]))
    assert dest.read_bytes() == DATA and got.resumed_from == len(DATA) // 3 and got.sha256 == SHA


def test_503_and_429_are_retried_honouring_retry_after(tmp_path: Path) -> None:
    faults, waits = Faults(["503", "429"]), list[float]()
    with faulty_server(faults) as url:
        got = download([url], tmp_path / "file.img", sha256=SHA, retry=policy(waits))
    assert got.size == len(DATA)
    assert waits == [2.0, 2.0]


def test_server_ignoring_range_restarts_the_file_and_still_verifies(tmp_path: Path) -> None:
    faults, waits = Faults(["drop", "ignore-range"]), list[float]()
    with faulty_server(faults) as url:
        got = download([url], tmp_path / "file.img", sha256=SHA, retry=policy(waits))
    assert got.path.read_bytes() == DATA  # the 200 replaced the half file instead of being appended to it


def test_part_that_is_already_complete_is_verified_without_downloading_again(tmp_path: Path) -> None:
    dest = tmp_path / "file.img"
    (tmp_path / "file.img.part").write_bytes(DATA)
    (tmp_path / "file.img.part.json").write_text(f'{{"sha256": "{SHA}", "url": "", "validator": ""}}')
    faults = Faults()
    with faulty_server(faults) as url:
        got = download([url], dest, sha256=SHA, retry=policy([]))
    assert got.resumed_from == len(DATA) and dest.read_bytes() == DATA
    assert len(faults.seen) == 1 and faults.seen[0]["range"] == f"bytes={len(DATA)}-"  # answered 416


def test_retries_are_bounded_and_the_error_says_so(tmp_path: Path) -> None:
    faults, waits = Faults(["503"] * 10), list[float]()
    with faulty_server(faults) as url:
        with pytest.raises(DownloadError, match="gave up after 3 attempts"):
            download([url], tmp_path / "file.img", sha256=SHA, retry=policy(waits, attempts=3))
    assert len(faults.seen) == 3 and not (tmp_path / "file.img").exists()


def test_retry_after_longer_than_the_backoff_cap_fails_fast(tmp_path: Path) -> None:
    faults = Faults(["503"])
    with faulty_server(faults) as url:
        with pytest.raises(DownloadError, match="retry in 2s"):
            download(
                [url],
                tmp_path / "f",
                sha256=SHA,
                retry=RetryPolicy(attempts=3, max_delay=1, sleep=list[float]().append),
            )


def test_small_requests_retry_and_report_the_final_status(tmp_path: Path) -> None:
    faults, waits = Faults(["503"]), list[float]()
    with faulty_server(faults) as url, http_client() as client:
        assert request(client, "GET", url, retry=policy(waits)).content == DATA
        faults.script = ["503"] * 5
        with pytest.raises(HttpError) as err:
            request(client, "GET", url, retry=policy(waits, attempts=2))
    assert err.value.status == 503


class HugeAnswers(QuietHandler):
    """Metadata endpoints gone wrong: /declared says 17 MiB up front, /endless never stops (no length),
    /bomb is 17 MiB of zeros gzip-compressed to ~17 KiB, /fine is 15 MiB."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        import gzip

        mib = 1 << 20
        if self.path == "/bomb":
            body = gzip.compress(bytes(17 * mib))
            self.send_response(200)
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.send_response(200)
        if self.path == "/endless":
            self.send_header("Connection", "close")
            self.end_headers()
            with contextlib.suppress(ConnectionError):
                for _ in range(1024):  # 1 GiB at most, should the client never stop reading
                    self.wfile.write(bytes(mib))
            return
        size = 17 * mib if self.path == "/declared" else 15 * mib
        self.send_header("Content-Length", str(size))
        self.end_headers()
        with contextlib.suppress(ConnectionError):
            self.wfile.write(bytes(size))


@pytest.mark.parametrize("path", ["/declared", "/endless", "/bomb"])
def test_a_small_request_refuses_an_answer_past_16_mib(path: str) -> None:
    with serve_http(HugeAnswers) as server, http_client() as client:
        url = f"http://127.0.0.1:{server.server_address[1]}{path}"
        with pytest.raises(DownloadError, match="more than 16 MiB where lkctl expects a small answer"):
            request(client, "GET", url, retry=policy([]))
        assert len(request(client, "GET", url.replace(path, "/fine")).content) == 15 << 20


class ChunkedPastItsSize(QuietHandler):
    """A chunked body (no length up front) that goes on past the size the caller expects: 64 MiB at most."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        with contextlib.suppress(ConnectionError):
            for _ in range(64):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(DATA), DATA))
            self.wfile.write(b"0\r\n\r\n")


def test_a_body_past_the_expected_size_is_refused_and_discarded(tmp_path: Path) -> None:
    with serve_http(ChunkedPastItsSize) as server, http_client() as client:
        url = f"http://127.0.0.1:{server.server_address[1]}/f"
        with pytest.raises(DownloadError, match=f"sent more than the {len(DATA)} bytes expected; download discarded"):
            download([url], tmp_path / "f", sha256=SHA, size=len(DATA), client=client, retry=policy([]))
    assert [p.name for p in tmp_path.iterdir()] == [".f.lock"]  # no .part of 64 MiB kept, no final file


class HostileRegistry(QuietHandler):
    """A registry whose error message would retitle the terminal and write the clipboard (OSC 0, OSC 52)."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        import json

        body = json.dumps({"errors": [{"code": "DENIED", "message": "\x1b]0;pwned\x07\x1b]52;c;ZWNobyBoaQ==\x07no"}]})
        self.send_response(400)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())


def test_a_servers_control_characters_reach_the_terminal_escaped(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    with serve_http(HostileRegistry) as server:
        ref = f"127.0.0.1:{server.server_address[1]}/x:1"
        env = {k: v for k, v in os.environ.items() if not k.startswith("LKCTL_")}
        env.update(LKCTL_HOME=str(tmp_path), LKCTL_SOURCES_RETRIES="1")
        lkctl = str(Path(sys.executable).parent / "lkctl")
        done = subprocess.run([lkctl, "image.pull", "--oci", ref], env=env, capture_output=True, timeout=60)
    assert done.returncode == 1 and b"\x1b" not in done.stderr and b"\x07" not in done.stderr
    assert b"DENIED: \\x1b]0;pwned\\x07\\x1b]52;c;ZWNobyBoaQ==\\x07no" in done.stderr

"""https through the client whose TLS context is made on the first https request: certificates are still verified
(a self-signed server is refused) and the environment's CA file is still honoured (SSL_CERT_FILE)."""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from lkctl.http import DownloadError
from lkctl.http.client import RetryPolicy, download
from tests.integration._loopback import QuietHandler, serve_http

pytestmark = pytest.mark.integration

DATA = b"lkctl over tls\n" * 1000


@contextlib.contextmanager
def https_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip

    class H(QuietHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(DATA)))
            self.end_headers()
            self.wfile.write(DATA)

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    with serve_http(H, lambda sock: ctx.wrap_socket(sock, server_side=True)) as server:
        yield f"https://127.0.0.1:{server.server_address[1]}/file", cert


def test_a_certificate_nobody_trusts_is_refused_and_nothing_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    with https_server(tmp_path) as (url, _):
        with pytest.raises(DownloadError, match=r"CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
            download([url], tmp_path / "out" / "file", retry=RetryPolicy(attempts=1))
    assert not (tmp_path / "out" / "file").exists()


def test_the_ca_file_named_by_ssl_cert_file_is_trusted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with https_server(tmp_path) as (url, cert):
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))
        got = download([url], tmp_path / "out" / "file", sha256=hashlib.sha256(DATA).hexdigest())
    assert got.path.read_bytes() == DATA

"""Real servers on 127.0.0.1 for the image-source tests: nginx (static files with Range), docker-registry, and a
small threaded stdlib server for API-shaped endpoints. Each is a context manager that stops what it started."""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import json
import secrets
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import IN_CI


class QuietHandler(http.server.BaseHTTPRequestHandler):
    """A test handler that logs no request line."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


class QuietHTTPServer(http.server.ThreadingHTTPServer):
    """A threaded test server that says nothing when a client goes away mid-response (download tests drop and
    stop connections on purpose, and socketserver would print a traceback after the test ended); any other error
    in a handler is still printed."""

    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError | ssl.SSLError | TimeoutError):
            super().handle_error(request, client_address)


@contextlib.contextmanager
def serve_http(
    handler: type[http.server.BaseHTTPRequestHandler], wrap: Callable[[socket.socket], socket.socket] | None = None
) -> Iterator[QuietHTTPServer]:
    """`handler` served on 127.0.0.1 (an ephemeral port) from a thread, stopped on exit; `wrap` (e.g. TLS) wraps
    the listening socket."""
    server = QuietHTTPServer(("127.0.0.1", 0), handler)
    if wrap is not None:
        server.socket = wrap(server.socket)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes] | None = None, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening on {port}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def require(program: str, package: str) -> str:
    found = shutil.which(program) or shutil.which(program, path="/usr/sbin:/sbin")
    if found:
        return found
    if IN_CI:
        pytest.fail(f"{program} missing in CI: ./bootstrap must install {package}")
    pytest.skip(f"{program} not installed (apt-get install {package})")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


# -- nginx ------------------------------------------------------------------------------------------------------

NGINX_CONF = """\
daemon off;
master_process off;
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/error.log warn;
events {{ worker_connections 256; }}
http {{
    default_type application/octet-stream;
    types {{ application/json json; text/plain txt; }}
    log_format lk '$request_method $uri $status range=$http_range sent=$body_bytes_sent auth=$http_authorization';
    access_log {work}/access.log lk;
    client_body_temp_path {work}/tmp-body;
    proxy_temp_path {work}/tmp-proxy;
    fastcgi_temp_path {work}/tmp-fastcgi;
    uwsgi_temp_path {work}/tmp-uwsgi;
    scgi_temp_path {work}/tmp-scgi;
    sendfile on;
    # a first request (no Range) is throttled under /slow/, a resumed one is not: a kill test catches it mid-file
    map $http_range $lk_rate {{ "" {slow_rate}; default 0; }}
    server {{
        listen 127.0.0.1:{port};
        root {root};
        location /slow/ {{ alias {root}/; limit_rate $lk_rate; }}
        location /moved/ {{ rewrite ^/moved/(.*)$ /$1 redirect; }}
    }}
}}
"""


@dataclass
class Nginx:
    root: Path
    work: Path
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> list[str]:
        path = self.work / "access.log"
        return path.read_text().splitlines() if path.exists() else []


@contextlib.contextmanager
def nginx(root: Path, work: Path, *, slow_rate: str = "512k") -> Iterator[Nginx]:
    """nginx serving `root` on a free loopback port, as this user (master_process off), logs in `work`."""
    binary = require("nginx", "nginx-light")
    work.mkdir(parents=True, exist_ok=True)
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf = work / "nginx.conf"
    conf.write_text(NGINX_CONF.format(work=work, root=root, port=port, slow_rate=slow_rate))
    proc = subprocess.Popen(
        [binary, "-p", str(work), "-c", str(conf), "-e", str(work / "error.log")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,  # nginx logs to error.log in `work`
    )
    try:
        wait_port(port, proc)
        yield Nginx(root, work, port)
    finally:
        stop(proc)


def publish_cdn(
    root: Path, image: str, version: str, files: dict[str, bytes], *, sums: dict[str, str] | None = None
) -> None:
    """Lay out `<root>/<image>/<version>/` with files + SHA256SUMS (overridable) and update index.json."""
    vdir = root / image / version
    vdir.mkdir(parents=True, exist_ok=True)
    lines = []
    for name, data in files.items():
        (vdir / name).write_bytes(data)
        digest = (sums or {}).get(name) or hashlib.sha256(data).hexdigest()
        lines.append(f"{digest}  {name}\n")
    (vdir / "SHA256SUMS").write_text("".join(lines))
    index_path = root / image / "index.json"
    index = json.loads(index_path.read_text()) if index_path.exists() else {"versions": []}
    if version not in index["versions"]:
        index["versions"].append(version)
    index_path.write_text(json.dumps(index))


# -- a threaded stdlib server with routes -----------------------------------------------------------------------

Handler = Callable[["Request"], tuple[int, dict[str, str], bytes]]


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class RouteServer:
    """`routes(request) -> (status, headers, body)`; every request is recorded in `seen`."""

    routes: Handler
    port: int = 0
    seen: list[Request] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextlib.contextmanager
def route_server(routes: Handler) -> Iterator[RouteServer]:
    state = RouteServer(routes)

    class H(QuietHandler):
        protocol_version = "HTTP/1.1"

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            req = Request(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
            state.seen.append(req)
            status, headers, payload = state.routes(req)
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)

        do_GET = do_HEAD = do_POST = do_PUT = _serve

    with serve_http(H) as server:
        state.port = server.server_address[1]
        yield state


def json_response(
    obj: Any, status: int = 200, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    return status, {"Content-Type": "application/json; charset=utf-8", **(headers or {})}, json.dumps(obj).encode()


# ---- a real registry server (Debian's docker-registry) on loopback ----


@dataclass
class Reg:
    host: str
    storage: Path

    def blob_file(self, digest: str) -> Path:
        hexpart = digest.removeprefix("sha256:")
        return self.storage / "docker/registry/v2/blobs/sha256" / hexpart[:2] / hexpart / "data"


@contextlib.contextmanager
def docker_registry(work: Path, auth: Mapping[str, object] | None = None) -> Iterator[Reg]:
    binary = require("docker-registry", "docker-registry")
    port = free_port()
    config: dict[str, object] = {
        "version": 0.1,
        "log": {"level": "error", "accesslog": {"disabled": True}},
        "storage": {"filesystem": {"rootdirectory": str(work / "data")}, "delete": {"enabled": True}},
        "http": {"addr": f"127.0.0.1:{port}", "secret": secrets.token_hex(16)},
    }
    if auth:
        config["auth"] = auth
    work.mkdir(parents=True, exist_ok=True)
    (work / "config.yml").write_text(yaml.safe_dump(config))
    with open(work / "registry.log", "wb") as log:
        proc = subprocess.Popen([binary, "serve", str(work / "config.yml")], stdout=log, stderr=log)
    try:
        wait_port(port, proc)
        yield Reg(f"127.0.0.1:{port}", work / "data")
    finally:
        stop(proc)

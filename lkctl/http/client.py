"""HTTP for image sources and the OCI registry: downloads that end in a complete, verified file or in nothing.

The one module that streams files with httpx (the OCI registry client sends its API calls through `request` and
its blobs through `download` too). What httpx leaves to us, done here once:

- resume: bytes go to `<final>.part`; a later attempt, in this run or the next, takes the sha256 up from the
  checkpoint the stopped attempt left (or hashes the kept bytes while the rest arrives, lkctl.http._partial) and
  asks for the rest with `Range` (+ `If-Range` when the server gave a validator). 206 appends, 200 means
  the server ignored Range (start over), 416 means the `.part` is already whole (verify) or stale (start over).
- verification while streaming: sha256 (and size) checked before `fsync` + `os.replace` to the final name, so the
  final path only ever holds a verified file. A mismatch deletes the `.part`; a resumed file that fails is fetched
  once more from byte 0 before giving up (the old `.part` may have come from another file).
- retries with exponential backoff and jitter on connect/read errors, dropped streams, 429 and 5xx, honouring
  `Retry-After`. httpx's own `retries=` only covers connect errors.
- redirects followed (GitHub assets, registry blobs), `Accept-Encoding: identity` so offsets, lengths and hashes
  all refer to the bytes on disk, timeouts on connect and on every read.
- mirrors tried in order; an flock on `.<final>.lock` so two processes never download the same file at once.
"""

from __future__ import annotations

import contextlib
import email.utils
import os
import random
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from lkctl import __version__
from lkctl.errors import ChecksumMismatch, DownloadError, HttpError
from lkctl.fsutil import file_lock
from lkctl.http import Fetched, ProgressFn
from lkctl.http._partial import FollowHash, Part, WriteBack, hash_file
from lkctl.http._stream import write_body

__all__ = [
    "MAX_SMALL_RESPONSE",
    "ChecksumMismatch",
    "ClientOwner",
    "DownloadError",
    "HttpError",
    "RetryPolicy",
    "download",
    "hash_file",
    "new_client",
    "request",
]

RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
MAX_SMALL_RESPONSE = 16 << 20
"""The most `request` reads of one answer: metadata (manifests, which OCI clients must take up to 4 MiB, indexes,
API answers, checksum files, error texts). A server sending more (broken or hostile) is refused, not buffered."""
_RETRY_ERRORS = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")
_UNSATISFIED_RANGE = re.compile(r"^bytes \*/(\d+)$")


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries with exponential backoff and full jitter; `sleep` is injectable so tests do not wait."""

    attempts: int = 5
    base_delay: float = 0.5
    max_delay: float = 30.0
    sleep: Callable[[float], None] = field(default=time.sleep, compare=False)

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before attempt number `attempt + 1` (0-based `attempt` failed)."""
        if retry_after is not None:
            return max(0.0, retry_after)
        ceiling = min(self.max_delay, self.base_delay * (2.0**attempt))
        return ceiling / 2 + random.uniform(0, ceiling / 2)  # noqa: S311 - jitter, not crypto


class _Retry(Exception):
    def __init__(self, reason: str, retry_after: float | None = None, *, immediate: bool = False) -> None:
        super().__init__(reason)
        self.retry_after = retry_after
        self.immediate = immediate  # we discarded a stale .part ourselves: go again without waiting


_READ_SIZE = 256 << 10


def _larger_socket_reads() -> None:
    """httpcore reads a response 64 KiB per socket call (`HTTP11Connection.READ_NUM_BYTES`, a class attribute).

    For multi-GiB images the per-read Python overhead dominates; 256 KiB reads measured ~25 % faster on loopback
    (bench/fetch.py). Only ever raised, and skipped if httpcore's layout changes (httpx is pinned to 0.28).
    """
    try:
        from httpcore._sync.http11 import HTTP11Connection
    except ImportError:  # pragma: no cover - a different httpcore
        return
    if (
        isinstance(getattr(HTTP11Connection, "READ_NUM_BYTES", None), int)
        and HTTP11Connection.READ_NUM_BYTES < _READ_SIZE
    ):
        HTTP11Connection.READ_NUM_BYTES = _READ_SIZE


def new_client(
    *,
    timeout: float = 30.0,
    headers: Mapping[str, str] | None = None,
    transport: httpx.BaseTransport | None = None,
) -> httpx.Client:
    """An httpx client set up for image transfers: redirects followed, identity encoding, connect/read timeouts."""
    _larger_socket_reads()
    base = {"User-Agent": f"lkctl/{__version__}", "Accept-Encoding": "identity"}
    base.update(headers or {})
    return httpx.Client(
        follow_redirects=True,
        timeout=httpx.Timeout(timeout, connect=min(10.0, timeout)),
        headers=base,
        transport=transport if transport is not None else _TlsOnDemand(),
    )


class _TlsOnDemand(httpx.BaseTransport):
    """httpx's own transport, but the verifying TLS context (the CA bundle: 60-100 ms here, more than a 16 MiB
    download over loopback) is made on the first https request instead of with every client; plain http never
    needs it. Proxies from the environment are mounted by httpx.Client as before."""

    def __init__(self) -> None:
        self._plain = httpx.HTTPTransport(verify=False)  # no certificate is ever looked at on http://
        self._tls: httpx.HTTPTransport | None = None
        self._lock = threading.Lock()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.scheme != "https":
            return self._plain.handle_request(request)
        with self._lock:
            if self._tls is None:
                self._tls = httpx.HTTPTransport()
        return self._tls.handle_request(request)

    def close(self) -> None:
        self._plain.close()
        if self._tls is not None:
            self._tls.close()


class ClientOwner:
    """What every HTTP source shares: its timeout and retry policy, and one lazily made client (or the one a
    caller injected)."""

    def __init__(self, *, timeout: float, retry: RetryPolicy | None, client: httpx.Client | None) -> None:
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self._client = client

    def _http(self) -> httpx.Client:
        if self._client is None:
            self._client = new_client(timeout=self.timeout)
        return self._client

    def fetch(
        self, urls: Sequence[str], dest: Path, *, sha256: str | None, size: int | None,
        headers: Mapping[str, str] | None, progress: ProgressFn | None,
    ) -> Fetched:  # fmt: skip
        """`download` through this owner's client, with its retry policy."""
        return download(
            urls, dest, sha256=sha256, size=size, client=self._http(), headers=headers, progress=progress,
            retry=self.retry,
        )  # fmt: skip


def retry_after_seconds(value: str | None, *, now: float | None = None) -> float | None:
    """`Retry-After` as seconds: delta-seconds or an HTTP date; None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _status_error(r: httpx.Response, what: str = "") -> HttpError:
    reason = r.reason_phrase or ""
    return HttpError(
        f"{what or r.request.url}: HTTP {r.status_code} {reason}".rstrip(),
        status=r.status_code,
        url=str(r.request.url),
        headers=dict(r.headers),
    )


def _retryable(r: httpx.Response) -> bool:
    # a rate limit that is spent will not come back within our backoff: let the caller explain it instead
    return r.status_code in RETRY_STATUSES and r.headers.get("x-ratelimit-remaining") != "0"


def _wait(retry: RetryPolicy, attempt: int, e: _Retry, url: str) -> None:
    if attempt + 1 >= retry.attempts:
        raise DownloadError(f"{url}: {e} (gave up after {retry.attempts} attempts)")
    if e.retry_after is not None and e.retry_after > retry.max_delay:
        raise DownloadError(f"{url}: {e}; the server asks to retry in {e.retry_after:.0f}s, try again later")
    retry.sleep(retry.delay(attempt, e.retry_after))


def request(
    client: httpx.Client,
    method: str,
    url: str,
    *,
    headers: Mapping[str, str] | None = None,
    content: bytes | None = None,
    retry: RetryPolicy | None = None,
    check: bool = True,
) -> httpx.Response:
    """One small request (metadata, API calls) with retries; the body is read. `check` raises HttpError >= 400."""
    retry = retry or RetryPolicy()
    attempt = 0
    while True:
        try:
            sent = client.build_request(method, url, headers=dict(headers or {}), content=content)
            r = client.send(sent, stream=True)
            try:
                _read_capped(r, url)
            finally:
                r.close()
            if _retryable(r):
                raise _Retry(f"HTTP {r.status_code}", retry_after_seconds(r.headers.get("retry-after")))
        except _RETRY_ERRORS as e:
            err = _Retry(f"{type(e).__name__}: {e}")
        except _Retry as e:
            if attempt + 1 >= retry.attempts:
                break  # report the last response's status below
            err = e
        else:
            break
        _wait(retry, attempt, err, url)
        attempt += 1
    if check and r.status_code >= 400:
        raise _status_error(r, url)
    return r


def _read_capped(r: httpx.Response, url: str) -> None:
    """Read `r`'s body (decoded), at most MAX_SMALL_RESPONSE bytes; DownloadError past that."""
    too_big = DownloadError(
        f"{url}: the server sends more than {MAX_SMALL_RESPONSE >> 20} MiB where lkctl expects a small answer "
        "(metadata); refusing it"
    )
    length = r.headers.get("content-length", "")
    if length.isdigit() and int(length) > MAX_SMALL_RESPONSE:
        raise too_big
    chunks, n = [], 0
    for chunk in r.iter_bytes():
        n += len(chunk)
        if n > MAX_SMALL_RESPONSE:
            raise too_big  # a compressed answer that inflates past the cap, or a body longer than it said
        chunks.append(chunk)
    r._content = b"".join(chunks)  # what Response.read() sets (httpx 0.28, pinned): .content/.json()/.text work


def _validator(r: httpx.Response) -> str:
    etag = str(r.headers.get("etag", ""))
    if etag and not etag.startswith("W/"):
        return etag
    return str(r.headers.get("last-modified", ""))


def _stream_once(
    client: httpx.Client,
    url: str,
    part: Part,
    *,
    expected: str | None,
    size: int | None,
    headers: Mapping[str, str],
    progress: ProgressFn | None,
    phases: dict[str, float],
) -> int | None:
    """One GET into the `.part`, resuming from its end. Returns the total size if known; raises _Retry.
    Adds the seconds it spends to `phases`."""
    h = dict(headers)
    if part.offset > 0:
        if part.url == url and part.validator:
            h["If-Range"] = part.validator
        elif not expected:
            part.reset()  # without a checksum, only a validated resume is safe
    if part.offset > 0:
        h["Range"] = f"bytes={part.offset}-"
    began = time.monotonic()
    with client.stream("GET", url, headers=h) as r:
        _add(phases, "headers", began)
        if r.status_code == 416 and part.offset > 0:
            m = _UNSATISFIED_RANGE.match(r.headers.get("content-range", ""))
            if m and int(m.group(1)) == part.offset:
                return part.offset  # the .part already holds every byte
            part.reset()
            raise _Retry("stale partial download discarded (416)", immediate=True)
        if _retryable(r):
            raise _Retry(f"HTTP {r.status_code}", retry_after_seconds(r.headers.get("retry-after")))
        if r.status_code >= 400:
            raise _status_error(r, url)
        total: int | None = None
        length = r.headers.get("content-length")
        if r.status_code == 206 and part.offset > 0:
            m = _CONTENT_RANGE.match(r.headers.get("content-range", ""))
            if not m or int(m.group(1)) != part.offset:
                part.reset()
                raise _Retry(f"server answered another range ({r.headers.get('content-range')!r})", immediate=True)
            total = int(m.group(3)) if m.group(3) != "*" else None
            mode = "ab"
        else:
            if part.offset:
                part.reset()  # 200: Range ignored or the file changed (If-Range): start over
            total = int(length) if length and length.isdigit() else None
            mode = "wb"
        if size is not None and total is not None and total != size:
            raise DownloadError(f"{url}: server has {total} bytes, expected {size}")
        part.save_meta(url, _validator(r), expected, total)
        done = part.offset
        if progress:
            progress(done, total)
        flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if mode == "wb" else 0)
        whole = overflow = False
        cap = size if size is not None else total  # a body past it (chunked, or a server that lies) is refused
        fd = os.open(part.path, flags, 0o666)  # not O_APPEND: splice cannot write to an append-only descriptor
        try:
            os.lseek(fd, part.offset, os.SEEK_SET)
            # kept bytes a checkpoint does not cover are hashed from disk while the rest arrives, then the new ones
            hasher = FollowHash(part.path, part.hasher, part.hashed, part.offset)
            writeback = WriteBack(fd)
            began = time.monotonic()
            try:
                for n in write_body(r, fd, _read_timeout(client)):
                    done += n
                    if cap is not None and done > cap:
                        overflow = True  # not a disk filled by an endless body
                        break
                    hasher.advance(done)
                    writeback.written(done)
                    if progress:
                        progress(done, total)
                whole = total is None or done >= total
            finally:
                writeback.stop(flush=whole)  # a whole body's last write-back overlaps the end of the hash
                part.offset = done
                began = _add(phases, "body", began)
                try:
                    part.hashed = hasher.finish(done)  # the hash covers exactly the bytes written, whatever happened
                finally:
                    began = _add(phases, "hash", began)
                    writeback.join()
                    _add(phases, "fsync", began)
        finally:
            os.close(fd)
            if not whole and not overflow and part.hashed == part.offset:
                part.checkpoint()  # stopped short: a resume takes the hash up from here instead of re-hashing
        if overflow:
            part.reset()
            raise DownloadError(f"{url}: the server sent more than the {cap} bytes expected; download discarded")
        if total is not None and done < total:
            raise _Retry(f"connection closed after {done} of {total} bytes")
        return total


def _add(phases: dict[str, float], name: str, began: float) -> float:
    now = time.monotonic()
    phases[name] = phases.get(name, 0.0) + now - began
    return now


def _read_timeout(client: httpx.Client) -> float:
    read = client.timeout.read
    return 30.0 if read is None else float(read)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _download_one(
    client: httpx.Client,
    url: str,
    dest: Path,
    *,
    expected: str | None,
    size: int | None,
    headers: Mapping[str, str],
    progress: ProgressFn | None,
    retry: RetryPolicy,
) -> Fetched:
    part = Part(dest.with_name(dest.name + ".part"), dest.with_name(dest.name + ".part.json"))
    part.load(expected)
    resumed_from = part.offset
    restarted = False
    attempt = 0
    phases: dict[str, float] = {}
    while True:
        before = part.offset
        try:
            _stream_once(
                client, url, part, expected=expected, size=size, headers=headers, progress=progress, phases=phases
            )
        except _RETRY_ERRORS as e:
            err = _Retry(f"{type(e).__name__}: {e}")
        except _Retry as e:
            err = e
        else:
            began = time.monotonic()
            part.catch_up()  # a 416 on a whole .part: nothing was downloaded to hash it alongside
            got = part.hasher.hexdigest()
            began = _add(phases, "hash", began)
            n = part.path.stat().st_size
            if (expected and got != expected) or (size is not None and n != size):
                was_resumed = resumed_from > 0
                part.reset()
                if was_resumed and not restarted:
                    restarted, resumed_from = True, 0  # the old .part may be from another file: one clean try
                    continue
                what = f"sha256 {got}, expected {expected}" if expected and got != expected else f"{n} bytes"
                raise ChecksumMismatch(f"{dest.name} from {url}: {what}; the download was discarded")
            with open(part.path, "rb+") as f:
                os.fsync(f.fileno())
            began = _add(phases, "fsync", began)
            os.replace(part.path, dest)
            _fsync_dir(dest.parent)
            with contextlib.suppress(FileNotFoundError):
                part.meta_path.unlink()
            _add(phases, "rename", began)
            return Fetched(dest, got, n, url, resumed_from, tuple(phases.items()))
        if part.offset > before:
            attempt = 0  # progress was made: a flaky but moving connection keeps going
        if err.immediate and attempt + 1 < retry.attempts:
            attempt += 1
            continue
        _wait(retry, attempt, err, url)
        attempt += 1


def _normalize_sha(sha256: str | None) -> str | None:
    if not sha256:
        return None
    s = sha256.strip().lower().removeprefix("sha256:")
    if not re.fullmatch(r"[0-9a-f]{64}", s):
        raise DownloadError(f"malformed sha256 {sha256!r}")
    return s


def _complete(dest: Path, expected: str | None, size: int | None) -> bool:
    if not expected or not dest.is_file() or (size is not None and dest.stat().st_size != size):
        return False
    try:
        return bool(hash_file(dest).hexdigest() == expected)
    except OSError:  # unreadable, or changed while it was read: fetch it again
        return False


@contextlib.contextmanager
def _client(client: httpx.Client | None) -> Iterator[httpx.Client]:
    if client is not None:
        yield client
        return
    with new_client() as own:
        yield own


def download(
    urls: Sequence[str],
    dest: Path,
    *,
    sha256: str | None = None,
    size: int | None = None,
    client: httpx.Client | None = None,
    headers: Mapping[str, str] | None = None,
    progress: ProgressFn | None = None,
    retry: RetryPolicy | None = None,
) -> Fetched:
    """Download `dest` from the first of `urls` that delivers it, verified against `sha256`/`size` when given.

    A complete, matching file already at `dest` is reused without a request. Raises ChecksumMismatch when the
    bytes are wrong (nothing is left behind) and DownloadError when every mirror failed.
    """
    if not urls:
        raise DownloadError(f"{dest.name}: no URL to download from")
    expected = _normalize_sha(sha256)
    retry = retry or RetryPolicy()
    dest.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(dest.with_name(f".{dest.name}.lock")):
        if _complete(dest, expected, size):
            n = dest.stat().st_size
            if progress:
                progress(n, n)
            return Fetched(dest, str(expected), n, "")
        failures: list[DownloadError] = []
        with _client(client) as c:
            for url in urls:
                try:
                    h = headers or {}
                    return _download_one(
                        c, url, dest, expected=expected, size=size, headers=h, progress=progress, retry=retry
                    )
                except DownloadError as e:
                    failures.append(e)
                except httpx.HTTPError as e:  # invalid URL, unsupported scheme: this mirror is unusable
                    failures.append(DownloadError(f"{url}: {type(e).__name__}: {e}"))
        if len(failures) == 1:
            raise failures[0]
        kind = ChecksumMismatch if all(isinstance(f, ChecksumMismatch) for f in failures) else DownloadError
        message = f"{dest.name}: every mirror failed: " + "; ".join(f.message for f in failures)
        raise kind(message, failures=failures)

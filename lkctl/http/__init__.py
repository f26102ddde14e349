"""HTTP downloads and API calls for image sources and the OCI registry client.

`lkctl.http.client` is the one module that imports httpx (the engine: resume, verification while streaming,
retries, mirrors); this package's top holds what other modules name without loading it: what a download
returns and how progress is reported.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lkctl.errors import ChecksumMismatch, DownloadError, HttpError

__all__ = ["ChecksumMismatch", "DownloadError", "Fetched", "HttpError", "ProgressFn"]

ProgressFn = Callable[[int, int | None], None]  # (bytes done, total bytes or None when unknown)


@dataclass(frozen=True)
class Fetched:
    """A verified file at its final path."""

    path: Path
    sha256: str
    size: int
    url: str  # where the bytes came from ("" when an already complete file was reused)
    resumed_from: int = 0  # bytes taken over from an earlier interrupted download
    # seconds spent per phase, summed over attempts: "headers" (connect + request + response headers), "body"
    # (until the last byte is on disk), "hash" (hashing what the follower had not reached), "fsync", "rename"
    phases: tuple[tuple[str, float], ...] = ()

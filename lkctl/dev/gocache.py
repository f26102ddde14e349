"""Go's standard library compiled into the dev image's build cache at image build time, on the host.

The dev VM runs Go with cgo off (`GO_ENV`: the image has no C compiler). Debian's Go ships its standard library
precompiled with cgo on, so in the VM the packages that differ without cgo (net, os/user, crypto/*, and
everything above them: crypto/tls, net/http) are stale and the first `go test` of a package importing net/http
compiles them under TCG, which took more than 15 minutes. The root disk holds this machine's own Go (same files,
same paths), so `go build std` run here at native speed with GOCACHE pointed at the staging tree's
/root/.cache/go-build (`go env GOCACHE` for the VM's root user) gives the very cache entries the VM's go looks
up: Go keys them by the compiler's build ID, GOOS/GOARCH, the flags, the environment that matters (CGO_ENABLED)
and the sources' contents, never by the path of the cache or (for GOROOT packages) of the sources. A `go test`
of a package importing all of std then caches the vet facts `go test` computes for every dependency, the other
part of a first `go test` (see _warm_test_vet). Left for the VM: the project's own packages, its test main, the
link and the run (about a minute under TCG for a net/http test; 16 s → 2.5 s natively).

The entries are dated 2100-01-01: Go trims cache entries unused for five days, and an image's files carry a
fixed date in the past, so without that the VM's first `go` command would delete what was built here. The image
cache key needs nothing more: the Go version is in the package closure, these settings in the builder.
"""

from __future__ import annotations

import contextlib
import filecmp
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from lkctl.errors import LkError
from lkctl.proc import minimal_env, run

__all__ = ["GO_ENV", "GUEST_GOCACHE", "WARM_KEY", "GoCache", "date_go_cache", "warm_go_cache"]

log = logging.getLogger("lkctl.dev.gocache")

GO_ENV = (("CGO_ENABLED", "0"),)
"""Go's settings in every dev VM (part of its environment, see lkctl.dev.environment.DEV_ENV)."""

GUEST_GOCACHE = "root/.cache/go-build"
"""`go env GOCACHE` of the dev VM's user (root, HOME=/root), relative to the root disk."""

_FUTURE = 4102444800  # 2100-01-01T00:00:00Z
_PACKAGES = ("std",)

WARM_KEY = f"go-warm 2 {GO_ENV} {_PACKAGES}"
"""What the prebuilt cache depends on besides the Go package's version: part of the dev disk's fingerprint
(bump the number when what warm_go_cache builds changes)."""


@dataclass(frozen=True)
class GoCache:
    go: str  # the Go toolchain used, e.g. /usr/lib/go-1.19/bin/go
    size: int  # bytes of cache entries
    seconds: float


def _staged_go(staging: Path) -> str | None:
    """The path (in the image and on this host) of the go the image's /usr/bin/go runs, if the image has Go."""
    link = staging / "usr" / "bin" / "go"
    if not link.is_symlink() and not link.is_file():
        return None
    rel = "usr/bin/go"
    for _ in range(8):  # follow the image's own links (…/go → ../lib/go-1.19/bin/go), inside the staging tree
        here = staging / rel
        if not here.is_symlink():
            break
        target = os.readlink(here)
        rel = os.path.normpath(target.lstrip("/") if target.startswith("/") else f"{os.path.dirname(rel)}/{target}")
    return "/" + rel if (staging / rel).is_file() else None


def _warm_test_vet(go: str, tmp: Path, env: dict[str, str]) -> None:
    """`go test` of a package importing every importable std package: what `go test` caches for its vet step.

    `go test` vets the package under test, and vet first computes "facts" for every dependency (the whole
    std tree below net/http: ~130 runs of the vet tool, most of a first `go test`'s time under TCG). They are
    cached under keys that include the command (`go test` vets std packages with its own flags), so only a
    `go test` gives the entries the VM's `go test` looks up."""
    listed = run([go, "list", "-e", "-f", '{{if and (not .Error) (ne .Name "main")}}{{.ImportPath}}{{end}}', "std"],
                 cwd=tmp, env=env, what="go list std").stdout.decode()  # fmt: skip
    importable = [p for p in listed.split() if "internal" not in p.split("/") and not p.startswith("vendor/")]
    module = tmp / "warm"
    module.mkdir()
    (module / "go.mod").write_text("module lkctl.local/gowarm\n\ngo 1.17\n")  # any Go from 1.17 on builds it
    imports = "".join(f'\t_ "{p}"\n' for p in importable)
    (module / "warm.go").write_text(f"package gowarm\n\nimport (\n{imports})\n")
    (module / "warm_test.go").write_text('package gowarm\n\nimport "testing"\n\nfunc TestWarm(t *testing.T) {}\n')
    run([go, "test", "-count=1", "."], cwd=module, env=env, what="go test (vet facts of Go's standard library)")


def warm_go_cache(staging: Path) -> GoCache | None:
    """Compile the standard library into `staging`'s Go build cache with this host's Go (the image's own files);
    None when the image has no Go or the host's go is not the image's."""
    go = _staged_go(staging)
    if go is None:
        return None
    host_go = Path(go)
    if not host_go.is_file() or not filecmp.cmp(host_go, staging / go.lstrip("/"), shallow=False):
        log.info("not prebuilding Go's standard library: %s here is not the image's", go)
        return None
    cache = staging / GUEST_GOCACHE
    cache.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="lkctl-gowarm-") as tmp:
        # nothing from this host's Go setup: no go env file, no GOFLAGS, no module downloads
        env = minimal_env({"HOME": tmp, "GOPATH": f"{tmp}/gopath", "GOCACHE": str(cache), "GOENV": "off",
                           "GOFLAGS": "", "GOPROXY": "off", "GO111MODULE": "", **dict(GO_ENV)})  # fmt: skip
        try:
            run([go, "build", *_PACKAGES], cwd=tmp, env=env, what="go build std (Go's standard library, dev image)")
            _warm_test_vet(go, Path(tmp), env)
        except LkError as e:  # the image still works; only its first `go test` compiles the library itself
            log.warning("Go's standard library not prebuilt into the dev image: %s", e.message)
            shutil.rmtree(cache)
            with contextlib.suppress(OSError):
                cache.parent.rmdir()  # the .cache this made, if nothing else is in it
            return None
    (cache / "trim.txt").unlink(missing_ok=True)  # the time of the build: the VM writes its own
    size = sum(p.stat().st_size for p in cache.rglob("*") if p.is_file())
    seconds = time.monotonic() - start
    log.info("prebuilt Go's standard library (%s): %d MiB of cache, %.0f s", go, size >> 20, seconds)
    return GoCache(go, size, seconds)


def date_go_cache(staging: Path) -> None:
    """Date the cache entries 2100-01-01 (after the image's fixed timestamps are set), so Go never trims them."""
    cache = staging / GUEST_GOCACHE
    if not cache.is_dir():
        return
    for dirpath, _dirnames, filenames in os.walk(cache):
        for name in filenames:
            os.utime(Path(dirpath) / name, (_FUTURE, _FUTURE), follow_symlinks=False)

"""Download throughput: lkctl's verified, durable, resumable download against curl, from the same local nginx.

    .venv/bin/python bench/fetch.py [--size-mib 512] [--runs 3]

Generates the file (1 MiB of random bytes repeated; it stays in the page cache, so nginx serves every run from
memory) and serves it with nginx on 127.0.0.1 (sendfile). Each round runs every side below, each round starting
one side later than the last, with `sync` before each run so no earlier run's write-back is still going on and
every side starts from the same page-cache state:

- curl         `curl -o FILE URL`: no checksum, no fsync (the bytes may still be only in the page cache)
- curl+fsync   the same, then fsync + rename + fsync of the directory: the durability lkctl gives
- lkctl        `lkctl.http.client.download`: sha256 verified, fsync, rename, fsync of the directory
- disk         writing the same bytes from memory, fdatasync every 32 MiB in a second thread and at the end (lkctl's
               write-behind, no network, no hash): about what the disk allows a durable download here
- resume       lkctl stopped at 50 % (an exception from the progress callback, like Ctrl-C) and then resumed:
               the stopped attempt left a checkpoint, so only the new half is hashed
- resume-cold  the same with the checkpoint removed from the sidecar (as after a SIGKILL): the kept half is
               hashed from disk while the rest downloads

and prints each side's median (min-max), the ratios of the medians, and where lkctl's time went (its phases).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lkctl.http import Fetched
from lkctl.http.client import download
from lkctl.progress import format_rate, format_size
from tests.integration._loopback import nginx


def make_file(path: Path, size: int) -> str:
    block = os.urandom(1 << 20)
    h = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            chunk = block[: min(left, len(block))]
            f.write(chunk)
            h.update(chunk)
            left -= len(chunk)
    return h.hexdigest()


def drop(path: Path) -> None:
    for p in (path, path.with_name(path.name + ".part"), path.with_name(path.name + ".part.json")):
        p.unlink(missing_ok=True)


def fsync_path(path: Path, flags: int = os.O_RDONLY) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Stop(Exception):
    """Raised by the progress callback to stop a download half-way, like Ctrl-C."""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=512)
    ap.add_argument("--runs", type=int, default=3, help="rounds; each side runs once per round, medians printed")
    args = ap.parse_args()
    if not shutil.which("curl") or not (shutil.which("nginx") or Path("/usr/sbin/nginx").exists()):
        print("bench/fetch.py needs curl and nginx (apt-get install curl nginx-light)", file=sys.stderr)
        return 2
    size = args.size_mib << 20
    with tempfile.TemporaryDirectory(prefix="lkctl-bench-fetch-") as tmp_s:
        tmp = Path(tmp_s)
        www, out = tmp / "www", tmp / "out"
        www.mkdir()
        out.mkdir()
        print(f"generating {format_size(size)} ...", file=sys.stderr)
        sha = make_file(www / "image.raw", size)
        with open(www / "image.raw", "rb") as f:
            block = f.read(1 << 20)
        with nginx(www, tmp / "nginx") as server:
            url = f"{server.url}/image.raw"
            dest = out / "image.raw"
            part = dest.with_name(dest.name + ".part")
            fetched: dict[str, list[Fetched]] = {}

            def curl(durable: bool) -> Callable[[], None]:
                def run() -> None:
                    target = dest.with_name("curl.tmp") if durable else dest
                    subprocess.run(["curl", "-sS", "--fail", "-o", str(target), url], check=True)
                    if durable:
                        fsync_path(target)
                        os.replace(target, dest)
                        fsync_path(out, os.O_RDONLY | os.O_DIRECTORY)

                return run

            def lkctl(name: str) -> Callable[[], None]:
                def run() -> None:
                    fetched.setdefault(name, []).append(download([url], dest, sha256=sha))

                return run

            def disk() -> None:
                fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                wake, stop = threading.Event(), threading.Event()

                def behind() -> None:  # lkctl's write-behind: fdatasync every 32 MiB in a second thread
                    while wake.wait() and not stop.is_set():
                        wake.clear()
                        os.fdatasync(fd)

                t = threading.Thread(target=behind)
                t.start()
                try:
                    for i in range(1, (size >> 20) + 1):
                        os.write(fd, block)
                        if i % 32 == 0:
                            wake.set()
                finally:
                    stop.set()
                    wake.set()
                    t.join()
                    os.fdatasync(fd)
                    os.close(fd)

            def stopped(checkpoint: bool) -> None:
                def halfway(done: int, total: int | None) -> None:
                    if done >= size // 2:
                        raise Stop

                with contextlib.suppress(Stop):
                    download([url], dest, sha256=sha, progress=halfway)
                meta_path = part.with_name(part.name + ".json")
                meta = json.loads(meta_path.read_text())
                if not checkpoint:
                    meta.pop("checkpoint", None)
                    meta_path.write_text(json.dumps(meta))
                elif "checkpoint" not in meta:
                    print("warning: the stopped download left no checkpoint", file=sys.stderr)

            sides: list[tuple[str, Callable[[], None], Callable[[], None] | None]] = [
                ("curl", curl(False), None),
                ("curl+fsync", curl(True), None),
                ("lkctl", lkctl("lkctl"), None),
                ("disk", disk, None),
                ("resume", lkctl("resume"), lambda: stopped(True)),
                ("resume-cold", lkctl("resume-cold"), lambda: stopped(False)),
            ]
            times: dict[str, list[float]] = {name: [] for name, _, _ in sides}
            load0 = os.getloadavg()[0]
            for i in range(args.runs):
                # each round starts one side later: what ran just before (and the disk's write-back or throttling
                # it left) is not always the same for a side
                for name, run, prepare in sides[i % len(sides) :] + sides[: i % len(sides)]:
                    drop(dest)
                    dest.with_name("curl.tmp").unlink(missing_ok=True)
                    if prepare is not None:
                        prepare()
                    os.sync()
                    t0 = time.perf_counter()
                    run()
                    times[name].append(time.perf_counter() - t0)
            load1 = os.getloadavg()[0]
    report(times, fetched, size, args.runs, (load0, load1))
    return 0


def report(
    times: dict[str, list[float]], fetched: dict[str, list[Fetched]], size: int, runs: int, load: tuple[float, float]
) -> None:
    med = {k: statistics.median(v) for k, v in times.items()}
    print(
        f"file        {format_size(size)} over http://127.0.0.1 (nginx, sendfile, source in the page cache); "
        f"{runs} interleaved rounds in rotated order, sync before each run; load {load[0]:.1f} -> {load[1]:.1f}"
    )
    what = {
        "curl": "no checksum, no fsync",
        "curl+fsync": "then fsync + rename + fsync dir",
        "lkctl": "sha256 verified + fsync + rename + fsync dir",
        "disk": "from memory, write-behind + fdatasync: ~the durable floor",
        "resume": "from 50 %, the stopped attempt's checkpoint taken up",
        "resume-cold": "from 50 %, no checkpoint: kept half hashed from disk",
    }
    for name, ts in times.items():
        rate = format_rate(size / med[name]) if not name.startswith("resume") else ""
        spread = f"{min(ts):.2f}-{max(ts):.2f}"
        print(f"{name:<12}{rate:>14}  median {med[name]:.2f} s ({spread})  {what[name]}")
    print(f"ratio       lkctl / curl {med['curl'] / med['lkctl']:.2f} (target >= 0.9)", end="")
    print(f"; lkctl / curl+fsync {med['curl+fsync'] / med['lkctl']:.2f} (same durability)", end="")
    print(f"; lkctl / disk floor {med['disk'] / med['lkctl']:.2f}")
    print(
        f"resume      {med['resume'] / med['lkctl']:.2f} x the full download (target <= 0.55); "
        f"without a checkpoint {med['resume-cold'] / med['lkctl']:.2f} x"
    )
    for name, results in fetched.items():
        phases: dict[str, list[float]] = {}
        for r in results:
            for k, v in r.phases:
                phases.setdefault(k, []).append(v)
        kept = statistics.median(r.resumed_from for r in results)
        line = "  ".join(f"{k} {statistics.median(v):.2f}" for k, v in phases.items())
        print(f"phases      {name:<12} {line}" + (f"  (kept {kept * 100 / size:.0f} %)" if kept else ""))


if __name__ == "__main__":
    raise SystemExit(main())

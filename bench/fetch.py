"""Download throughput: lkctl's verified, resumable download against curl, from the same local nginx.

    .venv/bin/python bench/fetch.py [--size-mib 1024] [--runs 1]

Generates the file in a temp dir (1 MiB of random bytes repeated), serves it with nginx on 127.0.0.1, then
downloads it with curl (`curl -o`: no checksum, no fsync; and once more followed by an fsync) and with lkctl
(`lkctl.http.client.download`: sha256 checked while streaming, fsync, rename) and prints the rates and the
ratio. Then it cuts lkctl's result to a 50 % `.part` and times the resume (the kept half hashed while the rest is
fetched), best of --runs as well. Needs nginx and curl.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lkctl.http.client import download
from lkctl.progress import format_eta, format_rate, format_size
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


def timed(fn: object) -> float:
    t0 = time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - t0


def drop(path: Path) -> None:
    for p in (path, path.with_name(path.name + ".part"), path.with_name(path.name + ".part.json")):
        p.unlink(missing_ok=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--runs", type=int, default=3, help="repeat each download and keep the best time")
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
        with nginx(www, tmp / "nginx") as server:
            url = f"{server.url}/image.raw"
            curl_dest, lk_dest = out / "curl.raw", out / "lkctl.raw"

            def run_curl() -> None:
                subprocess.run(["curl", "-sS", "--fail", "-o", str(curl_dest), url], check=True)

            def run_curl_fsync() -> None:
                run_curl()
                with open(curl_dest, "rb") as f:
                    os.fsync(f.fileno())

            def run_lkctl() -> None:
                download([url], lk_dest, sha256=sha)

            best = {"curl": float("inf"), "curl+fsync": float("inf"), "lkctl": float("inf")}
            for _ in range(args.runs):  # alternate, keep the best: the page cache and writeback make single runs noisy
                for name, fn in (("curl", run_curl), ("curl+fsync", run_curl_fsync), ("lkctl", run_lkctl)):
                    curl_dest.unlink(missing_ok=True)
                    drop(lk_dest)
                    os.sync()
                    best[name] = min(best[name], timed(fn))
            lk_t = best["lkctl"]
            curl_rate, lk_rate = size / best["curl"], size / lk_t
            print(f"file        {format_size(size)} over http://127.0.0.1 (nginx, sendfile), best of {args.runs}")
            print(f"curl        {format_rate(curl_rate):>14}  ({best['curl']:.2f} s, no checksum, no fsync)")
            print(f"curl+fsync  {format_rate(size / best['curl+fsync']):>14}  ({best['curl+fsync']:.2f} s)")
            print(f"lkctl       {format_rate(lk_rate):>14}  ({lk_t:.2f} s, sha256 while streaming + fsync + rename)")
            print(f"ratio       {lk_rate / curl_rate:.2f} (lkctl / curl)")
            # resume from 50 %: the kept half is hashed while the rest is fetched; best of --runs, like the rest
            part = lk_dest.with_name(lk_dest.name + ".part")
            resumed: dict[str, object] = {}
            resume_t = float("inf")

            def run_resume() -> None:
                resumed["r"] = download([url], lk_dest, sha256=sha)

            for _ in range(args.runs):
                drop(lk_dest)
                run_lkctl()
                os.replace(lk_dest, part)
                with open(part, "r+b") as f:
                    f.truncate(size // 2)
                meta = {"url": url, "validator": "", "sha256": sha, "total": size}
                part.with_name(part.name + ".json").write_text(json.dumps(meta))
                os.sync()
                resume_t = min(resume_t, timed(run_resume))
            kept = resumed["r"].resumed_from  # type: ignore[attr-defined]
            print(
                f"resume      {resume_t:.2f} s from {format_size(kept)} ({kept * 100 // size} %) "
                f"vs {lk_t:.2f} s from zero ({format_eta(resume_t)}): ratio {resume_t / lk_t:.2f} (target <= 0.55)"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

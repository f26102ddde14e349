"""Build benchmark: lkctl assembling the `minimal` image's initrd vs `find | cpio -o -H newc | gzip` over the same
tree extracted on disk, in one run; then the unchanged rebuild and a rebuild after a `files` change.

The images are in the local store first (made, not timed). "Cached" is lkctl's normal case: each image's entries
were compressed once before and are spliced in (`lkctl/build/_fragments.py`); "cold" empties that cache before
each round, so lkctl gunzips the layers, parses the tars and deflates everything. The classic pipeline gets the
tree already extracted, so extraction is not counted against it. Prints each time (median of --rounds) and the
ratios. Usage: python bench/build.py [--rounds N] [--store DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

BIN = Path(sys.executable).parent
SPEC = """
kernel:
  image: lkctl.local/kernel:latest
  cmdline: "console=ttyS0 quiet"
init:
  - lkctl.local/init:latest
services:
  - name: sshd
    image: lkctl.local/sshd:latest
files:
  - path: etc/motd
    contents: "{motd}"
"""


def timed(rounds: int, fn: Callable[[int], object]) -> float:
    times = []
    for i in range(rounds):
        start = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--store", type=Path, help="an OCI store with lkctl's base images (default: a fresh one)")
    args = ap.parse_args()

    from lkctl.baseimages import ensure_base_image
    from lkctl.build import build_image, parse_spec
    from lkctl.oci.layout import Store

    with tempfile.TemporaryDirectory(prefix="lkctl-bench-") as tmp:
        work = Path(tmp)
        store = Store(args.store or work / "store").ensure()
        for name in ("kernel", "init", "sshd"):
            ensure_base_image(f"lkctl.local/{name}:latest", store)  # not timed: the layers are cached
        spec = parse_spec(SPEC.format(motd="hello"))

        fragments = store.root / ".lkctl" / "initrd-fragments"

        def lkctl_build(i: int, level: int = 4, cold: bool = False) -> None:
            if cold:  # nothing of the layers kept: gunzip, tar parsing and deflate all happen
                shutil.rmtree(fragments, ignore_errors=True)
            build_image(spec, name="minimal", out_dir=work / f"out-{level}-{cold}-{i}", store=store, level=level)

        cold_4 = timed(args.rounds, lambda i: lkctl_build(i, 4, cold=True))
        cold_6 = timed(args.rounds, lambda i: lkctl_build(i, 6, cold=True))
        lkctl_4 = timed(args.rounds, lambda i: lkctl_build(i, 4))  # the compressed layers kept by the cold runs
        lkctl_6 = timed(args.rounds, lambda i: lkctl_build(i, 6))
        initrd = work / "out-4-False-0" / "minimal-initrd.img"
        same = initrd.read_bytes() == (work / "out-4-True-0" / "minimal-initrd.img").read_bytes()

        # the same tree on disk, for the classic pipeline
        tree = work / "tree"
        tree.mkdir()
        raw = subprocess.run(["gzip", "-dc", initrd], capture_output=True, check=True).stdout
        subprocess.run(["cpio", "-idm", "--quiet", "--no-absolute-filenames"], input=raw, cwd=tree, check=True)
        entries = len(
            subprocess.run(["cpio", "-t", "--quiet"], input=raw, capture_output=True, check=True).stdout.splitlines()
        )
        lkctl_size = initrd.stat().st_size

        def pipeline(i: int) -> None:
            out = work / f"cpio-{i}.img"
            subprocess.run(["sh", "-c", f"find . | cpio -o -H newc --quiet | gzip > {out}"], cwd=tree, check=True)

        classic = timed(args.rounds, pipeline)
        classic_size = (work / "cpio-0.img").stat().st_size

        unchanged = timed(max(args.rounds, 5), lambda i: lkctl_build(0))
        assert build_image(spec, name="minimal", out_dir=work / "out-4-False-0", store=store).cached

        def files_changed(i: int) -> None:
            changed = parse_spec(SPEC.format(motd=f"hello {i}"))
            result = build_image(changed, name="minimal", out_dir=work / "out-4-False-0", store=store)
            assert result.assembled == "files"

        incremental = timed(args.rounds, files_changed)
        env = dict(os.environ, LKCTL_HOME=str(work / "home"), LKCTL_OCI_STORE=str(store.root))
        yml = work / "minimal.yml"
        yml.write_text(SPEC.format(motd="hello"))
        cli_args = [str(BIN / "lkctl"), "image.build", str(yml), "--out", str(work / "cli"), "--name", "minimal"]
        subprocess.run(cli_args, env=env, check=True, capture_output=True)
        cli = timed(args.rounds, lambda i: subprocess.run(cli_args, env=env, check=True, capture_output=True))

    mb = 1 << 20
    print(f"minimal initrd: {len(raw) / mb:.1f} MiB of cpio, {entries} entries; cores: {os.cpu_count()}")
    print(f"  find | cpio -o -H newc | gzip (level 6), tree on disk: {classic:6.3f} s  {classic_size / mb:5.1f} MiB")
    print(f"  lkctl, layers cached (compressed runs reused), level 4: {lkctl_4:6.3f} s  {lkctl_size / mb:5.1f} MiB")
    print(f"  lkctl, layers cached (compressed runs reused), level 6: {lkctl_6:6.3f} s")
    print(f"  lkctl, cold: gunzip layers + tar + deflate,    level 4: {cold_4:6.3f} s")
    print(f"  lkctl, cold: gunzip layers + tar + deflate,    level 6: {cold_6:6.3f} s")
    print(f"  ratio cpio pipeline / lkctl: {classic / lkctl_4:.1f}x cached, {classic / cold_4:.1f}x cold (level 4); "
          f"{classic / lkctl_6:.1f}x cached, {classic / cold_6:.1f}x cold (level 6)")  # fmt: skip
    print(f"  cached and cold initrds are byte-identical: {same}")
    print(f"  unchanged rebuild: {unchanged * 1000:.1f} ms (library); {cli:.2f} s (lkctl image.build, with start-up)")
    print(f"  a files entry changed: {incremental * 1000:.0f} ms (only the files section reassembled)")


if __name__ == "__main__":
    main()

"""A build SIGKILLed midway leaves temp parts in lkctl's cache and nothing in the output directory; the next
build of that name and `image.prune` reclaim them. A failed build leaves the user's directory as it was."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lkctl.build import build_image, build_paths, parse_spec
from lkctl.build.testing import add_image, file
from lkctl.errors import BuildError
from lkctl.oci.layout import Store

SPEC = """
kernel:
  image: lkctl.local/kernel:1
  cmdline: console=ttyS0
  tar: none
init:
  - lkctl.local/init:1
files:
  - path: big
    source: {big}
"""

# a build in its own process, with the store and cache of the test (LKCTL_HOME is inherited)
BUILD = """
import sys
from pathlib import Path
from lkctl.build import build_image, parse_spec
from lkctl.oci.layout import Store
spec = parse_spec(Path(sys.argv[1]).read_text(), "vm.yml")
build_image(spec, name="vm", out_dir=Path(sys.argv[2]), store=Store(Path(sys.argv[3])), level=9, threads=1)
"""


@pytest.fixture
def store(tmp_path: Path) -> Store:
    store = Store(tmp_path / "store").ensure()
    add_image(store, "lkctl.local/kernel:1", [[file("kernel", b"MZ kernel" * 100)]])
    add_image(store, "lkctl.local/init:1", [[file("init", b"#!/bin/sh\n", 0o755)]])
    return store


def _spec(tmp_path: Path, size: int) -> Path:
    big = tmp_path / "big.bin"
    with open(big, "wb") as f:
        f.write(os.urandom(size))  # incompressible: deflating it takes a while
    yml = tmp_path / "vm.yml"
    yml.write_text(SPEC.format(big=big))
    return yml


def test_a_sigkilled_build_leaves_temp_parts_that_the_next_build_and_prune_reclaim(
    store: Store, tmp_path: Path
) -> None:
    from lkctl.images import prune_builds

    yml, out = _spec(tmp_path, 96 << 20), tmp_path / "out"
    parts = build_paths(out, "vm").parts
    for attempt in range(2):
        proc = subprocess.Popen([sys.executable, "-c", BUILD, str(yml), str(out), str(store.root)])
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not list(parts.glob(".*.tmp")) and proc.poll() is None:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        left = list(parts.glob(".*.tmp"))
        assert left, "the build finished before it could be killed"
        outputs = ["vm-cmdline", "vm-initrd.img", "vm-kernel"] if attempt else []
        assert sorted(p.name for p in out.iterdir()) == outputs  # none of lkctl's bookkeeping in the output dir
        if attempt == 0:
            # the next build of that name finds them (it holds the lock, so no live build owns them)
            small = tmp_path / "small.yml"
            small.write_text(yml.read_text().replace(str(tmp_path / "big.bin"), str(tmp_path / "small.bin")))
            (tmp_path / "small.bin").write_bytes(b"x")
            build_image(parse_spec(small.read_text(), "vm.yml"), name="vm", out_dir=out, store=store)
            assert not list(parts.glob(".*.tmp"))
            assert sorted(p.name for p in out.iterdir()) == ["vm-cmdline", "vm-initrd.img", "vm-kernel"]
    prune_builds()  # the output dir is not lkctl's cache: its outputs stay, the dead build's parts go
    assert not list(parts.glob(".*.tmp"))
    assert sorted(p.name for p in out.iterdir()) == ["vm-cmdline", "vm-initrd.img", "vm-kernel"]


def test_prune_reclaims_staging_and_skips_a_build_holding_its_lock(store: Store, tmp_path: Path) -> None:
    from lkctl.fsutil import file_lock
    from lkctl.images import prune_builds

    out = tmp_path / "out"
    yml = _spec(tmp_path, 1024)
    build_image(parse_spec(yml.read_text(), "vm.yml"), name="vm", out_dir=out, store=store)
    bp = build_paths(out, "vm")
    leftover = out / f"{bp.staging_prefix}abc123"  # a staging dir a SIGKILL left between parts and publishing
    leftover.mkdir()
    (leftover / "vm-initrd.img").write_bytes(b"half")
    with file_lock(bp.lock):  # a build of that name is running: its staging is its own
        prune_builds()
        assert leftover.exists()
    prune_builds()
    assert not leftover.exists()
    assert sorted(p.name for p in out.iterdir()) == ["vm-cmdline", "vm-initrd.img", "vm-kernel"]


def test_prune_drops_cache_builds_no_vm_uses_and_keeps_the_ones_a_vm_boots(store: Store, tmp_path: Path) -> None:
    from lkctl import paths
    from lkctl.build import prune_builds

    yml = _spec(tmp_path, 1024)
    builds = paths.cache_dir() / "builds"
    used = build_image(parse_spec(yml.read_text(), "vm.yml"), name="used", out_dir=builds / "used", store=store)
    build_image(parse_spec(yml.read_text(), "vm.yml"), name="idle", out_dir=builds / "idle", store=store)
    render = builds / "template-x" / "0123abcd"
    build_image(parse_spec(yml.read_text(), "vm.yml"), name="x", out_dir=render, store=store)
    argv = ["qemu-system-x86_64", "-kernel", str(used.kernel), "-initrd", str(used.initrd)]
    removed = prune_builds(vm_argvs=[argv])
    assert sorted(removed) == sorted([(builds / "idle").resolve(), render.resolve()])
    assert sorted(p.name for p in builds.iterdir()) == ["used"]
    assert used.initrd.is_file() and build_paths(builds / "used", "used").stamp.is_file()
    assert not build_paths(builds / "idle", "idle").state.exists()


def test_a_failed_build_into_an_existing_dir_leaves_it_unchanged(store: Store, tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("user's file")
    spec = parse_spec(SPEC.format(big="/nonexistent/big"), "vm.yml")
    with pytest.raises(BuildError, match="cannot read source /nonexistent/big"):
        build_image(spec, name="vm", out_dir=out, store=store)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]

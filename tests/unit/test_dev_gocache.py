"""The dev image's prebuilt Go cache: where it goes, when it is skipped, and its dates."""

from __future__ import annotations

import os
from pathlib import Path

from lkctl.dev.environment import DEV_ENV
from lkctl.dev.gocache import GO_ENV, GUEST_GOCACHE, date_go_cache, warm_go_cache


def test_an_image_without_go_gets_no_cache(tmp_path: Path) -> None:
    (tmp_path / "usr" / "bin").mkdir(parents=True)
    assert warm_go_cache(tmp_path) is None
    (tmp_path / "usr" / "bin" / "go").symlink_to("../lib/go-0.0/bin/go")  # a dangling link: no Go either
    assert warm_go_cache(tmp_path) is None
    assert not (tmp_path / GUEST_GOCACHE).exists()


def test_an_image_whose_go_is_not_this_hosts_gets_no_cache(tmp_path: Path) -> None:
    staged = tmp_path / "usr" / "lib" / "go-0.0-not-here" / "bin" / "go"
    staged.parent.mkdir(parents=True)
    staged.write_bytes(b"\x7fELF not the host's go")
    (tmp_path / "usr" / "bin").mkdir(parents=True)
    (tmp_path / "usr" / "bin" / "go").symlink_to("../lib/go-0.0-not-here/bin/go")
    assert warm_go_cache(tmp_path) is None


def test_cache_entries_are_dated_2100_so_go_never_trims_them(tmp_path: Path) -> None:
    entry = tmp_path / GUEST_GOCACHE / "00" / "00ab-d"
    entry.parent.mkdir(parents=True)
    entry.write_bytes(b"x")
    os.utime(entry, (1492533000, 1492533000))
    date_go_cache(tmp_path)
    assert entry.stat().st_mtime == 4102444800
    date_go_cache(tmp_path / "nothing")  # no cache: nothing to do


def test_the_vms_go_settings_are_the_ones_the_cache_is_built_with() -> None:
    assert set(GO_ENV) <= set(DEV_ENV) and dict(GO_ENV)["CGO_ENABLED"] == "0"
    assert GUEST_GOCACHE == "root/.cache/go-build"  # `go env GOCACHE` of root (HOME=/root) in the VM

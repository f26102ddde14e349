"""Errors lkctl handles by falling back leave a trace at debug level (`--debug`): issue 13, item 8."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from lkctl.catalog import list_images
from lkctl.images import resolve_image
from lkctl.installed import installed_root, list_installed
from lkctl.runtime.pvh import pvh_kernel


def _broken_install(name: str) -> Path:
    d = installed_root() / name
    d.mkdir(parents=True)
    (d / "manifest.json").write_text("{not json")
    return d


def test_an_unreadable_manifest_is_skipped_with_a_debug_line(caplog: pytest.LogCaptureFixture) -> None:
    _broken_install("core")
    with caplog.at_level(logging.DEBUG, logger="lkctl"):
        assert list_installed() == []
        (row,) = [i for i in list_images() if i.name == "core"]
    assert row.detail == "(unreadable manifest)"
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert sum("installed image core" in line and "unreadable manifest" in line for line in lines) == 2


def test_an_installed_image_with_a_bad_manifest_still_resolves_and_says_why(caplog: pytest.LogCaptureFixture) -> None:
    d = _broken_install("disk")
    (d / "disk.iso").write_bytes(b"\0" * 0x8001 + b"CD001" + b"\0" * 4096)
    with caplog.at_level(logging.DEBUG, logger="lkctl.images"):
        resolved = resolve_image("disk")
    assert resolved.boot.path == (d / "disk.iso").resolve()
    assert any("looking at every file" in r.getMessage() for r in caplog.records)


def test_a_kernel_that_cannot_boot_through_pvh_says_so_at_debug_level(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    kernel = tmp_path / "vm-kernel"
    kernel.write_bytes(b"MZ neither an ELF nor a compressed kernel")
    with caplog.at_level(logging.DEBUG, logger="lkctl.runtime.pvh"):
        assert pvh_kernel(kernel) is None
    messages = " | ".join(r.getMessage() for r in caplog.records)
    assert "not decompressed for a PVH boot" in messages and "no PVH entry point" in messages

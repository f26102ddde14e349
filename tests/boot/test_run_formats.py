"""`vm.run` boots every disk/ISO format lkctl's builder makes, execs in it, and never writes the image."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tests.boot.conftest import Cli

pytestmark = pytest.mark.boot

FORMATS = {"qcow2-bios": "minimal.qcow2", "iso-efi": "minimal-efi.iso", "raw-efi": "minimal-efi.img"}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_each_built_format_runs_execs_and_is_never_written(cli: Cli, tmp_path: Path, fmt: str) -> None:
    out = tmp_path / "out"
    cli("image.build", "minimal", "--format", fmt, "--out", str(out))
    image = out / FORMATS[fmt]
    before = sha256(image)
    cli("vm.run", f"--image={image}", "-d", "--name", "fmt")
    try:
        assert cli("vm.exec", "fmt", "--", "uname", "-s").stdout == "Linux\n"
        if not image.name.endswith(".iso"):
            # scribble over the boot disk from inside: the writes must land in the VM's overlay only
            cli("vm.exec", "fmt", "--", "dd", "if=/dev/urandom", "of=/dev/sda", "bs=4096", "count=64",
                "seek=16", "conv=fsync")  # fmt: skip
    finally:
        cli("vm.rm", "--force", "fmt")
    assert sha256(image) == before  # the VM wrote to its own overlay, never to the image

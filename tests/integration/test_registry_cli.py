"""The image tasks through the real `lkctl` command line: import (root filesystem, docker-archive made by
skopeo, OCI layout), ls --json, export, push to docker-registry, pull --oci into another machine's store, a
build that pulls what its YAML names, rm."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from lkctl.build.testing import add_image, directory, file
from lkctl.oci.layout import Store
from tests.integration.test_registry_images import Reg, docker_registry, skopeo

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent


def lkctl(home: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LKCTL_")}
    env.update(LKCTL_HOME=str(home), DOCKER_CONFIG=str(home / "no-docker"))
    proc = subprocess.run([str(BIN / "lkctl"), *args], env=env, capture_output=True, text=True, timeout=300)
    if check and proc.returncode:
        raise AssertionError(f"lkctl {' '.join(args)} exited {proc.returncode}: {proc.stderr}")
    return proc


def names(home: Path) -> dict[str, str]:
    return {i["name"]: i["detail"] for i in json.loads(lkctl(home, "image.ls", "--json").stdout) if i["kind"] == "oci"}


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Reg]:
    with docker_registry(tmp_path / "registry") as reg:
        yield reg


def test_import_export_push_pull_build_rm_through_the_cli(registry: Reg, tmp_path: Path) -> None:
    here, there = tmp_path / "here", tmp_path / "there"
    # a root filesystem tarball, gzipped, as users have them
    rootfs = tmp_path / "rootfs.tar.gz"
    with tarfile.open(rootfs, "w:gz") as tf:
        for d in ("etc", "bin"):
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tf.addfile(info)
        data = b"lkctl rootfs\n"
        info = tarfile.TarInfo("etc/issue")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    assert lkctl(here, "image.import", str(rootfs), "--ref", "lkctl.test/rootfs:1").stdout.split() == [
        "lkctl.test/rootfs:1"
    ]
    # a docker-archive made by another tool
    other = Store(tmp_path / "other").ensure()
    add_image(other, "lkctl.test/tool:2", [[directory("usr/bin"), file("usr/bin/tool", b"ELF", 0o755)]])
    archive = tmp_path / "tool.tar"
    skopeo("copy", "--quiet", f"oci:{other.root}:lkctl.test/tool:2", f"docker-archive:{archive}:lkctl.test/tool:2")
    assert lkctl(here, "image.import", str(archive)).stdout.split() == ["lkctl.test/tool:2"]
    assert set(names(here)) == {"lkctl.test/rootfs:1", "lkctl.test/tool:2"}

    # export as an OCI layout: skopeo reads it, and importing it elsewhere gives the same digest
    layout = tmp_path / "rootfs-oci.tar"
    lkctl(here, "image.export", "lkctl.test/rootfs:1", "--out", str(layout))
    skopeo("inspect", f"oci-archive:{layout}")
    assert lkctl(there, "image.import", str(layout)).stdout.split() == ["lkctl.test/rootfs:1"]
    assert names(there)["lkctl.test/rootfs:1"] == names(here)["lkctl.test/rootfs:1"]
    flat = lkctl(here, "image.export", "lkctl.test/tool:2", "--format", "filesystem").stdout
    assert "usr/bin/tool" in flat

    # push from here, pull there (a reference with a registry host is an OCI pull without --oci)
    remote = f"{registry.host}/lkctl/rootfs:1"
    pushed = lkctl(here, "image.push", "lkctl.test/rootfs:1", "--to", remote).stdout.strip()
    assert pushed == f"{remote}@{names(here)['lkctl.test/rootfs:1']}"
    lkctl(there, "image.rm", "lkctl.test/rootfs:1")
    assert lkctl(there, "image.pull", remote, "--quiet").stdout.strip() == pushed
    assert names(there)[remote] == names(here)["lkctl.test/rootfs:1"]

    # a build whose YAML names registry images pulls them itself
    kernel_src = Store(tmp_path / "k").ensure()
    add_image(kernel_src, "lkctl.test/kernel:1", [[file("kernel", b"MZ kernel")]])
    skopeo("copy", "--quiet", "--dest-tls-verify=false", f"oci:{kernel_src.root}:lkctl.test/kernel:1",
           f"docker://{registry.host}/lkctl/kernel:1")  # fmt: skip
    yml = tmp_path / "vm.yml"
    yml.write_text(f"kernel:\n  image: {registry.host}/lkctl/kernel:1\n  tar: none\ninit:\n  - {remote}\n")
    built = lkctl(there, "image.build", str(yml), "--format", "kernel+initrd,tar", "--out", str(tmp_path / "out"))
    assert built.stdout.split() == [
        str(tmp_path / "out" / n) for n in ("vm-kernel", "vm-initrd.img", "vm-cmdline", "vm.tar")
    ]
    with tarfile.open(tmp_path / "out" / "vm.tar") as tf:
        assert tf.extractfile("etc/issue").read() == b"lkctl rootfs\n"  # type: ignore[union-attr]
    assert f"{registry.host}/lkctl/kernel:1" in names(there)

    # rm keeps what the other image still uses; an unknown name is an error with a message
    lkctl(there, "image.rm", remote)
    assert remote not in names(there)
    gone = lkctl(there, "image.rm", "lkctl.test/never:1", check=False)
    assert gone.returncode == 1 and "lkctl.test/never:1 is not in the local image store" in gone.stderr

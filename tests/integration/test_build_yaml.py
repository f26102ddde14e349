"""A corpus of LinuxKit-style YAML (tests/data/yaml): valid files build (against synthetic images named as in
the YAML) and contain what their `# expect:` lines say; invalid files fail with the message their `# error:`
line gives, whether the parser or the build catches it."""

from __future__ import annotations

import io
import json
import re
import tarfile
from pathlib import Path

import pytest

from lkctl.build import build_image, load_spec
from lkctl.build.spec import Spec
from lkctl.build.testing import add_image, add_index, directory, file
from lkctl.errors import LkError
from lkctl.oci.layout import Store
from lkctl.oci.reference import parse_reference
from tests.conftest import REPO

pytestmark = pytest.mark.integration

CORPUS = REPO / "tests" / "data" / "yaml"
LABELS = {  # what linuxkit/pkg images carry in org.mobyproject.config
    "linuxkit/getty": {"capabilities": ["all"], "binds": ["/etc:/hostroot/etc", "/dev:/dev"], "pid": "host"},
    "linuxkit/sshd": {"capabilities": ["all"], "binds": ["/etc/resolv.conf:/etc/resolv.conf"], "pid": "host"},
}


def kernel_tar() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for m in (directory("lib/modules/6.6.71-linuxkit"), file("lib/modules/6.6.71-linuxkit/modules.dep", b"")):
            tf.addfile(m.info, io.BytesIO(m.data) if m.info.isreg() else None)
    return buf.getvalue()


def provide_images(spec: Spec, store: Store) -> None:
    """A small image for every reference the spec uses, shaped like the real one."""
    for ref in spec.image_refs():
        repo = parse_reference(ref).path.removeprefix("library/")
        if store.lookup(ref) is not None:
            continue
        if ref == spec.kernel.image:
            add_image(store, ref, [[file("kernel", b"MZ kernel"), file("kernel.tar", kernel_tar()),
                                    file("intel-ucode.cpio", b"070701ucode")]])  # fmt: skip
        elif repo == "alpine":
            layers = [[directory("etc"), file("etc/alpine-release", b"3.20.0\n"), file("bin/sh", b"ELF", 0o755)]]
            add_index(store, ref, {"amd64": layers, "arm64": layers})
        else:
            label = LABELS.get(repo)
            labels = {"org.mobyproject.config": json.dumps(label)} if label else None
            add_image(store, ref, [[file(f"usr/bin/{repo.rsplit('/', 1)[-1]}", b"ELF", 0o755)]], labels=labels,
                      config={"Entrypoint": [f"/usr/bin/{repo.rsplit('/', 1)[-1]}"]})  # fmt: skip


def directives(path: Path, key: str) -> list[str]:
    return [m.group(1).strip() for m in re.finditer(rf"^# {key}: (.*)$", path.read_text(encoding="utf-8"), re.M)]


def build_tar(spec: Spec, tmp_path: Path) -> set[str]:
    store = Store(tmp_path / "store").ensure()
    provide_images(spec, store)
    result = build_image(spec, name="corpus", out_dir=tmp_path / "out", store=store, formats=["tar"], pull="never")
    with tarfile.open(result.outputs["tar"][0]) as tf:
        return {n.rstrip("/") for n in tf.getnames()}


@pytest.mark.parametrize("path", sorted((CORPUS / "valid").glob("*.yml")), ids=lambda p: p.stem)
def test_valid_yaml_builds_with_what_it_promises(path: Path, tmp_path: Path) -> None:
    names = build_tar(load_spec([path]), tmp_path)
    expected = directives(path, "expect")
    assert expected, f"{path.name} has no # expect: lines"
    assert [e for e in expected if e not in names] == []
    assert [a for a in directives(path, "absent") if a in names] == []


def test_several_files_merge_like_linuxkit_build_a_b(tmp_path: Path) -> None:
    spec = load_spec([CORPUS / "merge" / "base.yml", CORPUS / "merge" / "extra.yml"])
    assert spec.kernel.image.endswith("kernel:6.6.71") and spec.kernel.cmdline == "console=ttyS0 quiet"
    assert [c.name for c in spec.services] == ["getty", "sshd"] and len(spec.init) == 2
    names = build_tar(spec, tmp_path)
    assert {"containers/services/getty/config.json", "containers/services/sshd/config.json", "etc/merged"} <= names


def test_every_container_field_reaches_the_oci_config(tmp_path: Path) -> None:
    spec = load_spec([CORPUS / "valid" / "every-container-field.yml"])
    store = Store(tmp_path / "store").ensure()
    provide_images(spec, store)
    result = build_image(spec, name="all", out_dir=tmp_path / "out", store=store, formats=["tar"], pull="never")
    with tarfile.open(result.outputs["tar"][0]) as tf:
        config = json.load(tf.extractfile("containers/services/everything/config.json"))  # type: ignore[arg-type]
        runtime = json.load(tf.extractfile("containers/services/everything/runtime.json"))  # type: ignore[arg-type]
    process, linux = config["process"], config["linux"]
    assert process["args"] == ["/bin/sh", "-c", "sleep infinity"] and process["cwd"] == "/srv"
    assert process["user"] == {"uid": 1000, "gid": 100, "additionalGids": [10, 100]}  # "bye" is container 100
    assert process["capabilities"]["ambient"] == ["CAP_NET_ADMIN"]
    assert process["noNewPrivileges"] is True and process["oomScoreAdj"] == -500
    assert {"type": "pid"} not in linux["namespaces"] and {"type": "network"} in linux["namespaces"]
    assert linux["sysctl"] == {"net.ipv4.ip_forward": "1"} and linux["resources"]["pids"] == {"limit": 256}
    assert config["root"]["readonly"] is True and config["hostname"] == "everything"
    assert runtime["namespace"] == "lkctl" and runtime["bindNS"]["net"] == "/run/netns/everything"


@pytest.mark.parametrize("path", sorted((CORPUS / "invalid").glob("*.yml")), ids=lambda p: p.stem)
def test_invalid_yaml_fails_with_the_expected_message(path: Path, tmp_path: Path) -> None:
    (pattern,) = directives(path, "error")
    with pytest.raises(LkError) as info:
        build_tar(load_spec([path]), tmp_path)
    assert re.search(pattern, info.value.message), info.value.message
    assert path.name in info.value.message or "services[0]" in info.value.message  # it says where

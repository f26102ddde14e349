"""Pulling and pushing images against Debian's docker-registry (distribution) on loopback: images made here,
pushed with lkctl's own client and with skopeo, multi-platform indexes, htpasswd auth, a corrupt blob, a registry
that answers 503/429 first, and builds that pull what their YAML names."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
import pytest

from lkctl.build import build_image, parse_spec
from lkctl.build.testing import Member, add_image, add_index, directory, file, opaque, whiteout
from lkctl.errors import BuildError, ImageError
from lkctl.http.client import RetryPolicy
from lkctl.oci.layout import Store
from lkctl.oci.pull import pull_image, push_image
from lkctl.oci.registry import Registry, RegistryAuthError, RegistryError, RegistryNotFound
from lkctl.sources import Platform
from tests.integration._loopback import Reg, Request, docker_registry, require, route_server

__all__ = ["Reg", "docker_registry", "skopeo"]

pytestmark = pytest.mark.integration

NO_WAIT = RetryPolicy(attempts=4, sleep=lambda s: None)
ARM64 = Platform("linux", "arm64")
AMD64 = Platform("linux", "amd64")


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Reg]:
    with docker_registry(tmp_path / "registry") as reg:
        yield reg


@pytest.fixture(autouse=True)
def no_docker_creds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "no-docker-config"))
    monkeypatch.delenv("LKCTL_REGISTRY_USERNAME", raising=False)
    monkeypatch.delenv("LKCTL_REGISTRY_PASSWORD", raising=False)


def skopeo(*args: str) -> bytes:
    binary = require("skopeo", "skopeo")
    return subprocess.run([binary, *args], capture_output=True, check=True, timeout=120).stdout


def stores(tmp_path: Path) -> tuple[Store, Store]:
    return Store(tmp_path / "src-store").ensure(), Store(tmp_path / "dst-store").ensure()


def layers_with_whiteouts() -> list[list[Member]]:
    return [
        [directory("etc"), file("etc/keep", b"keep"), file("etc/gone", b"x"), directory("var/cache"),
         file("var/cache/old", b"old")],
        [whiteout("etc/gone"), opaque("var/cache"), file("var/cache/new", b"new")],
    ]  # fmt: skip


def test_an_image_pushed_with_lkctl_pulls_back_byte_for_byte(registry: Reg, tmp_path: Path) -> None:
    src, dst = stores(tmp_path)
    pushed_desc = add_image(src, "lkctl.test/app:1", layers_with_whiteouts(), config={"Cmd": ["/bin/app"]})
    ref = f"{registry.host}/lkctl/app:1"

    pushed = push_image("lkctl.test/app:1", src, to=ref)
    again = push_image("lkctl.test/app:1", src, to=ref)  # everything is there already: only re-checked
    result = pull_image(ref, dst)

    assert pushed.digest == again.digest == result.digest == pushed_desc.digest
    assert (result.name, result.fetched) == (ref, 3)  # the config and two layers
    image = dst.resolve(ref)
    for d in (image.manifest["config"], *image.manifest["layers"]):
        assert dst.read_blob(d["digest"]) == src.read_blob(d["digest"])
    index = json.loads((dst.root / "index.json").read_text())
    assert [m["annotations"]["org.opencontainers.image.ref.name"] for m in index["manifests"]] == [ref]
    # a second pull has nothing to fetch
    assert pull_image(ref, dst).fetched == 0
    # a store that does not exist yet is created by the first pull
    fresh = Store(tmp_path / "never-used" / "store")
    assert pull_image(ref, fresh).fetched == 3 and fresh.resolve(ref).manifest_digest == pushed.digest


def test_a_file_that_cannot_be_read_is_a_push_error_not_a_traceback(registry: Reg, tmp_path: Path) -> None:
    with Registry(registry.host) as reg, pytest.raises(RegistryError, match=r"cannot push .*image\.raw"):
        reg.push_blob(f"{registry.host}/lkctl/app:1", tmp_path / "image.raw")  # gone before the push read it


def test_a_skopeo_pushed_index_pulls_only_the_asked_platform_and_its_attestation(registry: Reg, tmp_path: Path) -> None:
    src, dst = stores(tmp_path)
    per_arch: dict[str, Sequence[Sequence[Member]]] = {
        arch: [[file("etc/arch", arch.encode())]] for arch in ("amd64", "arm64")
    }
    index = add_index(src, "lkctl.test/multi:1", per_arch, attestations=True)
    ref = f"{registry.host}/lkctl/multi:1"
    skopeo(
        "copy", "--all", "--quiet", "--dest-tls-verify=false", f"oci:{src.root}:lkctl.test/multi:1", f"docker://{ref}"
    )

    result = pull_image(ref, dst, platforms=[ARM64])

    assert result.digest == index.digest and result.platforms == ("linux/arm64",)
    assert dst.resolve(ref, arch="arm64").config["architecture"] == "arm64"
    with pytest.raises(ImageError, match="missing"):  # the amd64 manifest was not fetched
        dst.resolve(ref, arch="amd64")
    entries = json.loads(dst.read_blob(index.digest))["manifests"]
    attestation = next(e for e in entries if e["platform"]["os"] == "unknown"
                       and e["annotations"]["vnd.docker.reference.digest"] == entries[1]["digest"])  # fmt: skip
    assert dst.has_blob(attestation["digest"])  # LinuxKit's cache check wants the platform's attestation too
    with pytest.raises(RegistryNotFound, match=r"no image for linux/riscv64 \(available: linux/amd64, linux/arm64\)"):
        pull_image(ref, dst, platforms=[Platform("linux", "riscv64")])

    # a build for the other architecture pulls it; the first platform's blobs stay
    spec = parse_spec(f"init:\n  - {ref}\n")
    result_build = build_image(spec, name="x", out_dir=tmp_path / "out", store=dst, formats=["tar"], arch="amd64")
    assert dst.resolve(ref, arch="amd64").config["architecture"] == "amd64"
    assert b"amd64" in result_build.outputs["tar"][0].read_bytes()
    assert dst.resolve(ref, arch="arm64").manifest_digest == entries[1]["digest"]


def test_skopeo_reads_what_lkctl_pushed_and_lkctl_pushes_a_whole_index(registry: Reg, tmp_path: Path) -> None:
    src, dst = stores(tmp_path)
    add_index(src, "lkctl.test/multi:2", {"amd64": [[file("a", b"1")]], "arm64": [[file("a", b"2")]]})
    ref = f"{registry.host}/lkctl/multi:2"
    digest = push_image("lkctl.test/multi:2", src, to=ref).digest

    raw = skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{ref}")
    assert "sha256:" + hashlib.sha256(raw).hexdigest() == digest
    copied = tmp_path / "copied"
    skopeo("copy", "--all", "--quiet", "--src-tls-verify=false", f"docker://{ref}", f"oci:{copied}:x")
    assert (copied / "blobs" / "sha256" / digest.removeprefix("sha256:")).is_file()

    pull_image(ref, dst, platforms=[AMD64])
    with pytest.raises(ImageError, match=r"missing linux/arm64.*--all-platforms"):
        push_image(ref, dst, to=f"{registry.host}/lkctl/partial:1")
    pull_image(ref, dst, all_platforms=True)
    assert push_image(ref, dst, to=f"{registry.host}/lkctl/whole:1").digest == digest


def htpasswd_auth(work: Path, user: str, password: str) -> dict[str, object]:
    import bcrypt  # paramiko's dependency; the registry only accepts bcrypt entries

    work.mkdir(parents=True, exist_ok=True)
    (work / "htpasswd").write_text(f"{user}:{bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()}\n")
    return {"htpasswd": {"realm": "lkctl-test", "path": str(work / "htpasswd")}}


def test_htpasswd_registry_takes_credentials_from_docker_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src, dst = stores(tmp_path)
    add_image(src, "lkctl.test/secret:1", [[file("s", b"secret")]])
    with docker_registry(tmp_path / "reg", htpasswd_auth(tmp_path / "reg", "alice", "s3cret")) as reg:
        ref = f"{reg.host}/lkctl/secret:1"
        with pytest.raises(RegistryAuthError, match="authentication required"):
            push_image("lkctl.test/secret:1", src, to=ref)
        docker = tmp_path / "docker"
        docker.mkdir()
        auth = base64.b64encode(b"alice:s3cret").decode()
        (docker / "config.json").write_text(json.dumps({"auths": {reg.host: {"auth": auth}}}))
        monkeypatch.setenv("DOCKER_CONFIG", str(docker))

        digest = push_image("lkctl.test/secret:1", src, to=ref).digest
        assert pull_image(ref, dst).digest == digest
        skopeo("inspect", "--raw", "--tls-verify=false", "--creds", "alice:s3cret", f"docker://{ref}")


def test_a_blob_corrupted_in_the_registry_is_refused_and_the_image_not_named(registry: Reg, tmp_path: Path) -> None:
    src, dst = stores(tmp_path)
    desc = add_image(src, "lkctl.test/app:1", [[file("big", secrets.token_bytes(200_000))]])
    ref = f"{registry.host}/lkctl/app:1"
    push_image("lkctl.test/app:1", src, to=ref)
    layer = json.loads(src.read_blob(desc.digest))["layers"][0]["digest"]
    blob = registry.blob_file(layer)
    data = blob.read_bytes()
    blob.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # same size, one bit off: only the digest can tell

    with Registry(registry.host, retry=NO_WAIT) as client, pytest.raises(ImageError, match="sha256"):
        pull_image(ref, dst, registry=client)
    assert dst.lookup(ref) is None and not dst.has_blob(layer)
    assert not any((dst.root / "ingest").glob("sha256-*"))  # no verified-looking leftovers


def test_pull_retries_through_503_and_429_and_fetches_layers_in_parallel(registry: Reg, tmp_path: Path) -> None:
    src, dst = stores(tmp_path)
    add_image(src, "lkctl.test/app:1", [[file(f"l{i}", secrets.token_bytes(50_000))] for i in range(4)])
    push_image("lkctl.test/app:1", src, to=f"{registry.host}/lkctl/app:1")
    refused: set[str] = set()
    upstream = httpx.Client(base_url=f"http://{registry.host}")

    def flaky(req: Request) -> tuple[int, dict[str, str], bytes]:
        if req.method == "GET" and "/blobs/" in req.path and req.path not in refused:
            refused.add(req.path)
            status = 503 if len(refused) % 2 else 429
            return status, {"Retry-After": "0"}, b"busy"
        r = upstream.request(req.method, req.path, headers={k: v for k, v in req.headers.items() if k != "host"})
        keep = {k: v for k, v in r.headers.items() if k.lower() in ("content-type", "docker-content-digest")}
        return r.status_code, keep, r.content

    with route_server(flaky) as proxy, Registry(f"127.0.0.1:{proxy.port}", retry=NO_WAIT) as client:
        result = pull_image(f"127.0.0.1:{proxy.port}/lkctl/app:1", dst, registry=client)
    upstream.close()
    assert result.fetched == 5 and len(refused) == 5
    blob_gets = [r for r in proxy.seen if r.method == "GET" and "/blobs/" in r.path]
    assert len(blob_gets) == 10  # each blob: refused once, then served


def test_a_build_pulls_the_images_its_yaml_names_and_refuses_a_hostile_one(registry: Reg, tmp_path: Path) -> None:
    src, dst = stores(tmp_path)
    add_image(src, "lkctl.test/kernel:1", [[file("kernel", b"MZ kernel"), file("kernel.tar", b"")]])
    add_image(src, "lkctl.test/init:1", layers_with_whiteouts())
    add_image(src, "lkctl.test/evil:1", [[file("etc/x", b"ok")], [file("../../etc/passwd", b"root::0:0::/:/bin/sh")]])
    for name in ("kernel", "init", "evil"):
        push_image(f"lkctl.test/{name}:1", src, to=f"{registry.host}/lkctl/{name}:1")
    yml = f"kernel:\n  image: {registry.host}/lkctl/kernel:1\n  tar: none\ninit:\n  - {registry.host}/lkctl/init:1\n"

    result = build_image(parse_spec(yml), name="vm", out_dir=tmp_path / "out", store=dst, formats=["tar"])
    import tarfile

    with tarfile.open(result.outputs["tar"][0]) as tf:
        names = set(tf.getnames())
    assert {"boot/kernel", "etc/keep", "var/cache/new"} <= names
    assert not {"etc/gone", "var/cache/old"} & names  # whiteout and opaque whiteout applied

    evil = yml.replace("lkctl/init:1", "lkctl/evil:1")
    with pytest.raises(BuildError, match=r"lkctl/evil:1, layer sha256:[0-9a-f]+: entry '\.\./\.\./etc/passwd' escapes"):
        build_image(parse_spec(evil), name="evil", out_dir=tmp_path / "out", store=dst, formats=["tar"])
    assert not (tmp_path / "out" / "evil.tar").exists()


CONCURRENT = """
import sys
from pathlib import Path
from lkctl.build import build_image, parse_spec
from lkctl.oci.layout import Store
store, ref, out = Store(Path(sys.argv[1])), sys.argv[2], Path(sys.argv[3])
spec = parse_spec(f"kernel:\\n  image: {ref}-kernel\\n  tar: none\\ninit:\\n  - {ref}\\n")
print(build_image(spec, name="vm", out_dir=out, store=store).initrd)
"""


def test_processes_pulling_and_building_at_once_share_one_store(registry: Reg, tmp_path: Path) -> None:
    src, dst = stores(tmp_path)
    add_image(src, "lkctl.test/init:1", [[file(f"usr/lib/f{i}", secrets.token_bytes(40_000)) for i in range(20)]])
    add_image(src, "lkctl.test/init:1-kernel", [[file("kernel", b"MZ kernel")]])
    ref = f"{registry.host}/lkctl/init:1"
    push_image("lkctl.test/init:1", src, to=ref)
    push_image("lkctl.test/init:1-kernel", src, to=f"{ref}-kernel")
    argv = [sys.executable, "-c", CONCURRENT, str(dst.root), ref]
    out = subprocess.PIPE
    procs = [subprocess.Popen([*argv, str(tmp_path / f"out{i}")], stdout=out, stderr=out) for i in range(3)]
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [r[1].decode()[-500:] for r in results]
    initrds = {Path(r[0].decode().strip()).read_bytes() for r in results}
    assert len(initrds) == 1  # the same bytes whichever process pulled or compressed first
    index = json.loads((dst.root / "index.json").read_text())
    assert sorted(m["annotations"]["org.opencontainers.image.ref.name"] for m in index["manifests"]) == [
        ref,
        f"{ref}-kernel",
    ]
    assert not [p for p in (dst.root / "ingest").iterdir() if not p.name.startswith(".")]  # nothing left half-done

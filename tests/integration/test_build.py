"""build_image end to end on synthetic images: the layout LinuxKit's init expects, extracted with the real cpio
tool, plus the build cache, missing images and atomic outputs."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

import pytest
import yaml

from lkctl import paths
from lkctl.build import build_image, build_paths, parse_spec
from lkctl.build.shellconfig import INIT_UNREAD, shell_assignments
from lkctl.build.testing import add_image, directory, file, hardlink, symlink, whiteout
from lkctl.errors import BuildError, ImageError
from lkctl.oci.layout import Store

pytestmark = pytest.mark.integration

KERNEL = b"\x4d\x5a fake bzImage " * 1000
SPEC = """
kernel:
  image: lkctl.local/kernel:1
  cmdline: console=ttyS0 quiet
init:
  - lkctl.local/init:1
volumes:
  - name: data
    image: lkctl.local/svc:1
onboot:
  - name: setup
    image: lkctl.local/setup:1
    readonly: true
services:
  - name: web
    image: lkctl.local/svc:1
    capabilities.add: [CAP_NET_ADMIN]
    binds.add: ["data:/data"]
  - name: web2
    image: lkctl.local/svc:1
files:
  - path: etc/motd
    contents: "welcome\\n"
    mode: "0644"
  - path: /srv/data/secret
    contents: s3cret
    mode: "0640"
    uid: web
    gid: 7
  - path: root/.ssh/authorized_keys
    source: ~/.ssh/id.pub
  - path: var/empty
    directory: true
  - path: etc/alias
    symlink: /etc/motd
  - path: etc/linuxkit.yml
    metadata: yaml
  - path: etc/optional
    source: /nonexistent/file
    optional: true
"""


def _kernel_tar() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for m in (directory("lib"), directory("lib/modules"), directory("lib/modules/6.1.0"),
                  file("lib/modules/6.1.0/modules.dep", b"kernel/x.ko:\n"),
                  hardlink("lib/modules/6.1.0/modules.alias", "lib/modules/6.1.0/modules.dep")):  # fmt: skip
            tf.addfile(m.info, io.BytesIO(m.data) if m.info.isreg() else None)
    return buf.getvalue()


@pytest.fixture
def store(tmp_path: Path) -> Store:
    store = Store(tmp_path / "store").ensure()
    add_image(store, "lkctl.local/kernel:1", [[file("kernel", KERNEL), file("kernel.tar", _kernel_tar()),
                                               file("System.map", b"map")]])  # fmt: skip
    add_image(
        store,
        "lkctl.local/init:1",
        [
            [directory("bin"), file("bin/busybox", b"BB", 0o755), symlink("bin/sh", "busybox"),
             file("init", b"#!/bin/sh\n", 0o755), directory("etc"), file("etc/inittab", b"::sysinit:/bin/rc\n"),
             file("etc/old", b"gone")],
            [whiteout("etc/old"), file("etc/issue", b"lkctl\n")],
        ],
    )  # fmt: skip
    add_image(store, "lkctl.local/setup:1", [[file("usr/bin/setup", b"#!/bin/sh\n", 0o755)]],
              config={"Entrypoint": ["/usr/bin/setup"]})  # fmt: skip
    add_image(
        store,
        "lkctl.local/svc:1",
        [[file("usr/bin/web", b"ELF", 0o755)]],
        config={"Entrypoint": ["/usr/bin/web"], "Cmd": ["--port", "80"], "Env": ["PATH=/usr/bin"]},
        labels={"org.mobyproject.config": json.dumps({"capabilities": ["CAP_NET_BIND_SERVICE"], "pid": "host"})},
    )
    return store


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id.pub").write_text("ssh-ed25519 AAAA test\n")
    monkeypatch.setenv("HOME", str(home))
    return home


def _extract(initrd: Path, dest: Path, skip: int = 0) -> list[str]:
    """Unpack with the real gzip and cpio tools; returns the archive's names in order."""
    if shutil.which("cpio") is None:
        pytest.skip("cpio is not installed")
    dest.mkdir()
    data = initrd.read_bytes()[skip:]
    subprocess.run(["gzip", "-t"], input=data, check=True)
    raw = subprocess.run(["gzip", "-dc"], input=data, check=True, capture_output=True).stdout
    subprocess.run(["cpio", "-idm", "--quiet"], input=raw, cwd=dest, check=True)
    listing = subprocess.run(["cpio", "-t", "--quiet"], input=raw, check=True, capture_output=True).stdout
    return listing.decode().splitlines()


def _mode(path: Path) -> int:
    return path.lstat().st_mode & 0o7777


def test_build_lays_out_kernel_init_bundles_and_files(store: Store, home: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = build_image(parse_spec(SPEC, "vm.yml"), name="vm", out_dir=out, store=store)
    assert not result.cached
    assert (result.kernel, result.initrd, result.cmdline) == (
        out / "vm-kernel",
        out / "vm-initrd.img",
        out / "vm-cmdline",
    )
    assert result.kernel.read_bytes() == KERNEL
    assert result.cmdline.read_text() == result.cmdline_text == "console=ttyS0 quiet"
    # the typed hand-off to the runtime: no path surgery, no re-reading the cmdline file
    boot = result.boot_image()
    assert (boot.format.value, boot.path, boot.kernel, boot.initrd) == (
        "kernel+initrd",
        out / "vm",
        result.kernel,
        result.initrd,
    )
    assert boot.cmdline == "console=ttyS0 quiet" and result.prefix == out / "vm"

    root = tmp_path / "root"
    names = _extract(result.initrd, root)
    assert not (root / "boot").exists()
    assert "System.map" not in names and "kernel" not in names
    # sections in LinuxKit's order: kernel.tar, init, volumes, onboot, services, files
    first = {section: min(i for i, n in enumerate(names) if n.startswith(section))
             for section in ("lib/modules", "bin/busybox", "containers/volumes", "containers/onboot",
                             "containers/services", "etc/motd")}  # fmt: skip
    assert list(first) == sorted(first, key=first.__getitem__)
    for i, n in enumerate(names):  # the kernel's unpacker needs every parent before its children
        if "/" in n:
            assert n.rsplit("/", 1)[0] in names[:i], n

    assert (root / "lib/modules/6.1.0/modules.dep").read_bytes() == b"kernel/x.ko:\n"
    assert os.readlink(root / "lib/modules/6.1.0/modules.alias") == "modules.dep"
    assert (root / "init").read_bytes() == b"#!/bin/sh\n" and _mode(root / "init") == 0o755
    assert os.readlink(root / "bin/sh") == "busybox"
    assert not (root / "etc/old").exists()  # whited out by the init image's upper layer
    assert os.readlink(root / "etc/resolv.conf") == "/run/resolvconf/resolv.conf"
    assert (root / "etc/hosts").read_text().startswith("127.0.0.1       localhost")
    for d in ("dev", "proc", "sys"):
        assert (root / d).is_dir()

    vol = root / "containers/volumes/data"
    assert (vol / "lower/usr/bin/web").read_bytes() == b"ELF"
    assert (vol / "tmp").is_dir() and (vol / "merged").is_dir()

    setup = root / "containers/onboot/000-setup"
    raw_config = (setup / "config.json").read_text()
    assert raw_config.startswith('{\n    "ociVersion": "1.2.1",\n    "process": {')
    config = json.loads(raw_config)
    assert config["root"] == {"path": "rootfs", "readonly": True}
    assert config["process"]["args"] == ["/usr/bin/setup"]
    assert (setup / "rootfs/usr/bin/setup").is_file() and not (setup / "lower").exists()
    runtime = json.loads((setup / "runtime.json").read_text())
    assert runtime["mounts"][0] == {
        "destination": "/containers/onboot/000-setup/rootfs",
        "source": "/containers/onboot/000-setup/rootfs",
        "options": ["bind"],
    }

    # lkctl's init sources these instead of running json.awk on the bundle's JSON at boot
    # what the guest's json.awk would print, less the members lkctl's init never reads
    assert (setup / "config.json.C.sh").read_bytes() == shell_assignments(raw_config, "C", omit=INIT_UNREAD)
    assert (setup / "runtime.json.R.sh").read_bytes() == shell_assignments((setup / "runtime.json").read_bytes(), "R")

    web = root / "containers/services/web"
    config = json.loads((web / "config.json").read_text())
    assert config["process"]["args"] == ["/usr/bin/web", "--port", "80"]
    assert config["process"]["capabilities"]["effective"] == ["CAP_NET_BIND_SERVICE", "CAP_NET_ADMIN"]
    assert {"type": "pid"} not in config["linux"]["namespaces"]  # pid: host from the label
    (data,) = [m for m in config["mounts"] if m["destination"] == "/data"]
    assert data["source"] == "/containers/volumes/data/merged"
    assert (web / "lower/usr/bin/web").is_file() and (web / "tmp").is_dir() and (web / "rootfs").is_dir()
    runtime = json.loads((web / "runtime.json").read_text())
    assert [m["destination"] for m in runtime["mounts"]] == [
        "/containers/services/web/tmp",
        "/containers/services/web/tmp",
        "/containers/services/web/rootfs",
    ]
    assert runtime["mounts"][2]["options"] == [
        "lowerdir=/containers/services/web/lower",
        "upperdir=/containers/services/web/tmp/upper",
        "workdir=/containers/services/web/tmp/work",
    ]
    # the same image is unpacked once: web2 overlays web's copy
    web2 = root / "containers/services/web2"
    assert not (web2 / "lower").exists()
    assert (
        "lowerdir=/containers/services/web/lower"
        in json.loads((web2 / "runtime.json").read_text())["mounts"][2]["options"]
    )

    assert (root / "etc/motd").read_text() == "welcome\n" and _mode(root / "etc/motd") == 0o644
    secret = root / "srv/data/secret"
    assert secret.read_text() == "s3cret" and _mode(secret) == 0o640
    assert (secret.stat().st_uid, secret.stat().st_gid) == (101, 7)  # web is the second container: id 101
    assert _mode(root / "srv") == 0o750 and (root / "srv").stat().st_uid == 101  # LinuxKit's dirMode
    keys = root / "root/.ssh/authorized_keys"
    assert keys.read_text() == "ssh-ed25519 AAAA test\n" and _mode(keys) == 0o600
    assert (root / "var/empty").is_dir() and _mode(root / "var/empty") == 0o700
    assert os.readlink(root / "etc/alias") == "/etc/motd"
    assert not (root / "etc/optional").exists()
    meta = yaml.safe_load((root / "etc/linuxkit.yml").read_text())
    assert meta["kernel"]["image"] == "lkctl.local/kernel:1" and meta["services"][0]["name"] == "web"
    assert _mode(root / "etc") == 0o755  # an existing directory keeps its mode


def test_second_build_is_a_cache_hit_that_writes_nothing(store: Store, home: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    spec = parse_spec(SPEC, "vm.yml")
    first = build_image(spec, name="vm", out_dir=out, store=store)
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    start = time.monotonic()
    again = build_image(parse_spec(SPEC, "vm.yml"), name="vm", out_dir=out, store=store)
    assert time.monotonic() - start < 0.5
    assert again.cached and again.key == first.key and again.initrd == first.initrd
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before

    (home / ".ssh" / "id.pub").write_text("ssh-ed25519 BBBB changed\n")  # a files source changed
    changed = build_image(spec, name="vm", out_dir=out, store=store)
    assert not changed.cached and changed.key != first.key

    other = build_image(parse_spec(SPEC.replace("quiet", "loud"), "vm.yml"), name="vm", out_dir=out, store=store)
    assert not other.cached and other.cmdline.read_text() == "console=ttyS0 loud"

    add_image(store, "lkctl.local/svc:1", [[file("usr/bin/web", b"ELF v2", 0o755)]])  # the tag moved
    assert not build_image(
        parse_spec(SPEC.replace("quiet", "loud"), "vm.yml"), name="vm", out_dir=out, store=store
    ).cached


def test_an_output_changed_behind_the_cache_s_back_is_rebuilt(store: Store, home: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    spec = parse_spec(SPEC, "vm.yml")
    result = build_image(spec, name="vm", out_dir=out, store=store)
    result.initrd.write_bytes(b"clobbered")
    again = build_image(spec, name="vm", out_dir=out, store=store)
    assert not again.cached and again.initrd.read_bytes()[:2] == b"\x1f\x8b"


def test_missing_image_is_an_error_with_a_hint_unless_ensure_image_makes_it(
    store: Store, home: Path, tmp_path: Path
) -> None:
    spec = parse_spec(SPEC.replace("lkctl.local/setup:1", "lkctl.local/made:1"), "vm.yml")
    with pytest.raises(ImageError, match=r"image lkctl\.local/made:1 is not in the local image store .*; pull it with"):
        build_image(spec, name="vm", out_dir=tmp_path / "out", store=store)
    assert not (tmp_path / "out" / "vm-initrd.img").exists()

    asked: list[str] = []

    def ensure(ref: str) -> None:
        asked.append(ref)
        add_image(store, ref, [[file("usr/bin/setup", b"made")]])

    result = build_image(spec, name="vm", out_dir=tmp_path / "out", store=store, ensure_image=ensure)
    assert asked == ["lkctl.local/made:1"]
    assert result.initrd.is_file()


def test_a_failed_build_leaves_previous_outputs_and_no_temp_files(store: Store, home: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    good = build_image(parse_spec(SPEC, "vm.yml"), name="vm", out_dir=out, store=store)
    before = {p: p.read_bytes() for p in (good.kernel, good.initrd, good.cmdline)}
    broken = parse_spec(
        SPEC.replace("quiet", "changed") + "  - path: etc/needed\n    source: /nonexistent/x\n", "vm.yml"
    )
    with pytest.raises(BuildError, match=r"files\[7\] \(etc/needed\): cannot read source /nonexistent/x"):
        build_image(broken, name="vm", out_dir=out, store=store)
    assert {p: p.read_bytes() for p in before} == before
    assert sorted(p.name for p in out.iterdir()) == ["vm-cmdline", "vm-initrd.img", "vm-kernel"]  # no bookkeeping
    parts = build_paths(out, "vm").parts
    assert parts.is_relative_to(paths.cache_dir()) and sorted(p.name for p in parts.iterdir()) == [
        "initrd.img",
        "kernel",
        "parts.json",
    ]
    # the stamp was dropped before the failed attempt, so the good spec builds again rather than trusting it
    assert not build_image(parse_spec(SPEC, "vm.yml"), name="vm", out_dir=out, store=store).cached


def test_a_hostile_image_fails_the_build_before_anything_is_published(store: Store, home: Path, tmp_path: Path) -> None:
    add_image(store, "lkctl.local/evil:1", [[file("../../etc/cron.d/x", b"* * * * * root sh")]])
    spec = parse_spec(SPEC.replace("lkctl.local/setup:1", "lkctl.local/evil:1"), "vm.yml")
    with pytest.raises(BuildError, match=r"image lkctl\.local/evil:1, layer sha256:[0-9a-f]{64}: .*escapes the root"):
        build_image(spec, name="vm", out_dir=tmp_path / "out", store=store)
    assert not (tmp_path / "out").exists()  # the build made the dir, and removed it with nothing in it
    assert not any(build_paths(tmp_path / "out", "vm").parts.iterdir())


def test_microcode_is_prepended_uncompressed_to_the_initrd(store: Store, home: Path, tmp_path: Path) -> None:
    ucode = b"070701" + b"0" * 104 + b"early ucode cpio".ljust(16, b"\0")
    add_image(store, "lkctl.local/kernel:ucode", [[file("kernel", KERNEL), file("kernel.tar", _kernel_tar()),
                                                   file("intel-ucode.cpio", ucode)]])  # fmt: skip
    spec = parse_spec(
        SPEC.replace("lkctl.local/kernel:1", "lkctl.local/kernel:ucode").replace(
            "cmdline: console=ttyS0 quiet", "cmdline: console=ttyS0 quiet\n  ucode: intel-ucode.cpio"
        ),
        "vm.yml",
    )
    result = build_image(spec, name="vm", out_dir=tmp_path / "out", store=store)
    data = result.initrd.read_bytes()
    assert data.startswith(ucode) and data[len(ucode) : len(ucode) + 2] == b"\x1f\x8b"
    assert "init" in _extract(result.initrd, tmp_path / "root", skip=len(ucode))


def test_a_spec_without_kernel_is_refused(store: Store, tmp_path: Path) -> None:
    with pytest.raises(BuildError, match="needs a kernel"):
        build_image(parse_spec("init: [lkctl.local/init:1]\n"), name="vm", out_dir=tmp_path, store=store)

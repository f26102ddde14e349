"""lkctl's base images built for real from this machine's packages into a temporary OCI store."""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lkctl import paths
from lkctl.baseimages import (
    BASE_IMAGES,
    build_all,
    ensure_base_image,
    filter_module_index,
    is_base_image,
    select_modules,
)
from lkctl.errors import ImageError, LkError
from lkctl.hostkernel import kernel_version
from lkctl.oci.layout import Store
from tests.conftest import REPO

pytestmark = pytest.mark.integration


def layer_tar(store: Store, ref: str) -> tarfile.TarFile:
    (layer,) = store.resolve(ref).layers
    return tarfile.open(fileobj=io.BytesIO(gzip.decompress(store.read_blob(layer.digest))))


def members(tf: tarfile.TarFile) -> dict[str, tarfile.TarInfo]:
    return {m.name: m for m in tf.getmembers()}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Store, list[str]]]:
    store = Store(tmp_path_factory.mktemp("oci"))
    yield store, build_all(store)


def test_build_all_makes_kernel_init_and_sshd_tagged_latest_and_by_content(built: tuple[Store, list[str]]) -> None:
    store, done = built
    assert done == ["lkctl.local/kernel", "lkctl.local/init", "lkctl.local/sshd"]
    names = [name for name, _ in store.refs()]
    for repo in BASE_IMAGES.values():
        latest = store.lookup(f"{repo}:latest")
        assert latest is not None
        tagged = [n for n in names if n.startswith(repo + ":") and not n.endswith(":latest")]
        assert len(tagged) == 1
        assert store.lookup(tagged[0]).digest == latest.digest  # type: ignore[union-attr]
        assert tagged[0].rsplit(":", 1)[1] == latest.digest.removeprefix("sha256:")[:12]


def test_second_run_does_nothing_and_is_fast(built: tuple[Store, list[str]]) -> None:
    store, _ = built
    index_before = (store.root / "index.json").read_bytes()
    start = time.monotonic()
    assert build_all(store) == []
    for repo in BASE_IMAGES.values():
        assert ensure_base_image(repo, store) is False
    assert time.monotonic() - start < 1.0
    assert (store.root / "index.json").read_bytes() == index_before


def test_layers_are_reproducible_sorted_root_owned_with_a_fixed_mtime(
    built: tuple[Store, list[str]], tmp_path: Path
) -> None:
    store, _ = built
    other = Store(tmp_path / "oci")
    build_all(other, force=True)
    for repo in BASE_IMAGES.values():
        assert other.lookup(f"{repo}:latest") == store.lookup(f"{repo}:latest")  # same digest, same name
        with layer_tar(store, repo) as tf:
            infos = tf.getmembers()
        assert [m.name for m in infos] == sorted(m.name for m in infos)
        assert {(m.uid, m.gid, m.uname, m.gname, m.mtime) for m in infos} == {(0, 0, "", "", 1492533000)}


def test_kernel_image_has_the_bzimage_and_a_closed_module_subset(built: tuple[Store, list[str]]) -> None:
    store, _ = built
    with layer_tar(store, "lkctl.local/kernel") as tf:
        files = members(tf)
        assert set(files) == {"kernel", "kernel.tar"}
        kernel = tf.extractfile("kernel").read()  # type: ignore[union-attr]
        inner = tarfile.open(fileobj=io.BytesIO(tf.extractfile("kernel.tar").read()))  # type: ignore[union-attr]  # noqa: SIM115
    version = next(p.name.removeprefix("vmlinuz-") for p in Path("/boot").glob("vmlinuz-*") if p.read_bytes() == kernel)
    top = f"lib/modules/{version}"
    modules = members(inner)
    dep = inner.extractfile(f"{top}/modules.dep").read().decode()  # type: ignore[union-attr]
    alias = inner.extractfile(f"{top}/modules.alias").read().decode()  # type: ignore[union-attr]
    deps = {line.split(":")[0]: line.split(":")[1].split() for line in dep.splitlines()}
    names = {p.rsplit("/", 1)[1].removesuffix(".ko").replace("-", "_") for p in deps}
    wanted = {"virtio_net", "virtio_blk", "virtio_pci", "9pnet_virtio", "overlay", "qemu_fw_cfg", "ext4", "isofs"}
    wanted |= {"squashfs", "vfat", "fuse", "virtiofs", "e1000", "ahci", "sr_mod", "button", "evdev", "virtio_rng"}
    assert wanted <= names, wanted - names
    for path, needs in deps.items():
        assert f"{top}/{path}" in modules
        assert set(needs) <= set(deps), f"{path} needs a module that is not in the image"
    assert all(name.startswith(top + "/") or top.startswith(name) for name in modules)
    assert "bluetooth" not in dep and "nouveau" not in dep and "kvm" not in names
    assert " virtio_net\n" in alias  # regenerated for the subset, so modprobe finds drivers by modalias
    assert len(deps) < 150


def test_init_image_has_busybox_links_and_the_init_scripts(built: tuple[Store, list[str]]) -> None:
    store, _ = built
    with layer_tar(store, "lkctl.local/init") as tf:
        files = members(tf)
        inittab = tf.extractfile("etc/inittab").read()  # type: ignore[union-attr]
    assert files["init"].isfile() and files["init"].mode == 0o755
    assert files["bin/busybox"].isfile() and files["bin/busybox"].mode == 0o755
    for applet in ("bin/sh", "sbin/init", "usr/bin/awk", "sbin/modprobe", "sbin/udhcpc", "sbin/acpid", "sbin/poweroff"):
        assert files[applet].issym() and files[applet].linkname == "/bin/busybox", applet
    for script in ("usr/lib/lkctl/rc.init", "usr/lib/lkctl/rc.shutdown", "usr/lib/lkctl/container",
                   "etc/init.d/010-onboot", "etc/init.d/020-services", "etc/acpi/PWRF/00000080"):  # fmt: skip
        assert files[script].mode == 0o755, script
    assert files["usr/lib/lkctl/json.awk"].mode == 0o644
    assert files["root"].isdir() and files["root"].mode == 0o700
    assert files["etc/mtab"].linkname == "/proc/mounts"
    assert b"::sysinit:/usr/lib/lkctl/rc.init" in inittab
    assert store.resolve("lkctl.local/init").config["config"]["Cmd"] == ["/init"]


def test_sshd_image_has_dropbear_with_its_libraries_and_a_linuxkit_label(built: tuple[Store, list[str]]) -> None:
    store, _ = built
    image = store.resolve("lkctl.local/sshd")
    with layer_tar(store, "lkctl.local/sshd") as tf:
        files = members(tf)
        passwd = tf.extractfile("etc/passwd").read().decode()  # type: ignore[union-attr]
    for program in ("usr/sbin/dropbear", "usr/bin/dropbearconvert", "usr/sbin/lkctl-sshd", "bin/busybox"):
        assert files[program].isfile() and files[program].mode == 0o755, program
    libs = {Path(n).name for n in files if ".so" in n}
    assert {"libc.so.6", "libtomcrypt.so.1", "ld-linux-x86-64.so.2"} <= libs
    # root's login shell runs commands in the VM's root filesystem (bind-mounted at /hostroot)
    assert "root:x:0:0:root:/root:/usr/sbin/lkctl-vmshell" in passwd.splitlines()
    assert files["usr/sbin/lkctl-vmshell"].mode == 0o755
    assert files["etc/shadow"].mode == 0o600
    assert files["root/.ssh/authorized_keys"].linkname == "/hostroot/run/config/ssh/authorized_keys"
    assert image.config["config"]["Cmd"] == ["/usr/sbin/lkctl-sshd"]
    label = json.loads(image.labels["org.mobyproject.config"])
    assert label["capabilities"] == ["all"] and label["pid"] == "host" and label["net"] == "host"
    # the VM's /run/config (keys, env) is read through /hostroot: the service binds only what it needs
    assert label["binds"] == ["/:/hostroot:rslave", "/dev:/dev"]


def test_missing_depmod_falls_back_to_filtering_the_host_index_with_the_same_result(
    built: tuple[Store, list[str]],
) -> None:
    store, _ = built
    with layer_tar(store, "lkctl.local/kernel") as tf:
        inner = tarfile.open(fileobj=io.BytesIO(tf.extractfile("kernel.tar").read()))  # type: ignore[union-attr]  # noqa: SIM115
        dep_name = next(n for n in inner.getnames() if n.endswith("/modules.dep"))
        made = inner.extractfile(dep_name).read().decode()  # type: ignore[union-attr]
    host = Path("/") / dep_name
    keep = {line.split(":")[0] for line in made.splitlines()}
    filtered = filter_module_index("dep", host.read_text(), keep)

    def parsed(text: str) -> dict[str, set[str]]:  # depmod may order a module's dependencies differently
        return {line.split(":")[0]: set(line.split(":")[1].split()) for line in text.splitlines()}

    assert parsed(filtered) == parsed(made)


def test_select_modules_closes_over_dependencies_soft_dependencies_and_aliases() -> None:
    dep = "kernel/a.ko: kernel/b.ko kernel/c.ko\nkernel/b.ko: kernel/c.ko\nkernel/c.ko:\nkernel/d-x.ko:\nkernel/e.ko:\n"
    alias = "alias crypto-e e\nalias pci:v*d* a\n"
    soft = "softdep a pre: crypto-e post: d_x\n"
    chosen, missing = select_modules(["a", "nope"], dep, alias, soft)
    assert chosen == ["kernel/a.ko", "kernel/b.ko", "kernel/c.ko", "kernel/d-x.ko", "kernel/e.ko"]
    assert missing == ["nope"]
    assert select_modules(["d_x"], dep) == (["kernel/d-x.ko"], [])


def test_ensure_base_image_knows_only_lkctls_names(built: tuple[Store, list[str]]) -> None:
    store, _ = built
    assert is_base_image("lkctl.local/init:latest") and not is_base_image("linuxkit/init:v1.0.0")
    with pytest.raises(ImageError, match="not one of lkctl's base images"):
        ensure_base_image("docker.io/linuxkit/init:v1.0.0", store)
    with pytest.raises(ImageError, match=r"lkctl\.local/init:latest"):
        ensure_base_image("lkctl.local/init:no-such-tag", store)


@pytest.fixture
def recipe_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of images/ that lkctl reads instead of the repository's, for tests that edit recipes."""
    images = tmp_path / "images"
    shutil.copytree(REPO / "images", images, symlinks=True)
    real = paths.resource_dir
    monkeypatch.setattr(paths, "resource_dir", lambda name: images if name == "images" else real(name))
    return images


def test_changing_a_recipe_file_rebuilds_only_that_image(recipe_copy: Path, tmp_path: Path) -> None:
    store = Store(tmp_path / "oci")
    build_all(store)
    before = {repo: store.lookup(repo) for repo in BASE_IMAGES.values()}
    rc = recipe_copy / "init" / "rootfs" / "usr" / "lib" / "lkctl" / "rc.init"
    rc.write_text(rc.read_text() + "\n# changed\n")
    assert build_all(store) == ["lkctl.local/init"]
    assert store.lookup("lkctl.local/init") != before["lkctl.local/init"]
    assert store.lookup("lkctl.local/sshd") == before["lkctl.local/sshd"]


def test_a_changed_host_file_makes_the_image_stale(recipe_copy: Path, tmp_path: Path) -> None:
    fake = tmp_path / "fake-host-file"
    fake.write_text("one")
    recipe = recipe_copy / "init" / "recipe.yml"
    recipe.write_text(recipe.read_text().replace("steps:\n", f"steps:\n  - file: {{dest: etc/fake, host: {fake}}}\n"))
    store = Store(tmp_path / "oci")
    assert ensure_base_image("lkctl.local/init", store) is True
    assert ensure_base_image("lkctl.local/init", store) is False
    fake.write_text("two, longer")
    assert ensure_base_image("lkctl.local/init", store) is True
    with layer_tar(store, "lkctl.local/init") as tf:
        assert tf.extractfile("etc/fake").read() == b"two, longer"  # type: ignore[union-attr]


def test_a_missing_host_package_names_the_apt_get_install_to_run(recipe_copy: Path, tmp_path: Path) -> None:
    recipe = recipe_copy / "sshd" / "recipe.yml"
    recipe.write_text(recipe.read_text().replace("host: /usr/sbin/dropbear,", "host: /nonexistent/sbin/dropbear,"))
    with pytest.raises(LkError, match=r"apt-get install dropbear-bin"):
        ensure_base_image("lkctl.local/sshd", Store(tmp_path / "oci"))


def test_the_newest_kernel_is_chosen_when_the_running_one_is_not_installed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    boot, modules = tmp_path / "boot", tmp_path / "modules"
    for version in ("5.10.0-9-amd64", "6.1.0-10-amd64", "6.1.0-9-amd64", "7.0-no-modules"):
        boot.mkdir(exist_ok=True)
        (boot / f"vmlinuz-{version}").write_bytes(b"k")
        if version != "7.0-no-modules":
            (modules / version).mkdir(parents=True)
            (modules / version / "modules.dep").write_text("")
    monkeypatch.setattr(os, "uname", lambda: os.uname_result(("Linux", "h", "6.18-not-here", "#1", "x86_64")))
    assert kernel_version("auto", boot=boot, modules=modules) == "6.1.0-10-amd64"
    assert kernel_version("5.10.0-9-amd64", boot=boot, modules=modules) == "5.10.0-9-amd64"
    with pytest.raises(LkError, match="not installed"):
        kernel_version("7.0-no-modules", boot=boot, modules=modules)


def test_scripts_stay_executable_when_the_checkout_lost_exec_bits(recipe_copy: Path, tmp_path: Path) -> None:
    for path in (recipe_copy / "init").rglob("*"):
        if path.is_file():
            path.chmod(0o644)
    store = Store(tmp_path / "oci")
    ensure_base_image("lkctl.local/init", store)
    with layer_tar(store, "lkctl.local/init") as tf:
        files = members(tf)
    assert files["init"].mode == 0o755
    assert files["usr/lib/lkctl/container"].mode == 0o755
    assert files["etc/inittab"].mode == 0o644

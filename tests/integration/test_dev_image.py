"""Building the dev image for real from this machine's packages: mke2fs, e2fsck, qemu-img, debugfs.

The root disk is cached under the session's shared cache (by fingerprint), so CI builds it once per machine.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from lkctl.dev.image import DevImage, dev_image_update, install_dev_image, installed_dev_image
from lkctl.dev.rootdisk import build_root_disk, parse_disk_recipe
from lkctl.errors import LkError

pytestmark = pytest.mark.skipif(shutil.which("mke2fs") is None, reason="e2fsprogs is not installed")


@pytest.fixture
def dev_image(monkeypatch: pytest.MonkeyPatch, shared_cache: Path) -> DevImage:
    monkeypatch.setenv("LKCTL_CACHE_DIR", str(shared_cache))
    return install_dev_image(source="local")


def _raw(image: DevImage, tmp_path: Path) -> Path:
    raw = tmp_path / "root.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(image.path), str(raw)], check=True)
    return raw


def _debugfs(raw: Path, command: str) -> str:
    return subprocess.run(["debugfs", "-R", command, str(raw)], capture_output=True, text=True, check=True).stdout


def test_dev_image_holds_every_toolchain_in_a_clean_ext4_root(dev_image: DevImage, tmp_path: Path) -> None:
    info = subprocess.run(["qemu-img", "info", "--output=json", str(dev_image.path)], capture_output=True,
                          text=True, check=True)  # fmt: skip
    assert json.loads(info.stdout)["format"] == "qcow2"
    assert dev_image.size == dev_image.path.stat().st_blocks * 512 > 300 << 20
    assert not dev_image.path.stat().st_mode & 0o222  # a base image: nothing writes it
    raw = _raw(dev_image, tmp_path)
    fsck = subprocess.run(["e2fsck", "-fn", str(raw)], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    super_block = subprocess.run(["dumpe2fs", "-h", str(raw)], capture_output=True, text=True).stdout
    assert "Filesystem volume name:   lkctl-root" in super_block and "has_journal" in super_block
    for path in ("/usr/bin/python3", "/usr/bin/node", "/usr/bin/npm", "/usr/bin/php", "/usr/bin/composer",
                 "/usr/bin/go", "/usr/bin/pytest", "/usr/bin/git", "/usr/bin/make", "/usr/bin/curl",
                 "/usr/bin/vim.tiny", "/usr/bin/bash", "/usr/lib/python3.11/venv/__init__.py",
                 "/usr/lib/python3/dist-packages/pip/__init__.py"):  # fmt: skip
        assert "Inode:" in _debugfs(raw, f"stat {path}"), f"{path} is missing from the dev image"
    assert "Type: symlink" in _debugfs(raw, "stat /bin")  # merged /usr, as the host
    root_dir = _debugfs(raw, "stat /root")
    assert "Mode:  0700" in root_dir and "User:     0   Group:     0" in root_dir
    assert "Mode:  01777" in _debugfs(raw, "stat /tmp")
    assert _debugfs(raw, "cat /etc/passwd").startswith("root:x:0:0:root:/root:/bin/bash\n")
    assert "Mode:  0600" in _debugfs(raw, "stat /etc/shadow")
    conf_d = next(Path("/etc/php").glob("*/cli/conf.d"))  # phpenmod's links, which no package lists
    assert "20-mbstring.ini" in _debugfs(raw, f"ls {conf_d}")


def test_a_second_install_is_a_no_op_and_leaves_no_temporary_files(dev_image: DevImage) -> None:
    start = time.monotonic()
    again = install_dev_image(source="local")
    assert again == dev_image == installed_dev_image()
    assert time.monotonic() - start < 60  # fingerprints and the cached boot parts, no disk build
    versions = dev_image.path.parent.parent
    assert [p.name for p in versions.iterdir()] == [dev_image.path.parent.name]
    assert dev_image_update(check=True) == (False, f"lkctl-dev {dev_image.version} is up to date with this "
                                                   "machine's packages")  # fmt: skip


def test_a_failed_build_leaves_nothing_at_the_final_path(tmp_path: Path) -> None:
    recipe = parse_disk_recipe("packages: {names: [bash, no-such-package-here]}\n", "broken.yml")
    out = tmp_path / "out" / "root.qcow2"
    with pytest.raises(LkError, match="no-such-package-here"):
        build_root_disk(recipe, out, "0" * 64, names=["bash", "no-such-package-here"])
    assert not out.exists() and list(out.parent.iterdir()) == []


def test_a_small_root_disk_builds_checks_clean_and_belongs_to_root(tmp_path: Path) -> None:
    recipe = parse_disk_recipe(
        "packages: {names: [base-files]}\nfiles: {etc/motd: hello}\ndirs: [app]\nfree: 16M\n", "small.yml"
    )
    from lkctl.debpackages import installed_packages
    from lkctl.dev.rootdisk import chosen_packages, disk_fingerprint

    packages = installed_packages()
    disk = build_root_disk(recipe, tmp_path / "small.qcow2", disk_fingerprint(recipe, packages),
                           names=chosen_packages(recipe, packages))  # fmt: skip
    assert disk.path.is_file() and disk.entries > 10 and disk.seconds > 0
    raw = tmp_path / "small.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(disk.path), str(raw)], check=True)
    assert subprocess.run(["e2fsck", "-fn", str(raw)], capture_output=True).returncode == 0
    assert _debugfs(raw, "cat /etc/motd") == "hello"
    assert "User:     0   Group:     0" in _debugfs(raw, "stat /etc/motd")
    assert "Type: directory" in _debugfs(raw, "stat /app")


def test_pulled_from_a_cdn_then_updated_when_a_newer_version_is_published(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shared_cache: Path
) -> None:
    from lkctl.debpackages import installed_packages
    from lkctl.dev.rootdisk import chosen_packages, disk_fingerprint
    from lkctl.settings import Settings, SourcesSettings
    from tests.integration._loopback import nginx, publish_cdn

    monkeypatch.setenv("LKCTL_CACHE_DIR", str(shared_cache))  # the kernel+initrd part is built here, cached
    recipe = parse_disk_recipe("packages: {names: [base-files]}\nfree: 8M\n", "tiny.yml")
    packages = installed_packages()
    disk = build_root_disk(recipe, tmp_path / "tiny.qcow2", disk_fingerprint(recipe, packages),
                           names=chosen_packages(recipe, packages))  # fmt: skip
    data = disk.path.read_bytes()
    with nginx(tmp_path / "www", tmp_path / "nginx") as server:
        publish_cdn(server.root, "lkctl-dev", "1.0.0", {"lkctl-dev-linux-amd64.qcow2": data})
        settings = Settings(sources=SourcesSettings(cdn_url=server.url, retries=1))
        first = install_dev_image(settings=settings)  # a source is configured: pulled, not built
        assert (first.source, first.version) == ("cdn", "1.0.0")
        assert first.path.read_bytes() == data and first.path.name == "lkctl-dev-root.qcow2"
        assert Path(f"{first.image}-kernel").is_file() and Path(f"{first.image}-initrd.img").is_file()
        downloads = len([line for line in server.log() if ".qcow2" in line])
        assert install_dev_image(settings=settings) == first  # same version: nothing fetched again
        assert len([line for line in server.log() if ".qcow2" in line]) == downloads
        assert dev_image_update(check=True, settings=settings) == (False, "lkctl-dev 1.0.0 from cdn is up to date")

        publish_cdn(server.root, "lkctl-dev", "1.1.0", {"lkctl-dev-linux-amd64.qcow2": data + b"\0" * 512})
        assert dev_image_update(check=True, settings=settings) == (
            True, "lkctl-dev 1.1.0 is available from cdn (installed: 1.0.0)"
        )  # fmt: skip
        assert installed_dev_image() == first  # --check changes nothing
        assert dev_image_update(settings=settings) == (True, "updated lkctl-dev: 1.0.0 -> 1.1.0 from cdn")
        second = installed_dev_image()
        assert second is not None and second.version == "1.1.0" and second.path.parent != first.path.parent
        assert not first.path.parent.exists()  # no VM was booted from 1.0.0: pruned


def test_a_source_without_the_image_is_an_error_when_asked_for_and_a_local_build_otherwise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shared_cache: Path
) -> None:
    from lkctl.settings import Settings, SourcesSettings
    from tests.integration._loopback import nginx

    monkeypatch.setenv("LKCTL_CACHE_DIR", str(shared_cache))
    with nginx(tmp_path / "www", tmp_path / "nginx") as server:
        settings = Settings(sources=SourcesSettings(cdn_url=server.url, retries=1))
        with pytest.raises(LkError, match="cannot pull lkctl-dev: cdn: "):
            install_dev_image(source="cdn", settings=settings)
        assert installed_dev_image() is None
        built = install_dev_image(settings=settings)  # configured, but it serves other images: built here
    assert built.source == "local" and installed_dev_image() == built


_AS_NOBODY = """
import sys
from pathlib import Path
from lkctl.debpackages import installed_packages
from lkctl.dev.rootdisk import build_root_disk, chosen_packages, disk_fingerprint, parse_disk_recipe
r = parse_disk_recipe("packages: {names: [base-files]}\\nfiles: {etc/motd: hi}\\nfree: 8M\\n", "t.yml")
p = installed_packages()
build_root_disk(r, Path(sys.argv[1]), disk_fingerprint(r, p), names=chosen_packages(r, p))
"""


def test_a_root_disk_is_built_without_root_and_its_files_still_belong_to_root(tmp_path: Path) -> None:
    from tests.conftest import REPO

    with tempfile.TemporaryDirectory(prefix="lkctl-nobody-") as work:  # pytest's tmp dirs are 0700 to others
        out = Path(work) / "disk.qcow2"
        if os.geteuid() == 0:  # build as `nobody`: mke2fs -d records that uid, debugfs gives the files to root
            if shutil.which("setpriv") is None:
                pytest.skip("setpriv (util-linux) is needed to build as another user")
            os.chmod(work, 0o777)
            argv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3", "-c", _AS_NOBODY]
            env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONPATH": str(REPO), "HOME": work}
            proc = subprocess.run([*argv, str(out)], env=env, capture_output=True, text=True, timeout=300)
            if proc.returncode != 0 and "No module named 'yaml'" in proc.stderr:
                pytest.skip("the system python3 has no yaml module (python3-yaml) to build as nobody")
            assert proc.returncode == 0, proc.stderr
            assert out.stat().st_uid == 65534
        else:
            subprocess.run([sys.executable, "-c", _AS_NOBODY, str(out)], check=True, timeout=300)
        raw = tmp_path / "disk.raw"
        subprocess.run(["qemu-img", "convert", "-O", "raw", str(out), str(raw)], check=True)
    assert subprocess.run(["e2fsck", "-fn", str(raw)], capture_output=True).returncode == 0
    for path in ("/", "/etc", "/etc/motd", "/usr/bin"):
        assert "User:     0   Group:     0" in _debugfs(raw, f"stat {path}"), path

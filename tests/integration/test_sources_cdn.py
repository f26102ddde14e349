"""The CDN source and the download engine against a real nginx (Range, ETag, redirects) on 127.0.0.1."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lkctl.errors import ImageError
from lkctl.http.client import RetryPolicy, download
from lkctl.images import resolve_image
from lkctl.installed import (
    check_update,
    list_installed,
    pull_image,
    read_installed,
    remove_installed,
    update_installed,
)
from lkctl.sources import Platform
from lkctl.sources.cdn import CdnSource
from tests.conftest import REPO
from tests.integration._loopback import Nginx, free_port, nginx, publish_cdn, sha256_file

pytestmark = pytest.mark.integration

AMD64 = Platform("linux", "amd64")
FILE = "core-dev-linux-amd64.qcow2"
NO_WAIT = RetryPolicy(attempts=3, sleep=lambda s: None)


def image_bytes(mib: int, seed: int = 0) -> bytes:
    """A recognisable qcow2-looking file (magic + deterministic filler) of `mib` MiB."""
    block = hashlib.sha256(str(seed).encode()).digest() * (1 << 15)  # 1 MiB
    return b"QFI\xfb" + (block * mib)[4:]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Nginx]:
    with nginx(tmp_path / "www", tmp_path / "nginx") as ng:
        yield ng


@pytest.fixture
def cdn() -> Iterator[Callable[..., CdnSource]]:
    """Make CdnSources that are closed (connections released) when the test ends."""
    made: list[CdnSource] = []

    def make(*urls: str) -> CdnSource:
        made.append(CdnSource(list(urls), retry=NO_WAIT))
        return made[-1]

    yield make
    for src in made:
        src.close()


def lkctl_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LKCTL_")}
    env.update({"LKCTL_HOME": str(home), "LKCTL_SOURCES_RETRIES": "3", **extra})
    return env


def lkctl(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(REPO / ".venv/bin/lkctl"), *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


def test_pull_installs_verified_image_with_manifest_and_vm_run_finds_it(
    cdn: Callable[..., CdnSource], server: Nginx, lkctl_home: Path
) -> None:
    data = image_bytes(3)
    publish_cdn(server.root, "core-dev", "1.0.0", {FILE: data, "core-dev-linux-arm64.qcow2": b"other"})

    result = pull_image("core-dev", sources=[cdn(server.url)], platform=AMD64)

    assert result.source == "cdn" and result.downloaded
    img = read_installed("core-dev")
    assert img is not None
    assert (img.version, img.source, img.size) == ("1.0.0", "cdn", len(data))
    assert img.sha256 == hashlib.sha256(data).hexdigest() == sha256_file(img.path / FILE)
    assert img.files == (FILE,) and img.platform == "linux/amd64" and img.downloaded_at.endswith("Z")
    resolved = resolve_image("core-dev")
    assert resolved.boot.path == img.path / FILE and resolved.boot.format.value == "qcow2"
    assert [i.name for i in list_installed()] == ["core-dev"]


def test_pulling_the_installed_version_again_downloads_nothing(cdn: Callable[..., CdnSource], server: Nginx) -> None:
    publish_cdn(server.root, "core-dev", "1.0.0", {FILE: image_bytes(1)})
    src = cdn(server.url)
    pull_image("core-dev", sources=[src], platform=AMD64)
    again = pull_image("core-dev", sources=[src], platform=AMD64)
    assert not again.downloaded
    assert sum(f"/{FILE} 200" in line for line in server.log()) == 1


def test_wrong_checksum_leaves_nothing_at_the_final_path_and_nothing_installed(
    cdn: Callable[..., CdnSource], server: Nginx, lkctl_home: Path
) -> None:
    publish_cdn(server.root, "core-dev", "1.0.0", {FILE: image_bytes(2)}, sums={FILE: "0" * 64})

    with pytest.raises(ImageError, match="sha256"):
        pull_image("core-dev", sources=[cdn(server.url)], platform=AMD64)

    assert read_installed("core-dev") is None
    images = lkctl_home / "data" / "images"
    leftovers = [p.name for p in images.rglob("*") if p.is_file() and not p.name.endswith(".lock")]
    assert leftovers == []  # no final file, no .part, no manifest
    with pytest.raises(ImageError, match="unknown image"):
        resolve_image("core-dev")


def test_download_killed_half_way_resumes_with_range_and_verifies(
    cdn: Callable[..., CdnSource], server: Nginx, lkctl_home: Path
) -> None:
    data = image_bytes(4)
    publish_cdn(server.root, "core-dev", "2.0.0", {FILE: data})
    env = lkctl_env(lkctl_home, LKCTL_SOURCES_CDN_URL=f"{server.url}/slow")  # the first GET crawls at 512 KiB/s
    part = lkctl_home / "data/images/.downloads/core-dev/cdn-2.0.0" / f"{FILE}.part"

    proc = subprocess.Popen(
        [str(REPO / ".venv/bin/lkctl"), "image.pull", "core-dev", "--quiet"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not (part.exists() and part.stat().st_size >= 1 << 20):
            assert proc.poll() is None, "the pull ended before it could be interrupted"
            assert time.monotonic() < deadline, "the download never got going"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # a crash, not a polite interrupt
        proc.wait()
    kept = part.stat().st_size
    assert 0 < kept < len(data)
    assert read_installed("core-dev") is None

    done = lkctl("image.pull", "core-dev", "--quiet", env=env)

    assert done.returncode == 0, done.stderr
    img = read_installed("core-dev")
    assert img is not None and img.sha256 == hashlib.sha256(data).hexdigest()
    assert sha256_file(img.path / FILE) == img.sha256
    resumed = [line for line in server.log() if f"/{FILE} 206 " in line]
    assert len(resumed) == 1 and f"range=bytes={kept}-" in resumed[0], server.log()
    assert f"sent={len(data) - kept} " in resumed[0]  # only the missing bytes crossed the wire
    assert not part.exists()


def test_stale_part_from_another_file_is_discarded_and_fetched_again_from_zero(server: Nginx, tmp_path: Path) -> None:
    data = image_bytes(1, seed=7)
    (server.root / "f.img").write_bytes(data)
    dest = tmp_path / "out" / "f.img"
    dest.parent.mkdir()
    # a .part of the same length prefix but other bytes, recorded as belonging to this sha256 (e.g. a changed file)
    (dest.parent / "f.img.part").write_bytes(b"x" * 1000)
    meta = {"url": "", "validator": "", "sha256": hashlib.sha256(data).hexdigest(), "total": len(data)}
    (dest.parent / "f.img.part.json").write_text(json.dumps(meta))

    got = download([f"{server.url}/f.img"], dest, sha256=hashlib.sha256(data).hexdigest(), retry=NO_WAIT)

    assert dest.read_bytes() == data and got.resumed_from == 0
    statuses = [line.split()[2] for line in server.log() if "/f.img " in line]
    assert statuses == ["206", "200"]  # resume tried, checksum failed, one clean download


def test_mirrors_are_tried_in_order_and_redirects_followed(
    cdn: Callable[..., CdnSource], server: Nginx, tmp_path: Path
) -> None:
    data = image_bytes(1)
    publish_cdn(server.root, "core-dev", "1.0.0", {FILE: data})
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    src = cdn(dead, f"{server.url}/moved")  # /moved/* answers 302 to /*

    dl = src.resolve("core-dev", None, AMD64)
    got = src.download(dl, tmp_path / "dl")

    assert dl.urls[0].startswith(dead) and got.url.startswith(f"{server.url}/moved/")
    assert got.path.read_bytes() == data
    assert any(f"/moved/core-dev/1.0.0/{FILE} 302" in line for line in server.log())


def test_unknown_image_and_platform_are_reported_as_not_found(cdn: Callable[..., CdnSource], server: Nginx) -> None:
    publish_cdn(server.root, "core-dev", "1.0.0", {"core-dev-linux-arm64.qcow2": b"x"})
    src = cdn(server.url)
    with pytest.raises(ImageError, match="no file for linux/amd64"):
        pull_image("core-dev", sources=[src], platform=AMD64)
    with pytest.raises(ImageError, match="not found"):
        pull_image("nosuch", sources=[src], platform=AMD64)


def test_two_processes_pulling_the_same_file_download_it_once(server: Nginx, tmp_path: Path) -> None:
    data = image_bytes(1)
    (server.root / "shared.img").write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    url, dest = server.url + "/slow/shared.img", str(tmp_path / "shared.img")
    code = (
        "from pathlib import Path; from lkctl.http.client import download; "
        f"r = download([{url!r}], Path({dest!r}), sha256={digest!r}); print(r.url or 'reused')"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=REPO) for _ in range(2)
    ]
    outs = sorted(p.communicate(timeout=60)[0].strip() for p in procs)

    assert all(p.returncode == 0 for p in procs)
    assert outs[1] == "reused" and outs[0].endswith("/slow/shared.img")
    assert sum("/slow/shared.img 200" in line for line in server.log()) == 1
    assert (tmp_path / "shared.img").read_bytes() == data


def test_update_check_compares_versions_not_strings(cdn: Callable[..., CdnSource], server: Nginx) -> None:
    publish_cdn(server.root, "core-dev", "1.9.0", {FILE: image_bytes(1)})
    src = cdn(server.url)
    pull_image("core-dev", sources=[src], platform=AMD64)
    assert not check_update("core-dev", sources=[src], platform=AMD64).newer

    publish_cdn(server.root, "core-dev", "1.10.0", {FILE: image_bytes(1, seed=2)})  # "1.10.0" < "1.9.0" as strings
    check = check_update("core-dev", sources=[src], platform=AMD64)

    assert (check.current, check.latest, check.newer, check.comparable) == ("1.9.0", "1.10.0", True, True)


def test_update_installed_pulls_what_is_newer_and_goes_on_past_an_image_it_cannot_check(
    cdn: Callable[..., CdnSource], server: Nginx
) -> None:
    publish_cdn(server.root, "core-dev", "1.9.0", {FILE: image_bytes(1)})
    publish_cdn(server.root, "gone", "1.0.0", {"gone-linux-amd64.qcow2": image_bytes(1, seed=4)})
    src = cdn(server.url)
    pull_image("core-dev", sources=[src], platform=AMD64)
    pull_image("gone", sources=[src], platform=AMD64)
    publish_cdn(server.root, "core-dev", "1.10.0", {FILE: image_bytes(1, seed=5)})
    shutil.rmtree(server.root / "gone")  # the source no longer has it: it cannot be checked
    heard: list[str] = []

    with pytest.raises(ImageError, match="could not check gone"):
        update_installed(
            sources=[src], platform=AMD64,
            on_check=lambda c: heard.append(f"check {c.name} {c.latest}"),
            on_pulled=lambda r: heard.append(f"pulled {r.image.name} {r.image.version}"),
            on_skip=lambda n, e: heard.append(f"skip {n}"),
        )  # fmt: skip

    assert heard == ["check core-dev 1.10.0", "pulled core-dev 1.10.0", "skip gone"]
    assert read_installed("core-dev").version == "1.10.0"  # type: ignore[union-attr]
    with pytest.raises(ImageError, match="gone"):  # named, its error is the answer
        update_installed("gone", sources=[src], platform=AMD64)
    assert update_installed("core-dev", sources=[src], platform=AMD64, check_only=True)[0][1] is None


def test_image_tasks_pull_ls_update_rm_through_the_cli(
    cdn: Callable[..., CdnSource], server: Nginx, lkctl_home: Path
) -> None:
    publish_cdn(server.root, "core-dev", "1.9.0", {FILE: image_bytes(1)})
    env = lkctl_env(lkctl_home, LKCTL_SOURCES_CDN_URL=server.url, CI="true")

    pulled = lkctl("image.pull", "core-dev:1.9.0", env=env)
    assert pulled.returncode == 0, pulled.stderr
    assert "pulled core-dev 1.9.0 from cdn" in pulled.stderr
    assert pulled.stdout.strip() == str(lkctl_home / "data/images/core-dev")

    listed = json.loads(lkctl("image.ls", "--json", env=env).stdout)
    row = next(r for r in listed if r["name"] == "core-dev")
    assert (row["kind"], row["detail"], row["size"]) == ("installed", "1.9.0 from cdn, 1.00 MiB", 1 << 20)

    publish_cdn(server.root, "core-dev", "1.10.0", {FILE: image_bytes(1, seed=3)})
    check = lkctl("image.update", "--check", env=env)
    assert check.returncode == 0, check.stderr
    assert "core-dev: 1.9.0 -> 1.10.0 (newer, from cdn)" in check.stdout
    assert read_installed("core-dev").version == "1.9.0"  # type: ignore[union-attr]  # --check changes nothing

    updated = lkctl("image.update", "--name", "core-dev", env=env)
    assert updated.returncode == 0, updated.stderr
    assert read_installed("core-dev").version == "1.10.0"  # type: ignore[union-attr]
    assert "is up to date" in lkctl("image.update", "--check", env=env).stdout

    removed = lkctl("image.rm", "core-dev", env=env)
    assert removed.returncode == 0, removed.stderr
    assert read_installed("core-dev") is None
    missing = lkctl("image.rm", "core-dev", env=env)
    assert missing.returncode == 1 and "not installed" in missing.stderr
    with pytest.raises(ImageError, match="not installed"):
        remove_installed("core-dev")


def test_pull_without_any_configured_source_says_what_to_set(lkctl_home: Path) -> None:
    r = lkctl("image.pull", "core-dev", env=lkctl_env(lkctl_home))
    assert r.returncode == 2
    assert "LKCTL_SOURCES_CDN_URL" in r.stderr and "LKCTL_SOURCES_OCI_REPOSITORY" in r.stderr


def test_two_concurrent_pulls_of_one_image_download_it_once(server: Nginx, lkctl_home: Path) -> None:
    publish_cdn(server.root, "core-dev", "1.0.0", {FILE: image_bytes(1)})
    env = lkctl_env(lkctl_home, LKCTL_SOURCES_CDN_URL=f"{server.url}/slow", CI="true")
    argv = [str(REPO / ".venv/bin/lkctl"), "image.pull", "core-dev"]
    procs = [
        subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True) for _ in "ab"
    ]
    errs = [p.communicate(timeout=60)[1] for p in procs]

    assert [p.returncode for p in procs] == [0, 0], errs
    assert sorted("already installed" in e for e in errs) == [False, True], errs
    assert sum(f"/{FILE} 200" in line for line in server.log()) == 1


def test_a_file_name_from_the_server_that_is_a_path_is_refused(
    cdn: Callable[..., CdnSource], server: Nginx, lkctl_home: Path
) -> None:
    escape = "core-dev-linux-amd64.qcow2/../../../../../../escaped.txt"  # SHA256SUMS chooses the file name
    publish_cdn(server.root, "core-dev", "1.0.0", {FILE: image_bytes(1)})
    vdir = server.root / "core-dev" / "1.0.0"
    (vdir / "SHA256SUMS").write_text(f"{hashlib.sha256(b'x').hexdigest()}  {escape}\n")
    with pytest.raises(ImageError, match=r"refusing core-dev's file name .* not a plain file name"):
        pull_image("core-dev", sources=[cdn(server.url)], platform=AMD64)
    assert not list(lkctl_home.parent.rglob("escaped.txt")) and read_installed("core-dev") is None


def test_a_version_from_the_server_is_never_a_path_under_lkctls_data(
    cdn: Callable[..., CdnSource], server: Nginx, lkctl_home: Path
) -> None:
    # index.json names the version, which once named the staging dir lkctl removes after an install: this one led
    # it to lkctl's home (the URL normalises to /victim/..., where the server has the files)
    version = "x/../../../../../victim"
    precious = lkctl_home / "victim" / "precious.txt"
    precious.parent.mkdir(parents=True)
    precious.write_text("keep me\n")
    publish_cdn(server.root, "victim", "", {FILE: image_bytes(1)})
    (server.root / "core-dev").mkdir()
    (server.root / "core-dev" / "index.json").write_text(json.dumps({"latest": version}))
    result = pull_image("core-dev", sources=[cdn(server.url)], platform=AMD64)
    assert result.downloaded and precious.read_text() == "keep me\n"
    img = read_installed("core-dev")
    assert img is not None and img.version == version and img.path == lkctl_home / "data" / "images" / "core-dev"


def test_a_version_with_control_characters_is_refused(cdn: Callable[..., CdnSource], server: Nginx) -> None:
    publish_cdn(server.root, "core-dev", "1.0.0", {FILE: image_bytes(1)})
    (server.root / "core-dev" / "index.json").write_text(json.dumps({"latest": "1.0.0\x1b]0;pwned\x07"}))
    with pytest.raises(ImageError, match="refusing core-dev's version"):
        pull_image("core-dev", sources=[cdn(server.url)], platform=AMD64)


@pytest.mark.parametrize(
    ("setting", "said"),
    [
        ({"LKCTL_SOURCES_TIMEOUT": "-1"}, "LKCTL_SOURCES_TIMEOUT: lkctl.sources.timeout must be a number of seconds"),
        ({"LKCTL_SOURCES_TIMEOUT": "0"}, "lkctl.sources.timeout must be a number of seconds above 0, got 0"),
        ({"LKCTL_SOURCES_TIMEOUT": "7200"}, "lkctl.sources.timeout 7200: give seconds from more than 0 up to 3600"),
        ({"LKCTL_SOURCES_CDN_URL": "cdn.example.org/images"}, "'cdn.example.org/images' is not an http:// or"),
        ({"LKCTL_SOURCES_CDN_URL": "ftp://x/y"}, "lkctl.sources.cdn_url: 'ftp://x/y' is not an http:// or https://"),
    ],
)
def test_source_settings_that_cannot_work_are_one_line(lkctl_home: Path, setting: dict[str, str], said: str) -> None:
    env = lkctl_env(lkctl_home, **{"LKCTL_SOURCES_CDN_URL": "http://127.0.0.1:9", **setting})
    done = lkctl("image.pull", "core-dev", env=env)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.startswith("lkctl: ") and said in done.stderr and len(done.stderr.splitlines()) == 1


def test_a_sources_error_names_its_source_once(lkctl_home: Path) -> None:
    port = free_port()  # nothing listens there
    done = lkctl("image.pull", "core-dev", env=lkctl_env(lkctl_home, LKCTL_SOURCES_CDN_URL=f"http://127.0.0.1:{port}",
                                                         LKCTL_SOURCES_RETRIES="1"))  # fmt: skip
    assert done.returncode == 1 and "for linux/amd64: cdn: cannot fetch core-dev/index.json" in done.stderr
    assert "cdn: cdn:" not in done.stderr

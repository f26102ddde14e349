"""Every output format of lkctl's builder boots under QEMU (TCG) to `lkctl-init: ready`.

The image is the `minimal` one (lkctl's kernel, init and sshd base images), taken the long way round: the base
images are copied by skopeo into a docker-registry on loopback, and the build pulls them from there into an empty
store. One build makes all eight formats; the boots run two at a time (one QEMU per core) with the flags each
format needs (BIOS or OVMF, CD or disk), started here rather than through lkctl's runtime.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from lkctl import paths
from lkctl.baseimages import ensure_base_image
from lkctl.build import FORMATS, BuildResult, Spec, build_image, parse_spec
from lkctl.oci.layout import Store
from tests.conftest import IN_CI, require_qemu
from tests.integration.test_registry_images import docker_registry, skopeo

pytestmark = pytest.mark.boot

READY = "lkctl-init: ready"
OVMF_CODE, OVMF_VARS = Path("/usr/share/OVMF/OVMF_CODE.fd"), Path("/usr/share/OVMF/OVMF_VARS.fd")
EFI = {"iso-efi", "raw-efi"}
DISK = {"raw-bios": "raw", "raw-efi": "raw", "qcow2-bios": "qcow2", "vmdk": "vmdk"}


@dataclass
class Boot:
    console: str
    seconds: float
    argv: list[str]


def _need(*things: str) -> None:
    missing = [t for t in things if not (Path(t).exists() if t.startswith("/") else shutil.which(t))]
    if missing:
        msg = f"missing {', '.join(missing)} (./bootstrap installs them)"
        pytest.fail(msg) if IN_CI else pytest.skip(msg)


def _boot_files_from_tar(tar: Path, work: Path) -> list[str]:
    """The `tar` format booted the way a user would: its kernel, and the rest packed by GNU cpio as an initrd."""
    root = work / "root"
    root.mkdir(parents=True)
    with tarfile.open(tar) as tf:
        (work / "kernel").write_bytes(tf.extractfile("boot/kernel").read())  # type: ignore[union-attr]
        cmdline = tf.extractfile("boot/cmdline").read().decode()  # type: ignore[union-attr]
    subprocess.run(["tar", "-xf", tar, "-C", root, "--exclude=./boot", "--exclude=boot"], check=True)
    names = subprocess.run(["find", "."], cwd=root, capture_output=True, check=True).stdout
    newc = subprocess.run(["cpio", "-o", "-H", "newc", "-R", "0:0", "--quiet"], cwd=root, input=names,
                          capture_output=True, check=True).stdout  # fmt: skip
    (work / "initrd.img").write_bytes(
        subprocess.run(["gzip", "-1"], input=newc, capture_output=True, check=True).stdout
    )
    return ["-kernel", str(work / "kernel"), "-initrd", str(work / "initrd.img"), "-append", cmdline]


def qemu_args(fmt: str, result: BuildResult, work: Path) -> list[str]:
    files = result.outputs[fmt]
    args = []
    if fmt in EFI:
        shutil.copyfile(OVMF_VARS, work / "vars.fd")
        args += ["-drive", f"if=pflash,format=raw,readonly=on,file={OVMF_CODE}",
                 "-drive", f"if=pflash,format=raw,file={work / 'vars.fd'}"]  # fmt: skip
    if fmt == "kernel+initrd":
        kernel, initrd, cmdline = files
        args += ["-kernel", str(kernel), "-initrd", str(initrd), "-append", cmdline.read_text()]
    elif fmt == "tar":
        args += _boot_files_from_tar(files[0], work)
    elif fmt.startswith("iso"):
        args += ["-cdrom", str(files[0]), "-boot", "d"]
    else:
        args += ["-drive", f"file={files[0]},format={DISK[fmt]},if=ide,snapshot=on"]
    return args


def boot(fmt: str, result: BuildResult, work: Path, timeout: float = 150) -> Boot:
    work.mkdir(parents=True, exist_ok=True)
    console = work / "console.log"
    argv = ["qemu-system-x86_64", "-accel", "tcg", "-machine", "q35", "-m", "512", "-nic", "none", "-display", "none",
            "-monitor", "none", "-no-reboot", "-serial", f"file:{console}", *qemu_args(fmt, result, work)]  # fmt: skip
    start = time.monotonic()
    qemu = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)  # fmt: skip
    text = ""
    try:
        while time.monotonic() - start < timeout:
            text = console.read_text(errors="replace") if console.exists() else ""
            if READY in text or qemu.poll() is not None:
                break
            time.sleep(0.2)
    finally:
        if qemu.poll() is None:
            os.killpg(qemu.pid, 9)
        qemu.wait()
        out = qemu.stdout.read().decode(errors="replace") if qemu.stdout else ""
        if qemu.stdout:
            qemu.stdout.close()
    return Boot(text + ("\n[qemu] " + out if out else ""), time.monotonic() - start, argv)


@dataclass
class Built:
    result: BuildResult
    work: Path
    spec: Spec
    store: Store
    cache: Path  # lkctl's cache when it was built: the build's stamp (what makes a rebuild instant) lives there


@pytest.fixture(scope="module")
def built(shared_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Built:
    require_qemu()
    _need("skopeo", "docker-registry", "xorriso", "mcopy", "mkfs.fat", "syslinux", "grub-mkimage", "qemu-img", "cpio",
          str(OVMF_CODE), "/usr/lib/ISOLINUX/isolinux.bin")  # fmt: skip
    base = Store(shared_cache / "oci")
    for name in ("kernel", "init", "sshd"):
        ensure_base_image(f"lkctl.local/{name}:latest", base)
    work = tmp_path_factory.mktemp("build-formats")
    with docker_registry(work / "registry") as reg:
        for name in ("kernel", "init", "sshd"):
            skopeo("copy", "--quiet", "--dest-tls-verify=false", f"oci:{base.root}:lkctl.local/{name}:latest",
                   f"docker://{reg.host}/lkctl/{name}:1")  # fmt: skip
        spec = parse_spec(
            f"kernel:\n  image: {reg.host}/lkctl/kernel:1\n  cmdline: console=ttyS0 quiet\n"
            f"init:\n  - {reg.host}/lkctl/init:1\n"
            f"services:\n  - name: sshd\n    image: {reg.host}/lkctl/sshd:1\n"
            "files:\n  - path: etc/lkctl-format-test\n    contents: every format\n",
            "minimal-from-registry.yml",
        )
        store = Store(work / "store").ensure()
        result = build_image(spec, name="minimal", out_dir=work / "out", store=store, formats=FORMATS)
    assert result.assembled == "all" and store.lookup(f"{reg.host}/lkctl/init:1") is not None
    return Built(result, work, spec, store, paths.cache_dir())


@pytest.fixture(scope="module")
def boots(built: Built, request: pytest.FixtureRequest) -> Iterator[dict[str, Future[Boot]]]:
    """Start the boots of every format this session will check, two at a time, as soon as the image exists."""
    result, work = built.result, built.work
    mine = [item for item in request.session.items if getattr(item, "module", None) is request.module]
    specs = [getattr(item, "callspec", None) for item in mine]
    wanted = [c.params["fmt"] for c in specs if c is not None and "fmt" in c.params]
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="boot") as pool:
        futures = {fmt: pool.submit(boot, fmt, result, work / f"vm-{fmt}") for fmt in dict.fromkeys(wanted)}
        yield futures
        for f in futures.values():
            f.cancel()


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_format_boots_to_ready(fmt: str, boots: dict[str, Future[Boot]]) -> None:
    result = boots[fmt].result()
    assert READY in result.console, f"{fmt}: no '{READY}' after {result.seconds:.0f}s\n" + result.console[-3000:]
    assert "lkctl-init: error" not in result.console, result.console[-3000:]


def test_an_unchanged_rebuild_of_every_format_is_instant(built: Built, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LKCTL_CACHE_DIR", str(built.cache))  # this test's own LKCTL_HOME is not the build's
    start = time.monotonic()
    again = build_image(built.spec, name="minimal", out_dir=built.work / "out", store=built.store, formats=FORMATS,
                        pull="never")  # fmt: skip
    assert again.cached and time.monotonic() - start < 1.0

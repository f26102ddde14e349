"""Bad input across tasks, through the real `lkctl` command: each case gets one line on stderr saying what is
wrong, a non-zero exit, no traceback, and leaves lkctl's state, cache and data, the output dir and the working
dir exactly as they were. No VM boots: every value is refused before anything starts."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from lkctl import paths
from lkctl.oci.layout import Store

LKCTL = str(Path(sys.executable).parent / "lkctl")
PROGRESS = "lkctl: resolving image "  # vm.run says what it is doing before a possibly slow build

# (arguments, a fragment the one-line message must contain); {d} is a scratch dir with fixtures (see below)
CASES: list[tuple[list[str], str]] = [
    # vm.run: every flag value
    (["vm.run", "--image=minimal", "--memory", "abc"], "--memory 'abc': expected a number"),
    (["vm.run", "--image=minimal", "--memory", "10TB"], "more than this machine"),
    (["vm.run", "--image=minimal", "--memory", "0"], "--memory '0': must be more than zero"),
    (["vm.run", "--image=minimal", "--memory=-1"], "--memory '-1'"),
    (["vm.run", "--image=minimal", "--memory", "1000K"], "whole megabytes"),
    (["vm.run", "--image=minimal", "--memory", "1.5X"], "--memory '1.5X'"),
    (["vm.run", "--image=minimal", "--cpus", "0"], "--cpus '0': must be from 1 to"),
    (["vm.run", "--image=minimal", "--cpus", "x"], "--cpus 'x': expected a whole number"),
    (["vm.run", "--image=minimal", "--cpus", "1000"], "--cpus '1000'"),
    (["vm.run", "--image=minimal", "--cpus", "1.5"], "--cpus '1.5'"),
    (["vm.run", "--image=minimal", "--ssh-port", "70000"], "--ssh-port '70000': must be from 1 to 65535"),
    (["vm.run", "--image=minimal", "--ssh-port=-5"], "--ssh-port '-5'"),
    (["vm.run", "--image=minimal", "--ssh-port", "ssh"], "--ssh-port 'ssh'"),
    (["vm.run", "--image=minimal", "--timeout=-1"], "--timeout '-1'"),
    (["vm.run", "--image=minimal", "--timeout", "soon"], "--timeout 'soon'"),
    (["vm.run", "--image=minimal", "--timeout", "inf"], "--timeout 'inf'"),
    (["vm.run", "--image=minimal", "--name", "a/b"], "--name 'a/b'"),
    (["vm.run", "--image=minimal", "--name", "a:b"], "--name 'a:b'"),
    (["vm.run", "--image=minimal", "--name", "a\nb"], "--name 'a\\nb'"),
    (["vm.run", "--image=minimal", "--name", "x" * 300], "1-63 letters"),
    (["vm.run", "--image=minimal", "--name", "x" * 64], "1-63 letters"),
    (["vm.run", "--image=minimal", "--name", "-web"], "starts with a letter or digit"),
    (["vm.run", "--image=minimal", "--name", ".web"], "starts with a letter or digit"),
    (["vm.run", "--image=minimal", "--name", "web vm"], "--name 'web vm'"),
    (["vm.run", "--image=minimal", "--name", "deadbeef"], "shape of a VM ID"),
    (["vm.run", "--image=minimal", "--volume", "{d}/share:/mnt:bogus"], "unknown mode 'bogus'"),
    (["vm.run", "--image=minimal", "--volume", "{d}/nothere:/mnt"], "is not a directory on this host"),
    (["vm.run", "--image=minimal", "--volume", "{d}/share:relative"], "must be absolute"),
    (["vm.run", "--image=minimal", "--volume", "{d}/share:/"], "must be absolute and not /"),
    (["vm.run", "--image=minimal", "--volume", "{d}/share:/a/../etc"], "may not contain '..'"),
    (["vm.run", "--image=minimal", "--volume", "justone"], "expected HOST:GUEST"),
    (["vm.run", "--image=minimal", "--port", "8080"], "--port 8080: expected HOST:GUEST"),
    (["vm.run", "--image=minimal", "-d", "--port"], "vm.run: --port needs a value"),  # not a run without it
    (["vm.run", "--image=minimal", "--volume", "--port", "80:80"], "vm.run: --volume needs a value"),
    (["vm.run", "--image=minimal", "--port", "abc:80"], "ports must be numbers"),
    (["vm.run", "--image=minimal", "--port", "70000:80"], "70000 is not a port number"),
    (["vm.run", "--image=minimal", "--port", "8080:80/sctp"], "protocol must be tcp or udp"),
    (["vm.run", "--image=minimal", "--port", "999.1.1.1:8080:80"], "is not an IP address"),
    (["vm.run", "--image=minimal", "--disk", "10"], "give a unit"),
    (["vm.run", "--image=minimal", "--disk", "100K"], "at least 1M"),
    (["vm.run", "--image=minimal", "--disk", "size=1G,format=vmdk"], "format must be qcow2 or raw"),
    (["vm.run", "--image=minimal", "--disk", "color=red"], "--disk color=red"),
    (["vm.run", "--image=minimal", "--disk", "0G"], "more than zero"),
    (["vm.run", "--image=minimal", "--var", "NOEQUALS"], "--var 'NOEQUALS': expected NAME=VALUE"),
    (["vm.run", "--image=minimal", "--template=dev"], "either --image or --template"),
    (["vm.run", "--image=minimal", "--hypervisor", "xen"], "unknown hypervisor 'xen'"),
    (["vm.run", "--image={d}/missing.yml"], "missing.yml does not exist"),
    (["vm.run", "--image=no-such-template"], "unknown image 'no-such-template'"),
    (["vm.run"], "no image given"),
    # vm.*: a VM that does not exist, and bad values checked before looking for one
    (["vm.stop", "nope"], "no VM matches 'nope'"),
    (["vm.rm", "nope"], "no VM matches 'nope'"),
    (["vm.rm", "--force", "nope"], "no VM matches 'nope'"),
    (["vm.inspect", "nope"], "no VM matches 'nope'"),
    (["vm.logs", "nope"], "no VM matches 'nope'"),
    (["vm.exec", "nope", "--", "true"], "no VM matches 'nope'"),
    (["vm.shell", "nope"], "no VM matches 'nope'"),
    (["vm.kill", "nope"], "no VM matches 'nope'"),
    (["vm.restart", "nope"], "no VM matches 'nope'"),
    (["vm.kill", "nope", "--signal", "BOGUS"], "unknown signal 'BOGUS'"),
    (["vm.stop", "nope", "--timeout=-1"], "--timeout '-1'"),
    (["vm.restart", "nope", "--timeout", "x"], "--timeout 'x'"),
    (["vm.exec", "nope"], "no command given"),
    (["vm.exec", "nope", "--env", "NOEQ", "--", "true"], "--env 'NOEQ': expected NAME=VALUE"),
    (["vm.cp", "{d}/a", "{d}/b"], "write the VM side as NAME:/path"),
    (["vm.cp", "nope:/etc/hostname", "{d}/b"], "no VM matches 'nope'"),
    (["vm.cp", "{d}/nothere", "nope:/tmp"], "no VM matches 'nope'"),
    # image.build: checked before base images are made or anything is written
    (["image.build", "minimal", "--arch", "sparc"], "--arch 'sparc': unknown architecture"),
    (["image.build", "minimal", "--format", "docker"], "unsupported output format docker"),
    (["image.build", "minimal", "--format", "tar,bogus"], "unsupported output format bogus"),
    (["image.build", "minimal", "--size", "0", "--format", "raw-bios"], "--size '0': must be more than zero"),
    (["image.build", "minimal", "--size", "abc", "--format", "raw-bios"], "--size 'abc'"),
    (["image.build", "minimal", "--pull", "sometimes"], "pull policy 'sometimes'"),
    (["image.build", "minimal", "--name", "a/b", "--format", "tar"], "invalid image name 'a/b'"),
    (["image.build", "minimal", "--var", "BAD"], "--var 'BAD': expected NAME=VALUE"),
    (["image.build", "no-such-template"], "neither a template nor a LinuxKit YAML file"),
    (["image.build", "{d}/missing.yml"], "neither a template nor a LinuxKit YAML file"),
    (["image.build", "{d}/bad.yml", "--out", "{d}/out"], "bad.yml"),
    (["image.build", "minimal", "--out", "{d}/notes.txt"], "notes.txt is not a directory"),
    (["image.build", "minimal", "--out", "{d}/notes.txt/sub/dir"], "notes.txt is not a directory"),
    # image.import: sniffed and bounded, one line
    (["image.import", "/dev/zero", "--ref", "x:1"], "not a regular file or directory"),
    (["image.import", "{d}/truncated.tgz", "--ref", "x:1"], "damaged or truncated archive"),
    (["image.import", "{d}/fifo", "--ref", "x:1"], "not a regular file or directory"),
    (["image.import", "{d}/layout-link"], "unreadable index.json"),
    (["image.import", "{d}/corrupt.tar.gz", "--ref", "x:1"], "zlib error"),
    (["image.import", "{d}/notes.txt", "--ref", "x:1"], "is not a tar archive"),
    (["image.import", "{d}/nothere"], "does not exist"),
    (["image.import", "{d}/share", "--ref", "BAD REF"], "invalid image reference 'BAD REF'"),
    (["image.import", "{d}/share", "--ref", "x:1", "--arch", "sparc"], "--arch 'sparc'"),
    (["image.import", "{d}/layout"], "unreadable index.json"),
    (["image.import", "{d}/share"], "--ref"),
    # image.* and template.*: unknown names
    (["image.rm", "nope"], "nope"),
    (["image.rm", "--oci", "BAD REF"], "invalid image reference 'BAD REF'"),
    (["image.export", "nope:1", "--out", "{d}/out.tar"], "nope"),
    (["image.export", "nope:1", "--format", "bogus", "--out", "{d}/out.tar"], "bogus"),
    (["template.show", "no-such-template"], "no-such-template"),
    (["template.render", "minimal", "--var", "X"], "--var 'X': expected NAME=VALUE"),
    (["template.render", "minimal", "--var"], "template.render: --var needs a value"),
    (["vm.ps", "--filter"], "vm.ps: --filter needs a value"),
    (["vm.logs", "-f", "web"], "lkctl: vm.logs: -f is lkctl's config file option (lkctl -f FILE TASK); follow with"),
    # the core options
    (["--list", "--list-depth", "x"], "lkctl: --list-depth takes a whole number"),
    (["--list", "nosuch"], "lkctl: no task collection 'nosuch' (collections: dev, image, template, vm)"),
    (["--help", "vm.pss"], "lkctl: no task 'vm.pss'; did you mean vm.ps"),
    (["--print-completion-script", "nosh"], "lkctl: no completion script for 'nosh': use bash, fish or zsh"),
    (["template.render", "no-such-template"], "no-such-template"),
]


def _snapshot(*roots: Path) -> dict[str, str]:
    """Every path under `roots` with its kind and, for files, a content hash; the VM records' summary index is a
    cache that reading the records may rewrite, not a change to them."""
    from lkctl.runtime.state import INDEX_FILE

    out: dict[str, str] = {}
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames:
                out[os.path.join(dirpath, name)] = "dir"
            for name in filenames:
                if name == INDEX_FILE:
                    continue
                p = Path(dirpath, name)
                mode = p.lstat().st_mode
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest() if stat.S_ISREG(mode) else oct(mode)
    return out


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("bad-input")
    (d / "share").mkdir()
    (d / "share" / "file").write_text("x")
    (d / "a").write_text("a")
    (d / "notes.txt").write_text("plain text, not an archive\n")
    (d / "bad.yml").write_text("kernel: [not, a, mapping]\n")
    (d / "out").mkdir()
    (d / "layout").mkdir()
    (d / "layout" / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (d / "layout" / "index.json").write_text("garbage")
    subprocess.run(["tar", "czf", str(d / "full.tgz"), "-C", str(d / "share"), "."], check=True)
    (d / "truncated.tgz").write_bytes((d / "full.tgz").read_bytes()[:40])
    data = bytearray((d / "full.tgz").read_bytes())
    data[20:60] = b"\xff" * 40  # a gzip header followed by garbage
    (d / "corrupt.tar.gz").write_bytes(bytes(data))
    os.mkfifo(d / "fifo")  # reading it would block forever
    (d / "layout-link").symlink_to(d / "layout")
    return d


@pytest.mark.parametrize(("args", "expected"), CASES, ids=[" ".join(a)[:60] for a, _ in CASES])
def test_bad_input_gets_one_line_and_leaves_nothing_behind(
    args: list[str], expected: str, scratch: Path, lkctl_home: Path, tmp_path: Path
) -> None:
    argv = [a.replace("{d}", str(scratch)) for a in args]
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    lkctl_home.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LKCTL_")}
    env.update(LKCTL_HOME=str(lkctl_home), HOME=str(tmp_path / "home"))
    Store(paths.oci_store_dir()).ensure().ingest_dir()  # a used store: a failed import must leave it as it was
    before = _snapshot(lkctl_home, scratch, cwd)
    proc = subprocess.run([LKCTL, *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL, check=False)  # fmt: skip
    assert proc.returncode != 0, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    lines = [line for line in proc.stderr.strip("\n").splitlines() if not line.startswith(PROGRESS)]
    assert len(lines) == 1, proc.stderr
    assert expected in lines[0], lines[0]
    assert _snapshot(lkctl_home, scratch, cwd) == before


@pytest.mark.parametrize(
    ("name", "expected"),
    [("web", "the name 'web' is already used by VM abcd1234"), ("abcd1", "the name 'abcd1' is the start of VM web's")],
)
def test_a_name_that_clashes_with_another_vm_is_refused(
    name: str, expected: str, lkctl_home: Path, tmp_path: Path
) -> None:
    from lkctl.runtime import state

    state.save_record(state.VmRecord(id="abcd1234", name="web", image="minimal", image_format="kernel+initrd",
                                     created="2026-01-01T00:00:00", memory=256, cpus=1, ssh_port=0))  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("LKCTL_")}
    env.update(LKCTL_HOME=str(lkctl_home), HOME=str(tmp_path / "home"))
    before = _snapshot(lkctl_home)
    proc = subprocess.run([LKCTL, "vm.run", "--image=minimal", "--name", name], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.strip("\n").splitlines() if not line.startswith(PROGRESS)]
    assert len(lines) == 1 and expected in lines[0], proc.stderr
    assert _snapshot(lkctl_home) == before


def test_an_unreadable_vm_record_is_unknown_in_ps_and_only_rm_force_removes_it(
    lkctl_home: Path, tmp_path: Path
) -> None:
    import json

    vm_dir = lkctl_home / "state" / "vms" / "0badf00d"
    vm_dir.mkdir(parents=True)
    (vm_dir / "vm.json").write_text(json.dumps({"version": 99, "id": "0badf00d"}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("LKCTL_")}
    env.update(LKCTL_HOME=str(lkctl_home), HOME=str(tmp_path / "home"))

    def lkctl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([LKCTL, *args], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120,
                              check=False)  # fmt: skip

    (row,) = json.loads(lkctl("vm.ps", "--json").stdout)
    assert row["status"] == "unknown" and "format 99" in row["error"]
    assert json.loads(lkctl("vm.inspect", "0badf00d").stdout)["status"] == "unknown"
    for args in (["vm.stop", "0badf00d"], ["vm.exec", "0badf00d", "--", "true"], ["vm.rm", "0badf00d"]):
        proc = lkctl(*args)
        assert proc.returncode != 0 and "Traceback" not in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and "--force" in proc.stderr, proc.stderr
    assert lkctl("vm.prune").returncode == 0 and vm_dir.exists()
    assert lkctl("vm.rm", "--force", "0badf00d").returncode == 0
    assert not vm_dir.exists()


def test_a_run_without_an_image_says_only_that(lkctl_home: Path, tmp_path: Path) -> None:
    # no "resolving image ''" progress line first: the missing --image is found before anything is resolved
    env = {k: v for k, v in os.environ.items() if not k.startswith("LKCTL_")}
    env.update(LKCTL_HOME=str(lkctl_home), HOME=str(tmp_path / "home"))
    proc = subprocess.run([LKCTL, "vm.run", "-d", "--name", "x"], env=env, capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL, check=False)  # fmt: skip
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        "lkctl: no image given: use --image NAME (a template such as minimal, an installed image or a file)"
    ]


@pytest.mark.parametrize("args", [["image.ls"], ["image.build", "minimal"], ["vm.run", "--image=minimal", "-d"]])
def test_an_lkctl_home_that_cannot_be_a_directory_is_one_line(args: list[str], tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("LKCTL_")}
    env.update(LKCTL_HOME=str(blocker / "lk"), HOME=str(tmp_path))
    proc = subprocess.run([LKCTL, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL, check=False)  # fmt: skip
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if not line.startswith(PROGRESS)]
    assert lines == [
        f"lkctl: cannot make lkctl's directory {blocker}/lk/cache: {blocker} is not a directory (LKCTL_HOME chooses "
        "where they go)"
    ]
    assert blocker.read_text() == "not a directory\n"


def test_a_ready_timeout_setting_below_zero_makes_no_vm(lkctl_home: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LKCTL_")}
    env.update(LKCTL_HOME=str(lkctl_home), HOME=str(tmp_path), LKCTL_VM_READY_TIMEOUT="-1")
    proc = subprocess.run([LKCTL, "vm.run", "--image=minimal", "-d"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL, check=False)  # fmt: skip
    assert proc.returncode == 2 and proc.stderr == (
        "lkctl: environment LKCTL_VM_READY_TIMEOUT: lkctl.vm.ready_timeout must be a number of seconds above 0, "
        "got -1\n"
    )
    assert not list(lkctl_home.glob("state/vms/*"))


def test_the_build_arch_setting_is_image_builds_default_arch(lkctl_home: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LKCTL_")}
    env.update(LKCTL_HOME=str(lkctl_home), HOME=str(tmp_path))

    def build(arch: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([LKCTL, "image.build", "minimal", "--out", str(tmp_path / "out")], cwd=tmp_path,
                              env={**env, "LKCTL_BUILD_ARCH": arch}, capture_output=True, text=True, timeout=300,
                              stdin=subprocess.DEVNULL, check=False)  # fmt: skip

    bad = build("sparc")
    assert (bad.returncode, bad.stderr) == (
        2, "lkctl: lkctl.build.arch 'sparc': unknown architecture; use one of amd64, arm64, riscv64\n"
    )  # fmt: skip
    other = build("riscv64")  # lkctl's base images are made for this machine only: refused, not built for it
    from lkctl.build import host_arch

    assert other.returncode == 1 and other.stderr.splitlines()[-1] == (
        f"lkctl: image lkctl.local/kernel:latest is for linux/{host_arch()} only, not linux/riscv64"
    )
    assert not (tmp_path / "out").exists()

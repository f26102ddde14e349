"""The VM lifecycle at its edges, through the real `lkctl` command and real processes, without booting a guest:
forwards that clash only through 0.0.0.0, too little memory, a VM being started that rm/prune must leave alone,
a restart whose hypervisor fails, a `vm.rm` killed half-way, and a read-only or full state dir."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lkctl.runtime import state
from tests.conftest import IN_CI

LKCTL = str(Path(sys.executable).parent / "lkctl")


def _env(home: Path, tmp_path: Path, cache: Path | None = None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LKCTL_")}
    env.update(LKCTL_HOME=str(home), HOME=str(tmp_path / "home"), **extra)
    if cache is not None:
        env["LKCTL_CACHE_DIR"] = str(cache)
    return env


def _lkctl(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([LKCTL, *args], env=env, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, check=False)  # fmt: skip


def _one_line(proc: subprocess.CompletedProcess[str], code: int, fragment: str) -> None:
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    assert proc.returncode == code, proc.stderr
    lines = proc.stderr.strip("\n").splitlines()
    assert len(lines) == 1 and fragment in lines[0], proc.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _record(name: str = "web", **fields: object) -> state.VmRecord:
    record = state.VmRecord(id="abcd1234", name=name, image="minimal", image_format="kernel+initrd",
                            created="2026-01-01T00:00:00", memory=256, cpus=1, ssh_port=0)  # fmt: skip
    record = state.VmRecord(**{**record.to_json(), **fields})
    state.save_record(record)
    return record


def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        # 0.0.0.0:P takes P on 127.0.0.1 too: QEMU could not bind both (it was started, and retried twice)
        (["--port", "0.0.0.0:{p}:80", "--port", "{p}:81"], "forwarded twice (as 0.0.0.0:{p} too)"),
        (["--port", "{p}:80", "--port", "0.0.0.0:{p}:81"], "forwarded twice (as 127.0.0.1:{p} too)"),
        # QEMU 7.2's user network forwards IPv4 only ("Invalid host forwarding rule")
        (["--port", "[::1]:{p}:80"], "IPv4 addresses only"),
        (["--port", "{p}:80/"], "protocol must be tcp or udp"),  # was taken as tcp
    ],
)
def test_a_forward_qemu_could_not_bind_is_refused_before_anything_starts(
    args: list[str], fragment: str, lkctl_home: Path, tmp_path: Path, shared_cache: Path
) -> None:
    port = str(_free_port())
    argv = [a.replace("{p}", port) for a in args]
    proc = _lkctl(_env(lkctl_home, tmp_path, shared_cache), "vm.run", "--image=minimal", "--dry-run", *argv)
    _one_line(proc, 2, fragment.replace("{p}", port))


@pytest.mark.parametrize(
    ("args", "env", "fragment"),
    [
        (["--memory", "32"], {}, "--memory '32': a VM needs at least 64M"),
        ([], {"LKCTL_VM_MEMORY": "16"}, "memory 16 MB (from environment LKCTL_VM_MEMORY): a VM needs at least 64M"),
    ],
)
def test_too_little_memory_is_refused_before_the_image_is_resolved(
    args: list[str], env: dict[str, str], fragment: str, lkctl_home: Path, tmp_path: Path, shared_cache: Path
) -> None:
    # before: refused by qemu_argv, after resolving (and perhaps building) the image and creating the VM
    proc = _lkctl(_env(lkctl_home, tmp_path, shared_cache, **env), "vm.run", "--image=minimal", "-d", *args)
    _one_line(proc, 2, fragment)


def test_two_volumes_at_one_guest_path_are_refused_before_the_image_is_resolved(
    lkctl_home: Path, tmp_path: Path, shared_cache: Path
) -> None:
    for d in ("a", "b c"):
        (tmp_path / d).mkdir()
    volumes = ["-v", f"{tmp_path / 'a'}:/mnt/x", "-v", f"{tmp_path / 'b c'}:/mnt/x/"]
    proc = _lkctl(_env(lkctl_home, tmp_path, shared_cache), "vm.run", "--image=minimal", "-d", *volumes)
    _one_line(proc, 2, "two volumes are mounted at /mnt/x in the guest")


def test_rm_leaves_a_vm_that_a_live_lkctl_is_starting(lkctl_home: Path, tmp_path: Path) -> None:
    record = _record(creator=state.creator_identity())  # this process is "vm.run" here: alive, no QEMU yet
    env = _env(lkctl_home, tmp_path)
    _one_line(_lkctl(env, "vm.rm", "web"), 2, f"VM web is being started by lkctl process {os.getpid()}")
    assert (record.dir / "vm.json").exists()
    assert _lkctl(env, "vm.rm", "--force", "web").returncode == 0
    assert not record.dir.exists()


def test_a_restart_whose_hypervisor_fails_is_an_error_that_prune_and_rm_leave_alone_meanwhile(
    lkctl_home: Path, tmp_path: Path
) -> None:
    # a stand-in for QEMU: while `vm.start` waits for it, vm.prune and vm.rm run; then it fails as QEMU would
    out = tmp_path / "meanwhile.txt"
    script = (
        f"LKCTL_HOME={lkctl_home} HOME={tmp_path} {LKCTL} vm.prune >>{out} 2>&1; "
        f"LKCTL_HOME={lkctl_home} HOME={tmp_path} {LKCTL} vm.rm web >>{out} 2>&1; "
        "echo 'qemu-system-x86_64: boom' >&2; exit 1"
    )
    record = _record(pid=_dead_pid(), pid_start="1", argv=["/bin/sh", "-c", script])
    env = _env(lkctl_home, tmp_path)
    assert json.loads(_lkctl(env, "vm.ps", "--all", "--json").stdout)[0]["status"] == "stopped"
    _one_line(_lkctl(env, "vm.start", "web"), 1, "QEMU failed to restart VM web: qemu-system-x86_64: boom")
    said = out.read_text()
    assert "removed 0 VM(s)" in said and "VM web is being started by lkctl process" in said, said
    assert (record.dir / "vm.json").exists()
    (row,) = json.loads(_lkctl(env, "vm.ps", "--all", "--json").stdout)
    assert row["status"] == "error" and "boom" in row["error"], row  # before: `created`, "never started"
    # and it can be tried again (before: "VM web never started (it has no QEMU command line)")
    _one_line(_lkctl(env, "vm.start", "web"), 1, "QEMU failed to restart VM web: qemu-system-x86_64: boom")


def test_a_vm_whose_start_was_killed_before_qemu_ran_can_be_started_again(lkctl_home: Path, tmp_path: Path) -> None:
    # what a SIGKILLed vm.start (or vm.run) leaves between recording the argv and QEMU writing its pidfile
    _record(argv=["/bin/sh", "-c", "echo 'qemu-system-x86_64: boom' >&2; exit 1"], creator=["1", "0"])
    env = _env(lkctl_home, tmp_path)
    assert json.loads(_lkctl(env, "vm.ps", "--all", "--json").stdout)[0]["status"] == "created"
    # before: "VM web never started (it has no QEMU command line)", for good
    _one_line(_lkctl(env, "vm.start", "web"), 1, "QEMU failed to restart VM web: qemu-system-x86_64: boom")


@pytest.mark.parametrize(
    ("task", "value"), [("vm.start", "-5"), ("vm.start", "soon"), ("vm.wait", "-1"), ("vm.wait", "x")]
)
def test_start_and_wait_check_their_timeout_like_every_other_task(
    task: str, value: str, lkctl_home: Path, tmp_path: Path
) -> None:
    _record(pid=_dead_pid(), pid_start="1", argv=["/bin/false"])
    _one_line(_lkctl(_env(lkctl_home, tmp_path), task, "web", f"--timeout={value}"), 2, f"--timeout '{value}'")


def test_a_rm_killed_half_way_leaves_nothing_that_prune_cannot_reclaim(lkctl_home: Path, tmp_path: Path) -> None:
    record = _record()
    for i in range(20000):  # enough that the kill lands while the dir is being deleted
        (record.dir / f"f{i}").touch()
    vm_json = record.dir / "vm.json"
    p = subprocess.Popen([LKCTL, "vm.rm", "web"], env=_env(lkctl_home, tmp_path), stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while vm_json.exists() and time.monotonic() < deadline:
            pass
        p.send_signal(signal.SIGKILL)
    finally:
        p.communicate()
    env = _env(lkctl_home, tmp_path)
    assert json.loads(_lkctl(env, "vm.ps", "--all", "--json").stdout) == []
    assert _lkctl(env, "vm.prune").returncode == 0
    # before: a VM dir without its vm.json (keys, console) stayed, listed by nothing and removed by nothing
    left = sorted(p.name for p in (lkctl_home / "state" / "vms").iterdir() if p.is_dir())
    assert left == [], left


def _in_mount_namespace(setup: str, state_dir: Path, env: dict[str, str], *args: str) -> tuple[int, str, list[str]]:
    """Run `lkctl ARGS` in a private mount namespace after `setup` (sh, $d = the state dir) mounted something
    there; returns lkctl's exit status, its stderr and what is in the state's vms dir afterwards."""
    if shutil.which("unshare") is None or os.geteuid() != 0:
        if IN_CI:
            pytest.fail("CI=true: these tests need root and unshare(1) (util-linux)")
        pytest.skip("needs root and unshare(1) for a private mount namespace")
    script = f'd="$1"; shift; {setup} || exit 99; "$@" >/dev/null; echo "rc=$?"; ls -A "$d/vms"'
    argv = ["unshare", "-m", "sh", "-c", script, "sh", str(state_dir), LKCTL, *args]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
                          check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rc, *listing = proc.stdout.split()
    return int(rc.removeprefix("rc=")), proc.stderr, listing


_PROGRESS = ("lkctl: resolving image", "lkctl: accelerator", "lkctl: booting", "lkctl: built")


def _lines(stderr: str) -> list[str]:
    assert "Traceback" not in stderr, stderr
    return [ln for ln in stderr.splitlines() if not ln.startswith(_PROGRESS)]


@pytest.mark.parametrize(
    "args", [["vm.rm", "web"], ["vm.prune"], ["vm.start", "web"], ["vm.run", "--image=minimal", "-d", "--name", "x"]]
)
def test_a_read_only_state_dir_is_one_line(
    args: list[str], lkctl_home: Path, tmp_path: Path, shared_cache: Path
) -> None:
    _record(pid=_dead_pid(), pid_start="1", argv=["/bin/false"])
    ro = 'mount --bind "$d" "$d" && mount -o remount,bind,ro "$d"'
    rc, stderr, listing = _in_mount_namespace(ro, lkctl_home / "state", _env(lkctl_home, tmp_path, shared_cache), *args)
    lines = _lines(stderr)
    assert rc != 0 and len(lines) == 1, stderr
    assert "cannot write lkctl's VM state" in lines[0] and "Read-only file system" in lines[0], stderr
    assert "abcd1234" in listing


def test_a_full_state_dir_is_one_line_and_leaves_no_vm(lkctl_home: Path, tmp_path: Path, shared_cache: Path) -> None:
    state_dir = tmp_path / "small"
    state_dir.mkdir()
    full = (
        'mount -t tmpfs -o size=64k,mode=0700 tmpfs "$d" && mkdir -m 700 "$d/vms" && touch "$d/vms/.lock" && '
        '{ dd if=/dev/zero of="$d/filler" bs=4k 2>/dev/null; true; }'
    )
    env = _env(lkctl_home, tmp_path, shared_cache, LKCTL_STATE_DIR=str(state_dir))
    rc, stderr, listing = _in_mount_namespace(full, state_dir, env, "vm.run", "--image=minimal", "-d", "--name", "f")
    lines = _lines(stderr)
    assert rc == 1 and len(lines) == 1, stderr
    assert "cannot write lkctl's VM state" in lines[0] and "No space left on device" in lines[0], stderr
    assert listing == [".lock"]  # no VM dir left behind


def test_a_status_filter_no_vm_can_match_is_refused(lkctl_home: Path, tmp_path: Path) -> None:
    _record(pid=_dead_pid(), pid_start="1")
    env = _env(lkctl_home, tmp_path)
    # before: exit 0 and "no VMs", for a typo that can never match
    _one_line(_lkctl(env, "vm.ps", "--filter", "status=runing"), 2, "--filter status=runing: no VM has that status")
    assert json.loads(_lkctl(env, "vm.ps", "--filter", "status=stop*", "--json").stdout)[0]["name"] == "web"


@pytest.mark.parametrize(
    ("var", "args"), [("LKCTL_STATE_DIR", ["vm.prune"]), ("LKCTL_CACHE_DIR", ["vm.run", "--image=minimal", "-d"])]
)
def test_a_world_writable_dir_given_for_lkctls_files_is_refused_not_made_private(
    var: str, args: list[str], lkctl_home: Path, tmp_path: Path
) -> None:
    shared = tmp_path / "like-tmp"
    shared.mkdir()
    shared.chmod(0o1777)
    # before: chmod 0700, under everyone else using it (LKCTL_STATE_DIR=/tmp as root broke the machine's /tmp)
    env = _env(lkctl_home, tmp_path)
    env[var] = str(shared)
    _one_line(_lkctl(env, *args), 2, "is a shared directory (mode 1777)")
    assert shared.stat().st_mode & 0o7777 == 0o1777
    assert list(shared.iterdir()) == []

"""The `lkctl` command line against one real VM: stdin ends cleanly, exit codes a script can read, what vm.run says.

One VM is booted for the whole module (under TCG a boot is the expensive part); every test only execs in it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.boot.conftest import BIN, qemu_pids_for
from tests.conftest import REPO, require_qemu

pytestmark = pytest.mark.boot

NAME = "clisess"


@dataclass
class Session:
    env: dict[str, str]
    cwd: Path
    home: Path
    run: subprocess.CompletedProcess[str]

    def __call__(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "lkctl"), *args], env=self.env, cwd=self.cwd, capture_output=True, text=True, timeout=timeout
        )


@pytest.fixture(scope="module")
def vm(tmp_path_factory: pytest.TempPathFactory, shared_cache: Path) -> Iterator[Session]:
    require_qemu()
    home = tmp_path_factory.mktemp("cli-session")
    work = home / "work"
    (work / ".git").mkdir(parents=True)
    (work / "lkctl.yaml").write_text("lkctl:\n  vm:\n    memory: 640\n")  # a project file sets the size
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LKCTL_", "INVOKE_"))}
    env.update(LKCTL_HOME=str(home / "lk"), LKCTL_CACHE_DIR=str(shared_cache), PATH=f"{BIN}:{env.get('PATH', '')}")
    s = Session(env, work, home / "lk", subprocess.CompletedProcess([], 0))
    try:
        s.run = s("vm.run", "--image=minimal", "-d", "--name", NAME, timeout=900)
        assert s.run.returncode == 0, s.run.stderr
        yield s
    finally:
        s("vm.rm", "--force", NAME)
        left = qemu_pids_for(s.home)
        for pid in left:
            os.kill(pid, 9)
        assert not left, f"QEMU left running: {left}"


def test_vm_run_says_the_accelerator_and_why_and_the_size_with_its_source(vm: Session) -> None:
    err = vm.run.stderr
    assert "lkctl: accelerator tcg: " in err or "lkctl: accelerator kvm: " in err, err
    assert "lkctl: memory 640 MB (from config)" in err, err
    assert err.index("lkctl: accelerator") < err.index("lkctl: booting")
    assert f"vm.exec {NAME} -- " in err  # how to exec
    # not a terminal: one line per boot phase with the elapsed time, read from the console
    phases = [line for line in err.splitlines() if line.startswith(f"lkctl: booting {NAME}: ")]
    assert phases, err
    assert all(re.fullmatch(rf"lkctl: booting {NAME}: [a-z ,]+ \(\d+s\)", line) for line in phases), phases


def test_a_piped_exec_whose_writer_stays_open_returns_the_commands_code(vm: Session) -> None:
    # `(echo a; sleep 60) | lkctl vm.exec VM -- true`: the command ends long before its stdin does
    proc = subprocess.Popen(
        [str(BIN / "lkctl"), "vm.exec", NAME, "--", "sh", "-c", "exit 4"],
        env=vm.env, cwd=vm.cwd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdin is not None
    proc.stdin.write(b"a\n")
    proc.stdin.flush()
    try:
        rc = proc.wait(timeout=120)
    finally:
        proc.stdin.close()
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()
        err = proc.stderr.read()
        proc.stderr.close()
    assert b"Fatal Python error" not in err
    assert rc == 4, err


def _drive_terminal(vm: Session, argv: list[str], typed: bytes) -> tuple[int, bytes]:
    master, slave = os.openpty()
    proc = subprocess.Popen(
        [str(BIN / "lkctl"), *argv], env=vm.env, cwd=vm.cwd, stdin=slave, stdout=slave, stderr=slave,
        start_new_session=True,
    )  # fmt: skip
    os.close(slave)
    seen = b""
    try:
        deadline = time.monotonic() + 120
        sent = False
        while proc.poll() is None and time.monotonic() < deadline:
            if select.select([master], [], [], 0.5)[0]:
                with contextlib.suppress(OSError):
                    seen += os.read(master, 4096)
            if not sent and (b"#" in seen or b"$" in seen):  # the guest shell's prompt
                os.write(master, typed)
                sent = True
        rc = proc.wait(timeout=30)
        with contextlib.suppress(OSError):
            while select.select([master], [], [], 0.2)[0]:
                chunk = os.read(master, 4096)
                if not chunk:
                    break
                seen += chunk
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    return rc, seen


def test_vm_shell_on_a_terminal_exits_with_the_shells_code(vm: Session) -> None:
    rc, seen = _drive_terminal(vm, ["vm.shell", NAME], b"exit 7\r")
    assert b"Fatal Python error" not in seen
    assert rc == 7, seen


def test_exec_with_a_tty_exits_with_the_commands_code(vm: Session) -> None:
    rc, seen = _drive_terminal(vm, ["vm.exec", "-t", NAME, "--", "sh"], b"exit 5\r")
    assert b"Fatal Python error" not in seen
    assert rc == 5, seen


def test_exit_codes_tell_lkctl_failures_from_the_commands_own(vm: Session) -> None:
    assert vm("vm.exec", NAME, "--", "sh", "-c", "exit 3").returncode == 3
    missing = vm("vm.exec", "no-such-vm", "--", "true")
    assert missing.returncode == 125 and missing.stderr.startswith("lkctl: ")
    assert vm("vm.exec", NAME, "--", "/no/such/command").returncode == 127
    assert vm("vm.exec", NAME, "--", "sh", "-c", "echo x >/tmp/not-executable").returncode == 0
    assert vm("vm.exec", NAME, "--", "/tmp/not-executable").returncode == 126
    assert vm("vm.exec", NAME, "uname", "-a").returncode == 125  # no `--`: a usage error, said as lkctl's own


def test_image_ls_shows_the_build_with_size_and_age(vm: Session) -> None:
    rows = json.loads(vm("image.ls", "--json").stdout)
    built = [r for r in rows if r["kind"] == "built" and "minimal" in r["detail"]]
    assert built, rows
    assert built[0]["size"] > 1_000_000 and built[0]["created"]
    assert Path(built[0]["name"] + "-kernel").is_file()  # the name is what `vm.run --image` takes
    table = vm("image.ls").stdout.splitlines()
    assert table[0].split() == ["NAME", "KIND", "SIZE", "CREATED", "DETAIL"]


def test_a_taken_name_and_a_busy_port_are_refused_before_anything_is_built_or_booted(vm: Session) -> None:
    taken = vm("vm.run", "--image=no-such-image-anywhere", "--name", NAME)
    assert taken.returncode == 2 and f"the name {NAME!r} is already used" in taken.stderr
    assert "resolving" not in taken.stderr and "booting" not in taken.stderr
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = vm("vm.run", "--image=minimal", "--name", "other", "--ssh-port", str(port))
    assert done.returncode == 2 and "already in use" in done.stderr and "booting" not in done.stderr


def test_dry_run_prints_the_qemu_argv_and_starts_nothing(vm: Session) -> None:
    before = sorted(p.name for p in (vm.home / "state" / "vms").iterdir())
    done = vm(
        "vm.run", "--image=minimal", "--dry-run", "--name", "dry", "--port", "18081:80"
    )  # 18080: test_end_to_end's VM may hold it
    assert done.returncode == 0, done.stderr
    argv = done.stdout.strip().split()
    assert argv[0].endswith("qemu-system-x86_64") and "hostfwd=tcp:127.0.0.1:18081-:80" in done.stdout
    assert "dry run, nothing started. Would create VM dry" in done.stderr
    assert sorted(p.name for p in (vm.home / "state" / "vms").iterdir()) == before
    assert "dry" not in vm("vm.ps", "--all").stdout


def test_size_precedence_flag_then_env_then_config_then_template_then_default(vm: Session) -> None:
    templates = vm.cwd / ".lkctl" / "templates"
    templates.mkdir(parents=True, exist_ok=True)
    body = (REPO / "templates" / "minimal.yml").read_text().split("\n", 1)[1]
    (templates / "sized.yml").write_text("# A sized VM\n# lkctl: memory=900 cpus=2\n" + body)

    def planned(*args: str, env: dict[str, str] | None = None) -> str:
        done = subprocess.run(
            [str(BIN / "lkctl"), "vm.run", "--image=sized", "--dry-run", *args], env={**vm.env, **(env or {})},
            cwd=vm.cwd, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        sizes = re.search(r"(\d+) MB, (\d+) CPU", done.stderr)
        assert sizes, done.stderr
        return f"{sizes.group(1)}/{sizes.group(2)}"

    assert planned() == "640/2"  # the project's lkctl.yaml beats the template's memory; its cpus stand
    assert planned(env={"LKCTL_VM_MEMORY": "700"}) == "700/2"
    assert planned("--memory", "800", "--cpus", "1", env={"LKCTL_VM_MEMORY": "700"}) == "800/1"
    (vm.cwd / "lkctl.yaml").rename(vm.cwd / "lkctl.yaml.off")
    try:
        assert planned() == "900/2"  # no config: the template's `# lkctl:` line
    finally:
        (vm.cwd / "lkctl.yaml.off").rename(vm.cwd / "lkctl.yaml")

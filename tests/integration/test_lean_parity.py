"""The lean CLI paths (lkctl.launcher.LEAN_PATHS) against the full invoke CLI: same stdout, stderr and exit status.

Each case runs `lkctl ARGS` twice, once as typed and once with `LKCTL_BENCH_FULL_CLI=1` (an `LKCTL_*` variable
the lean paths do not know, which sends every command to the full CLI), and compares what a script sees. Both
runs record whether invoke was imported, so a case also pins down which path answered: a lean path that hands
over when it must not (or answers when it must not) fails here. The cases that need a running VM share one VM,
booted once for the module; the others fail or refuse before QEMU starts.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.boot.conftest import BIN, qemu_pids_for
from tests.conftest import require_qemu

pytestmark = pytest.mark.integration

# The `lkctl` entry point (lkctl.launcher.main), plus a note in $LEAN_MARK when anything imports invoke.
_ENTRY = """
import os, sys
class _Watch:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name == "invoke":
            open(os.environ["LEAN_MARK"], "w").close()
        return None
sys.meta_path.insert(0, _Watch)
sys.argv[0] = "lkctl"
from lkctl.launcher import main
sys.exit(main())
"""

FULL = {"LKCTL_BENCH_FULL_CLI": "1"}


@dataclass
class Outcome:
    code: int
    out: bytes
    err: bytes
    invoke: bool  # the full CLI answered (invoke was imported)


@dataclass
class Where:
    env: dict[str, str]
    cwd: Path
    marks: Path
    booted: Outcome | None = None  # the module VM's own `vm.run -d`, through the lean path
    n: list[int] = field(default_factory=lambda: [0])

    def lkctl(
        self,
        *args: str,
        env: dict[str, str] | None = None,
        input: bytes | None = None,
        closed: tuple[int, ...] = (),
        stdin_fd: int | None = None,
        cwd: Path | None = None,
        timeout: float = 120,
    ) -> Outcome:
        self.n[0] += 1
        mark = self.marks / f"invoke-{self.n[0]}"
        full_env = {**self.env, **(env or {}), "LEAN_MARK": str(mark)}

        stdin = stdin_fd if stdin_fd is not None else None if input is not None else subprocess.DEVNULL

        def close_fds() -> None:
            for fd in closed:
                os.close(fd)

        proc = subprocess.run(
            [sys.executable, "-c", _ENTRY, *args], env=full_env, cwd=cwd or self.cwd, input=input,
            stdin=stdin, capture_output=True, timeout=timeout,
            preexec_fn=close_fds if closed else None, check=False,
        )  # fmt: skip
        return Outcome(proc.returncode, proc.stdout, proc.stderr, mark.exists())

    def both(self, *args: str, env: dict[str, str] | None = None, **kw: object) -> tuple[Outcome, Outcome]:
        """(as typed, forced through the full CLI)."""
        lean = self.lkctl(*args, env=env, **kw)  # type: ignore[arg-type]
        full = self.lkctl(*args, env={**(env or {}), **FULL}, **kw)  # type: ignore[arg-type]
        assert full.invoke, "LKCTL_BENCH_FULL_CLI=1 did not reach the full CLI"
        return lean, full


def _same(lean: Outcome, full: Outcome, *, lean_path: bool, norm: Callable[[bytes], bytes] = lambda b: b) -> None:
    """The two runs look the same to a script, neither printed a traceback, and the expected path answered."""
    for o in (lean, full):
        assert b"Traceback" not in o.err, o.err.decode(errors="replace")
    assert (lean.code, norm(lean.out), norm(lean.err)) == (full.code, norm(full.out), norm(full.err))
    assert lean.invoke is not lean_path, "the lean path answered" if not lean_path else "the full CLI answered"


def _clean_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LKCTL_", "INVOKE_"))}
    env.update(LKCTL_HOME=str(home / "lk"), HOME=str(home), PATH=f"{BIN}:{env.get('PATH', '/usr/bin:/bin')}")
    return env


@pytest.fixture
def where(tmp_path: Path) -> Where:
    project = tmp_path / "proj"
    (project / ".git").mkdir(parents=True)
    (tmp_path / "marks").mkdir()
    return Where(_clean_env(tmp_path), project, tmp_path / "marks")


# ---- vm.run -d: cases that fail before QEMU starts ----

RUN_FORMS = [
    ["vm.run", "-d", "--image", "/nonexistent/img"],
    ["vm.run", "--image=/nonexistent/img", "--detach"],
    ["vm.run", "-i", "/nonexistent/img", "-d", "-n", "web-1"],
    ["vm.run", "-d", "--name=web-1", "--image=/nonexistent/img", "--snapshot"],
]


@pytest.mark.parametrize("args", RUN_FORMS, ids=lambda a: " ".join(a))
def test_plain_vm_run_forms_answer_as_the_full_cli(where: Where, args: list[str]) -> None:
    _same(*where.both(*args), lean_path=True)


@pytest.mark.parametrize(
    "args",
    [
        ["vm.run", "-d", "--image", "/nonexistent/img", "--name", "é"],  # unicode: refused by the name check
        ["vm.run", "-d", "--image", "/nonexistent/img", "--name", "a" * 64],
        ["vm.run", "-d", "--image", "vm.ps"],  # a task's name as a value
    ],
    ids=["unicode-name", "long-name", "task-name-as-image"],
)
def test_plain_vm_run_with_odd_values_answers_as_the_full_cli(where: Where, args: list[str]) -> None:
    _same(*where.both(*args), lean_path=True)


@pytest.mark.parametrize(
    "args",
    [
        ["vm.run", "-d", "--image", "/nonexistent/img", "--name", ""],  # empty string
        ["vm.run", "-d", "--image", "/nonexistent/img", "--bogus"],  # unknown option (with a suggestion)
        ["vm.run", "-d", "--image", "/nonexistent/img", "--nme", "x"],
        ["vm.run", "-d", "--image", "/nonexistent/img", "--help"],
        ["vm.run", "-d", "-d", "--image", "/nonexistent/img"],  # repeated
        ["vm.run", "-d", "--image", "/a", "--image", "/b"],
        ["vm.run", "-d", "--image"],  # missing value
        ["vm.run", "-d", "--image", "/nonexistent/img", "--", "x"],
        ["vm.run", "-d", "--image", "/nonexistent/img", "extra"],  # a positional after the options
        ["vm.run", "-di", "/nonexistent/img"],
    ],
    ids=lambda a: " ".join(a[2:]) or "-",
)
def test_other_vm_run_forms_go_to_the_full_cli(where: Where, args: list[str]) -> None:
    _same(*where.both(*args), lean_path=False)


def test_vm_run_reads_the_projects_invoke_yaml_and_the_environment_as_the_full_cli(where: Where) -> None:
    (where.cwd / "invoke.yaml").write_text("lkctl:\n  vm:\n    memory: lots\n")
    _same(*where.both("vm.run", "-d", "--image", "/nonexistent/img"), lean_path=True)
    (where.cwd / "invoke.yaml").unlink()
    _same(*where.both("vm.run", "-d", "--image", "/nonexistent/img", env={"LKCTL_VM_CPUS": "many"}), lean_path=True)


SETTINGS_CASES = {
    "env-hosts-not-json": ({}, {"LKCTL_HOSTS": "nope"}),
    "env-accel-unknown": ({}, {"LKCTL_VM_ACCEL": "warp"}),
    "env-network-unknown": ({}, {"LKCTL_VM_NETWORK": "wifi"}),
    "user-file": ({"HOME/.lkctl.yaml": "lkctl:\n  vm:\n    cpus: x\n"}, {}),
    "unknown-setting": ({"lkctl.yaml": "lkctl:\n  vm:\n    memroy: 1\n"}, {}),
    "yml-beside-yaml": ({"lkctl.yml": "lkctl:\n  vm:\n    cpus: x\n", "lkctl.yaml": "lkctl: {}\n"}, {}),
    "invoke-yaml-over-user": (
        {"HOME/.lkctl.yaml": "lkctl: {vm: {cpus: 2}}\n", "invoke.yaml": "lkctl: {vm: {cpus: y}}\n"},
        {},
    ),
}


@pytest.mark.parametrize(("files", "env"), SETTINGS_CASES.values(), ids=SETTINGS_CASES.keys())
def test_vm_run_settings_from_files_and_environment_as_the_full_cli(
    where: Where, files: dict[str, str], env: dict[str, str]
) -> None:
    for name, text in files.items():
        path = Path(where.env["HOME"]) / name[5:] if name.startswith("HOME/") else where.cwd / name
        path.write_text(text)
    lean, full = where.both("vm.run", "-d", "--image", "/nonexistent/img", env=env)
    _same(lean, full, lean_path=True)
    assert lean.code != 0


# ---- dev.test / dev.shell -- CMD: the project's dev VM is not running ----

DEV_FORMS = [
    ["dev.test"],
    ["dev.test", "--", "make", "check"],
    ["dev.test", "--name", "unit"],
    ["dev.test", "--name", ""],  # an empty name is no name on both paths
    ["dev.test", "--name=unit", "--", "true"],
    ["dev.shell", "--", "true"],
    ["dev.shell", "--", ""],
]


@pytest.mark.parametrize("args", DEV_FORMS, ids=lambda a: " ".join(a))
def test_dev_commands_answer_as_the_full_cli(where: Where, args: list[str]) -> None:
    _same(*where.both(*args), lean_path=True)


@pytest.mark.parametrize(
    "args",
    [["dev.test", "-n", "unit"], ["dev.shell"], ["dev.test", "--help"], ["dev.shel"]],
    ids=lambda a: " ".join(a),
)
def test_other_dev_forms_go_to_the_full_cli(where: Where, args: list[str]) -> None:
    _same(*where.both(*args, timeout=30), lean_path=False)


@pytest.mark.parametrize(
    "args",
    [
        ["vm.exec", "nope", "--", "true"],  # no such VM: the full CLI says so (125)
        ["vm.exec", "", "--", "true"],
        ["vm.exec", "nope", "--"],
        ["vm.exec", "--help"],
        ["vm.exec", "nope", "-t", "--", "true"],
        ["vm.exec", "nope", "--bogus", "--", "true"],
    ],
    ids=["no-vm", "empty-name", "no-command", "help", "tty", "unknown-option"],
)
def test_vm_exec_without_a_running_vm_or_in_another_form_goes_to_the_full_cli(where: Where, args: list[str]) -> None:
    lean, full = where.both(*args)
    _same(lean, full, lean_path=False)
    assert lean.code in (0, 125), lean.err  # 0 for --help; lkctl's own failures are 125 for vm.exec


# ---- what only the full CLI understands sends every lean path there ----

LEAN_CASES = [
    ["vm.run", "-d", "--image", "/nonexistent/img"],
    ["dev.test", "--", "true"],
    ["dev.shell", "--", "true"],
]


@pytest.mark.parametrize("args", LEAN_CASES, ids=lambda a: a[0])
def test_an_unknown_lkctl_variable_forces_the_full_cli(where: Where, args: list[str]) -> None:
    assert not where.lkctl(*args).invoke
    assert where.lkctl(*args, env=FULL).invoke


@pytest.mark.parametrize(
    "text",
    ["lkctl: [unclosed\n", "- a list\n", "lkctl:\n", "lkctl:\n  vm: 5\n", "lkctl:\n  templates:\n    variables: 1\n"],
    ids=["bad-yaml", "list", "empty-lkctl", "section-not-mapping", "nested-not-mapping"],
)
@pytest.mark.parametrize("args", [*LEAN_CASES, ["vm.exec", "nope", "--", "true"]], ids=lambda a: a[0])
def test_a_config_file_invoke_cannot_merge_is_one_line_on_every_path(where: Where, args: list[str], text: str) -> None:
    (where.cwd / "lkctl.yaml").write_text(text)
    lean, full = where.both(*args)
    _same(lean, full, lean_path=False)
    said = lean.err.decode()
    path = where.cwd / "lkctl.yaml"
    assert said.startswith((f"lkctl: config file {path}: ", f"lkctl: cannot read config file {path}: ")), said
    assert lean.err.count(b"\n") == 1
    assert lean.code == (125 if args[0] == "vm.exec" else 2)


@pytest.mark.parametrize("args", [*LEAN_CASES, ["vm.exec", "nope", "--", "true"]], ids=lambda a: a[0])
def test_a_config_name_that_is_a_directory_is_one_line_on_every_path(where: Where, args: list[str]) -> None:
    path = Path(where.env["HOME"]) / ".lkctl.yaml"
    path.mkdir()  # invoke opens the first name that exists: a traceback before
    try:
        lean, full = where.both(*args)
    finally:
        path.rmdir()
    _same(lean, full, lean_path=False)
    assert lean.err.decode() == f"lkctl: config file {path} is not a regular file: remove or rename it\n"
    assert lean.code == (125 if args[0] == "vm.exec" else 2)


def test_invokes_own_keys_in_a_config_file_send_the_lean_paths_to_the_full_cli(where: Where) -> None:
    (where.cwd / "lkctl.yaml").write_text("tasks:\n  auto_dash_names: true\n")
    for args in LEAN_CASES:
        _same(*where.both(*args), lean_path=False)


def test_a_missing_runtime_config_is_lkctls_own_failure_125_for_vm_exec(where: Where) -> None:
    lean, full = where.both("vm.exec", "nope", "--", "true", env={"LKCTL_RUNTIME_CONFIG": "/nonexistent.yaml"})
    _same(lean, full, lean_path=False)
    assert lean.code == 125, lean.err


def test_an_invoke_variable_of_the_wrong_type_is_one_line(where: Where) -> None:
    lean, full = where.both("vm.run", "-d", "--image", "/nonexistent/img", env={"LKCTL_LKCTL_VM_CPUS": "e"})
    _same(lean, full, lean_path=False)
    assert lean.code == 2 and lean.err.startswith(b"lkctl: an LKCTL_* variable does not fit"), lean.err


# ---- closed standard streams ----


@pytest.mark.parametrize("fd", [0, 1, 2], ids=["stdin", "stdout", "stderr"])
@pytest.mark.parametrize("args", [*LEAN_CASES, ["vm.exec", "nope", "--", "true"]], ids=lambda a: a[0])
def test_a_closed_standard_stream_is_not_a_traceback(where: Where, args: list[str], fd: int) -> None:
    lean, full = where.both(*args, closed=(fd,))
    _same(lean, full, lean_path=args[0] != "vm.exec")
    assert lean.code in (1, 2, 125), lean.err


# ---- one running VM: vm.exec through the holder against vm.exec over SSH ----

NAME = "parity"


@pytest.fixture(scope="module")
def vm(tmp_path_factory: pytest.TempPathFactory, shared_cache: Path) -> Iterator[Where]:
    require_qemu()
    home = tmp_path_factory.mktemp("lean-parity")
    (home / "work" / ".git").mkdir(parents=True)
    (home / "marks").mkdir()
    env = {**_clean_env(home), "LKCTL_CACHE_DIR": str(shared_cache)}
    w = Where(env, home / "work", home / "marks")
    try:
        booted = w.lkctl("vm.run", "--image=minimal", "-d", "--name", NAME, timeout=900)
        assert booted.code == 0, booted.err.decode(errors="replace")
        assert not booted.invoke
        w.booted = booted
        yield w
    finally:
        w.lkctl("vm.rm", "--force", NAME, timeout=120)
        left = qemu_pids_for(home / "lk")
        for pid in left:
            os.kill(pid, 9)
        assert not left, f"QEMU left running: {left}"


EXEC_CASES = {
    "status-and-streams": ["sh", "-c", "printf 'out\\000\\377'; printf 'err\\n' >&2; exit 3"],
    "words-kept-exactly": ["printf", "[%s]", "é", "", "--", "--help", "a b", "$HOME", "'"],
    "killed-by-a-signal": ["sh", "-c", "kill -TERM $$"],
    "stdin-from-dev-null": ["cat"],
    "exit-status-above-255": ["sh", "-c", "exit 300"],
    "not-found": ["/nonexistent"],
    "environment-names": ["sh", "-c", "echo $HOME $PWD $USER; env | cut -d= -f1 | sort; tty"],
}


@pytest.mark.boot
@pytest.mark.parametrize("words", EXEC_CASES.values(), ids=EXEC_CASES.keys())
def test_vm_exec_through_the_holder_answers_as_over_ssh(vm: Where, words: list[str]) -> None:
    _same(*vm.both("vm.exec", NAME, "--", *words), lean_path=True)


@pytest.mark.boot
def test_vm_exec_streams_piped_stdin_byte_exact_on_both_paths(vm: Where) -> None:
    data = bytes(range(256)) * 4096 + b"no newline at the end"
    lean, full = vm.both("vm.exec", NAME, "--", "cat", input=data)
    _same(lean, full, lean_path=True)
    assert lean.out == data


@pytest.mark.boot
def test_vm_exec_with_closed_stdout_runs_the_command_on_both_paths(vm: Where) -> None:
    lean, full = vm.both("vm.exec", NAME, "--", "sh", "-c", "echo hi; exit 7", closed=(1,))
    _same(lean, full, lean_path=True)
    assert lean.code == 7


@pytest.mark.boot
@pytest.mark.parametrize(
    ("setup", "env"),
    [("", {"LKCTL_RUNTIME_CONFIG": "/nonexistent.yaml"}), ("lkctl: [unclosed\n", {})],
    ids=["missing-runtime-config", "broken-project-config"],
)
def test_vm_exec_does_not_run_what_the_full_cli_refuses(vm: Where, setup: str, env: dict[str, str]) -> None:
    project = vm.cwd.parent / "broken"
    (project / ".git").mkdir(parents=True, exist_ok=True)
    if setup:
        (project / "lkctl.yaml").write_text(setup)
    lean, full = vm.both("vm.exec", NAME, "--", "sh", "-c", "echo ran", env=env, cwd=project)
    _same(lean, full, lean_path=False)
    assert lean.code == 125 and lean.out == b"", lean.err


def _signalled(
    argv: list[str], env: dict[str, str], cwd: Path, *, on_stderr: bool, marker: bytes, sig: int, timeout: float
) -> tuple[int, bytes]:
    """Run lkctl's entry with `argv`, send `sig` once a line holding `marker` appears on its stderr (`on_stderr`:
    vm.run's progress) or stdout (an exec's output), and return its exit status and stderr."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _ENTRY, *argv], env=env, cwd=cwd,
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    stream = proc.stderr if on_stderr else proc.stdout
    assert stream is not None
    try:
        while marker not in (line := stream.readline()):
            assert line, f"{argv[0]} ended before {marker!r}"
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, err


def _interrupted(vm: Where, extra_env: dict[str, str], sig: int) -> tuple[int, bytes]:
    env = {**vm.env, **extra_env, "LEAN_MARK": str(vm.marks / "sig")}
    argv = ["vm.exec", NAME, "--", "sh", "-c", "echo started; sleep 60"]
    return _signalled(argv, env, vm.cwd, on_stderr=False, marker=b"started\n", sig=sig, timeout=60)


@pytest.mark.boot
def test_vm_exec_with_a_terminal_as_stdin_streams_none_of_it_on_both_paths(vm: Where) -> None:
    controller, terminal = os.openpty()
    try:
        os.write(controller, b"typed\n")
        lean, full = vm.both("vm.exec", NAME, "--", "sh", "-c", "cat; echo end", stdin_fd=terminal)
    finally:
        os.close(controller)
        os.close(terminal)
    _same(lean, full, lean_path=True)
    assert lean.out == b"end\n"


def _first_byte_then_close(vm: Where, extra_env: dict[str, str]) -> tuple[int, bytes]:
    """`lkctl vm.exec VM -- yes-ish | head -c1`: the reader goes away after one byte."""
    with subprocess.Popen(
        [sys.executable, "-c", _ENTRY, "vm.exec", NAME, "--", "sh", "-c", "yes | head -c 3000000"],
        env={**vm.env, **extra_env, "LEAN_MARK": str(vm.marks / "pipe")}, cwd=vm.cwd, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    ) as proc:  # fmt: skip
        assert proc.stdout is not None and proc.stderr is not None
        assert proc.stdout.read(1) == b"y"
        proc.stdout.close()
        err = proc.stderr.read()
        return proc.wait(timeout=120), err


@pytest.mark.boot
def test_vm_exec_into_a_reader_that_goes_away_ends_quietly_on_both_paths(vm: Where) -> None:
    assert _first_byte_then_close(vm, {}) == _first_byte_then_close(vm, FULL) == (141, b"")


def _guest_sleepers(vm: Where) -> int:
    return int(vm.lkctl("vm.exec", NAME, "--", "sh", "-c", "ps | grep -c '[s]leep 60'").out or b"0")


@pytest.mark.boot
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT], ids=lambda s: s.name)
def test_vm_exec_interrupted_ends_the_same_on_both_paths(vm: Where, sig: signal.Signals) -> None:
    before = _guest_sleepers(vm)
    lean = _interrupted(vm, {}, sig)
    after_lean = _guest_sleepers(vm)
    full = _interrupted(vm, FULL, sig)
    after_full = _guest_sleepers(vm)
    assert lean == full == (130, b"lkctl: interrupted\n")
    # What an interrupted exec leaves in the guest is the same on both paths. (Today: the command keeps running on
    # both, as with `ssh host cmd` without a terminal; vm.exec -t, on the full path, ends it with the terminal.)
    assert after_lean - before == after_full - after_lean
    vm.lkctl("vm.exec", NAME, "--", "pkill", "-f", "sleep 60")


def _boot_text(b: bytes) -> bytes:
    """vm.run -d's output with what differs between two boots made equal: IDs, ports, seconds, boot phases seen,
    and whether the image had to be built first (the first boot with an empty shared cache builds it)."""
    b = re.sub(rb"\b[0-9a-f]{8}\b", b"ID", b)
    b = re.sub(rb"127\.0\.0\.1:\d+", b"127.0.0.1:PORT", b)
    lines = b.splitlines(keepends=True)
    return b"".join(line for line in lines if not re.match(rb"lkctl: (booting \S+: |built /)", line))


@pytest.mark.boot
def test_a_successful_vm_run_d_says_the_same_through_the_full_cli(vm: Where) -> None:
    assert vm.booted is not None
    full = vm.lkctl("vm.run", "--image=minimal", "-d", "--name", NAME + "2", env=FULL, timeout=900)
    try:
        assert full.invoke and full.code == 0, full.err
        lean = vm.booted
        assert _boot_text(lean.out) == _boot_text(full.out) == b"ID\n"
        assert _boot_text(lean.err).replace(NAME.encode(), b"N") == _boot_text(full.err).replace(
            (NAME + "2").encode(), b"N"
        )
    finally:
        vm.lkctl("vm.rm", "--force", NAME + "2", env=FULL, timeout=120)


_KEPT = {"id_ed25519", "ssh_host_ed25519_key", "known_hosts", "vm.json"}


def _modes(home: Path) -> list[tuple[str, int]]:
    """Each directory and secret-holding file under `home` (VM IDs made equal) with its permission bits."""
    return sorted(
        (re.sub(r"\b[0-9a-f]{8}\b", "ID", str(p.relative_to(home))), p.stat().st_mode & 0o777)
        for p in home.rglob("*")
        if p.is_dir() or p.name in _KEPT
    )


def _run_interrupted(home: Path, env: dict[str, str], phase: bytes, sig: int) -> tuple[int, bytes]:
    argv = ["vm.run", "-d", "--image=minimal", "--name", "cut"]
    env = {**env, "LKCTL_HOME": str(home), "LEAN_MARK": str(home.parent / "mark")}
    code, err = _signalled(argv, env, home.parent, on_stderr=True, marker=phase, sig=sig, timeout=120)
    return code, err.splitlines()[-1]


@pytest.mark.boot
@pytest.mark.parametrize(
    ("phase", "sig"),
    [(b"booting and waiting", signal.SIGTERM), (b"cut: kernel", signal.SIGINT), (b"init done", signal.SIGTERM)],
    ids=["before-qemu-SIGTERM", "kernel-SIGINT", "init-SIGTERM"],
)
def test_vm_run_d_interrupted_leaves_the_same_state_on_both_paths(
    vm: Where, tmp_path: Path, phase: bytes, sig: signal.Signals
) -> None:
    seen = []
    for label, extra in (("lean", {}), ("full", FULL)):
        home = tmp_path / label / "lk"
        home.mkdir(parents=True)
        code, last = _run_interrupted(home, {**vm.env, **extra}, phase, sig)
        assert (code, last) == (130, b"lkctl: interrupted"), label
        assert not qemu_pids_for(home), f"{label}: QEMU left running"
        ps = subprocess.run(
            [str(BIN / "lkctl"), "vm.ps", "--all"], env={**vm.env, "LKCTL_HOME": str(home)}, capture_output=True,
            timeout=60, check=True,
        )  # fmt: skip
        rows = re.sub(rb"\s+\d+s\s+", b" AGE ", _boot_text(ps.stdout))
        modes = _modes(home)
        seen.append((rows, modes))
    assert seen[0] == seen[1]
    rows, modes = seen[0]
    if phase != b"booting and waiting":  # QEMU ran: the VM stays listed, as failed, with its secrets private
        assert b" error " in rows, rows
        assert ("state/vms/ID/id_ed25519", 0o600) in modes and ("state/vms/ID", 0o700) in modes, modes

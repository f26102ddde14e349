"""Every task, asked for help both ways and mistyped: a usage answer, the right exit code, never a traceback.

The table runs the real `lkctl` Program in-process (what the console script calls; an exception escaping it would
fail the test as it would print a traceback); a few cases run the installed `lkctl` binary itself.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lkctl.cli import make_program
from lkctl.tasks import ns
from lkctl.tasks._adapter import RESERVED_SHORT_FLAGS

pytestmark = pytest.mark.integration

CONTEXTS = {c.name: c for c in ns.to_contexts() if c.name is not None}
TASKS = sorted(CONTEXTS)
LKCTL = Path(sys.executable).with_name("lkctl")


def lkctl(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run `lkctl ARGV...` in-process; (exit code, stdout, stderr)."""
    code = 0
    try:
        make_program().run(["lkctl", *argv])
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    out, err = capsys.readouterr()
    return code, out, err


def test_the_table_covers_every_task_of_every_collection() -> None:
    assert {n.partition(".")[0] for n in TASKS} >= {"vm", "image", "template", "doctor"}
    assert len(TASKS) == len(ns.tasks) + sum(len(c.task_names) for c in ns.collections.values())


@pytest.mark.parametrize("flag", ["--help", "-h"])
@pytest.mark.parametrize("task", TASKS)
def test_every_task_prints_its_usage_for_help(capsys: pytest.CaptureFixture[str], task: str, flag: str) -> None:
    code, out, err = lkctl(capsys, task, flag)
    assert (code, err) == (0, "")
    usage = out.splitlines()[0]
    assert usage.startswith(f"Usage: lkctl {task}")
    for p in CONTEXTS[task].positional_args:
        assert p.name is not None and p.name.upper().replace("-", "_") in usage.split()
    assert "Options:" in out


@pytest.mark.parametrize("task", TASKS)
def test_help_comes_first_even_after_positionals(capsys: pytest.CaptureFixture[str], task: str) -> None:
    words = ["x"] * len(CONTEXTS[task].positional_args)
    code, out, _ = lkctl(capsys, task, *words, "--help")
    assert code == 0 and out.startswith(f"Usage: lkctl {task}")


@pytest.mark.parametrize("task", TASKS)
def test_core_help_before_a_task_names_it_too(capsys: pytest.CaptureFixture[str], task: str) -> None:
    code, out, _ = lkctl(capsys, "--help", task)
    assert code == 0 and out.startswith(f"Usage: lkctl {task}")


@pytest.mark.parametrize("task", TASKS)
def test_a_mistyped_task_gets_one_line_naming_the_right_one(capsys: pytest.CaptureFixture[str], task: str) -> None:
    head, dot, tail = task.rpartition(".")
    typo = f"{head}{dot}{tail[1]}{tail[0]}{tail[2:]}"
    if typo == task:  # ssh-config: swapping two equal letters is no typo; drop one instead
        typo = f"{head}{dot}{tail[1:]}"
    code, out, err = lkctl(capsys, typo)
    assert (code, out) == (2, "")
    assert err.count("\n") == 1 and err.startswith(f"lkctl: no task {typo!r}") and task in err


@pytest.mark.parametrize("task", TASKS)
def test_a_mistyped_option_is_named_with_a_suggestion(capsys: pytest.CaptureFixture[str], task: str) -> None:
    ctx = CONTEXTS[task]
    options = [a for a in ctx.args.values() if not a.positional]
    words = ["x"] * len(ctx.positional_args)
    if not options:
        code, _, err = lkctl(capsys, task, *words, "--bogus")
        assert code in (2, 125) and err.startswith(f"lkctl: {task} has no option --bogus")
        return
    long = next(n for n in options[0].names if len(n) > 1)
    typo = f"--{long[:-1]}{long[-1] * 2}"
    code, out, err = lkctl(capsys, task, *words, typo)
    assert out == ""
    assert code == (125 if task in ("vm.exec", "vm.shell") else 2)
    assert err.count("\n") == 1 and f"did you mean --{long}?" in err, err


def test_no_task_short_flag_takes_a_core_flag() -> None:
    core = {n for a in make_program().initial_context.args.values() for n in a.names if len(n) == 1}
    assert core == set(RESERVED_SHORT_FLAGS)
    for task, ctx in CONTEXTS.items():
        shorts = [n for a in ctx.args.values() for n in a.names if len(n) == 1]
        assert not set(shorts) & core, task
        assert len(shorts) == len(set(shorts)), task


@pytest.mark.parametrize("flag", ["--dry", "-R", "--echo", "--hide=both", "--pty", "--warn-only", "-T", "--write-pyc"])
def test_invokes_shell_command_flags_are_refused_with_a_reason(capsys: pytest.CaptureFixture[str], flag: str) -> None:
    code, out, err = lkctl(capsys, flag, "vm.ps")
    assert (code, out) == (2, "")
    assert err.startswith("lkctl: ") and err.count("\n") == 1
    code, _, err = lkctl(capsys, "--help")
    assert code == 0


def test_core_help_lists_no_flag_that_does_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = lkctl(capsys, "--help")
    assert code == 0
    for gone in ("--dry", "--echo", "--hide", "--pty", "--warn-only", "--command-timeout", "--prompt-for-sudo"):
        assert gone not in out
    assert "vm.run" in out and "image.ls" in out and "template.ls" in out


def test_a_command_without_dashes_says_to_put_it_after_them(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = lkctl(capsys, "vm.exec", "box", "uname", "-a")
    assert code == 125
    assert err == "lkctl: vm.exec takes the command after --: lkctl vm.exec VM -- uname ... (lkctl vm.exec --help)\n"


def test_an_image_without_its_flag_suggests_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = lkctl(capsys, "vm.run", "minimal")
    assert code == 2 and "did you mean --image minimal?" in err


def test_a_missing_positional_and_a_bad_number_are_one_line_each(capsys: pytest.CaptureFixture[str]) -> None:
    assert lkctl(capsys, "vm.stop")[::2] == (2, "lkctl: vm.stop needs VM (lkctl vm.stop --help)\n")
    code, _, err = lkctl(capsys, "vm.run", "--memory", "lots")
    assert code == 2 and err.startswith("lkctl: --memory 'lots': expected a number") and err.count("\n") == 1
    code, _, err = lkctl(capsys, "vm.start", "x", "--timeout", "lots")
    assert code == 2 and err == "lkctl: --timeout 'lots': expected a number of seconds, e.g. 180\n"
    code, _, err = lkctl(capsys, "dev.boot", "--cpus", "lots")  # an INT option invoke itself casts
    assert code == 2 and err == "lkctl: 'lots' is not a whole number (lkctl TASK --help shows each option's type)\n"


def test_a_missing_config_file_is_an_error(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, err = lkctl(capsys, "-f", str(tmp_path / "nope.yaml"), "vm.ps")
    assert (code, out) == (2, "")
    assert "nope.yaml does not exist" in err


def test_the_real_binary_exits_quietly_when_its_reader_is_gone(tmp_path: Path) -> None:
    # a pipe whose reader has already gone: every write fails at once, as after `| head -1` has read its line
    r, w = os.pipe()
    os.close(r)
    env = {**os.environ, "LKCTL_HOME": str(tmp_path)}
    try:
        for argv in (["template.ls"], ["vm.ps", "--all"], ["image.ls"], ["--help"], ["vm.stop", "--help"]):
            done = subprocess.run([str(LKCTL), *argv], stdout=w, stderr=subprocess.PIPE, env=env, timeout=60)
            assert b"Traceback" not in done.stderr and b"BrokenPipe" not in done.stderr, argv
            assert done.returncode in (0, 141), argv
    finally:
        os.close(w)


def test_the_real_binary_answers_help_and_typos(tmp_path: Path) -> None:
    env = {**os.environ, "LKCTL_HOME": str(tmp_path)}
    done = subprocess.run([str(LKCTL), "vm.stop", "--help"], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0 and done.stdout.startswith("Usage: lkctl vm.stop [OPTIONS] VM")
    done = subprocess.run([str(LKCTL), "vm.runn"], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 2 and "did you mean vm.run" in done.stderr and "Traceback" not in done.stderr


def test_invoke_keeps_its_own_help_for_a_task(tmp_path: Path) -> None:
    invoke = Path(sys.executable).with_name("invoke")
    repo = Path(__file__).resolve().parents[2]
    done = subprocess.run([str(invoke), "--help", "vm.stop"], capture_output=True, text=True, cwd=repo, timeout=60)
    assert done.returncode == 0 and "vm.stop" in done.stdout and "--timeout" in done.stdout


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_invoke_task_help_after_the_task_is_not_swallowed_by_a_positional(flag: str) -> None:
    invoke = Path(sys.executable).with_name("invoke")
    repo = Path(__file__).resolve().parents[2]
    for task in ("vm.stop", "vm.exec", "template.show"):
        done = subprocess.run([str(invoke), task, flag], capture_output=True, text=True, cwd=repo, timeout=60)
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith(f"Usage: invoke {task} "), done.stdout

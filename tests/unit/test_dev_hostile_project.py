"""dev.*'s project handling against odd paths and a hostile guest: the guest writes /app, so every project file
the host reads for detection or `.lkctl/test.yaml` may be a FIFO, a link to /dev/zero, huge, deeply nested or not
UTF-8; the project directory must hold nothing but the project (it is shared read-write with the guest)."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from lkctl.dev.detect import detect_test_command
from lkctl.dev.project import Project, check_shareable, dev_vm_name, find_project
from lkctl.errors import ConfigError


def _in_child(call: str, root: Path) -> str:
    """`call` (an expression over `root`, detect_* and load_test_config) evaluated in a child Python limited to
    1 GiB of memory and 20 s, so code that blocks or reads without end fails the test instead of the machine;
    its repr, or the ConfigError's message after "ConfigError: "."""
    code = (
        "import sys; from pathlib import Path\n"
        "from lkctl.dev.detect import detect_serve_command, detect_test_command, load_test_config\n"
        "from lkctl.errors import ConfigError\n"
        f"root = Path({str(root)!r})\n"
        f"try:\n    print(repr({call}))\nexcept ConfigError as e:\n    print('ConfigError: ' + e.message)\n"
    )

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))

    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=20,
                             preexec_fn=limit, check=False)  # fmt: skip
    except subprocess.TimeoutExpired:
        pytest.fail(f"{call} blocked for more than 20 s")
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip()


# --- names and paths ----------------------------------------------------------------------------------------


def test_a_project_path_that_is_not_utf8_gets_a_vm_name(tmp_path: Path) -> None:
    odd = Path(os.fsdecode(bytes(tmp_path) + b"/caf\xe9 \xff"))
    odd.mkdir()
    name = find_project(odd).vm_name
    assert name.startswith("dev-caf-") and name == dev_vm_name(odd) != dev_vm_name(tmp_path)


def test_unicode_spaces_and_long_names_give_valid_distinct_names(tmp_path: Path) -> None:
    a, b = tmp_path / ("Проект ü " + "x" * 200), tmp_path / ("проект Ü " + "x" * 200)
    na, nb = dev_vm_name(a), dev_vm_name(b)
    assert na != nb  # same after normalisation (lower case, non-ASCII dropped, cut at 24): the digest tells them apart
    assert na.rsplit("-", 1)[0] == nb.rsplit("-", 1)[0]
    assert len(na) <= 4 + 24 + 9 and all(c.isalnum() or c in "-_." for c in na)


def test_a_project_reached_through_a_symlink_is_the_same_project(tmp_path: Path) -> None:
    (tmp_path / "real" / ".git").mkdir(parents=True)
    (tmp_path / "real" / "sub").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert find_project(tmp_path / "link" / "sub") == find_project(tmp_path / "real")


def test_a_removed_working_directory_is_one_line(tmp_path: Path) -> None:
    gone = tmp_path / "gone"
    gone.mkdir()
    here = os.getcwd()
    os.chdir(gone)
    try:
        gone.rmdir()
        with pytest.raises(ConfigError, match="the working directory no longer exists"):
            find_project()
    finally:
        os.chdir(here)


# --- what may be shared -----------------------------------------------------------------------------------


def _project(root: Path) -> Project:
    return Project(root, dev_vm_name(root))


def test_the_home_directory_and_those_above_it_are_never_shared(tmp_path: Path) -> None:
    home = tmp_path / "home" / "me"
    (home / "src" / "app").mkdir(parents=True)
    for root, what in ((home, "is your home directory"), (tmp_path, "is a directory above your home")):
        with pytest.raises(ConfigError, match=what) as e:
            check_shareable(_project(root), home=home)
        assert "\n" not in e.value.message and "project's own directory" in e.value.message
    check_shareable(_project(home / "src" / "app"), home=home)  # a project in the home directory is fine


def test_a_dotfiles_repository_in_home_makes_dev_boot_refuse(tmp_path: Path) -> None:
    home = tmp_path / "me"
    (home / ".git").mkdir(parents=True)
    (home / "notes").mkdir()
    project = find_project(home / "notes")  # the home's own repository is the project
    assert project.root == home
    with pytest.raises(ConfigError, match="is your home directory"):
        check_shareable(project, home=home)


def test_a_project_holding_lkctls_state_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LKCTL_HOME", str(tmp_path / "proj" / ".lkctl-home"))
    for var in ("LKCTL_STATE_DIR", "LKCTL_DATA_DIR", "LKCTL_CONFIG_DIR"):
        monkeypatch.delenv(var, raising=False)
    (tmp_path / "proj" / ".lkctl-home" / "state").mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"holds lkctl's state \(VM keys, pinned host keys\)"):
        check_shareable(_project(tmp_path / "proj"), home=tmp_path / "me")
    check_shareable(_project(tmp_path / "other"), home=tmp_path / "me")


# --- files the guest may have planted -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["package.json", "composer.json", "Makefile", "pyproject.toml", "tox.ini"])
def test_detection_skips_a_fifo_instead_of_blocking(tmp_path: Path, name: str) -> None:
    os.mkfifo(tmp_path / name)
    assert _in_child("detect_test_command(root)", tmp_path) == "None"
    assert _in_child("detect_serve_command(root, 8000).reason", tmp_path) == "'no server detected: static files'"


@pytest.mark.parametrize("name", ["package.json", "Makefile", "setup.cfg"])
def test_detection_skips_a_link_to_an_endless_device(tmp_path: Path, name: str) -> None:
    (tmp_path / name).symlink_to("/dev/zero")
    assert _in_child("detect_test_command(root)", tmp_path) == "None"


def test_detection_ignores_a_package_json_too_deep_to_parse(tmp_path: Path) -> None:
    (tmp_path / "package.json").write_text("[" * 200_000 + "]" * 200_000)
    assert detect_test_command(tmp_path) is None


def test_detection_reads_files_reached_through_a_symlink_inside_the_project(tmp_path: Path) -> None:
    (tmp_path / "real.json").write_text('{"scripts": {"test": "jest"}}')
    (tmp_path / "package.json").symlink_to("real.json")
    detected = detect_test_command(tmp_path)
    assert detected is not None and detected.command == "npm test"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p.write_bytes(b"command: \xff\n"), "is not UTF-8 text"),
        (lambda p: os.mkfifo(p), "is not a regular file"),
        (lambda p: p.symlink_to("/dev/zero"), "is not a regular file"),
        (lambda p: p.write_bytes(b"#" * (2 << 20)), "is larger than 1 MiB"),
    ],
    ids=["not-utf8", "fifo", "dev-zero", "huge"],
)
def test_a_test_yaml_that_is_no_small_text_file_is_one_line(tmp_path: Path, make: object, message: str) -> None:
    path = tmp_path / ".lkctl" / "test.yaml"
    path.parent.mkdir()
    make(path)  # type: ignore[operator]
    assert _in_child("load_test_config(root)", tmp_path) == f"ConfigError: {path}: {message}"


# --- what the guest prints ----------------------------------------------------------------------------------


def test_a_boot_failure_shows_the_guest_console_without_its_terminal_escape_sequences(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # dev.boot of a VM whose guest broke its sshd ends in this message, printed to the user's terminal: the guest
    # chose those bytes (here: OSC 52, which some terminals turn into a clipboard write, and a screen clear)
    from lkctl.runtime.console import diagnose_not_ready
    from lkctl.runtime.state import VmRecord

    monkeypatch.setenv("LKCTL_STATE_DIR", str(tmp_path))
    record = VmRecord(id="0badc0de", name="dev-x", image="lkctl-dev", image_format="kernel+initrd", created="",
                      memory=1024, cpus=2, ssh_port=2222)  # fmt: skip
    record.dir.mkdir(parents=True)
    (record.dir / "console.log").write_bytes(
        b"lkctl-init: start\r\n\x1b]52;c;cm0gLXJmIH4K\x07\x1b[2Jok\tdone\xc2\x9b\n"
    )  # \xc2\x9b: U+009B, CSI
    message = diagnose_not_ready(record, "ssh did not answer")
    assert "\x1b" not in message and "\x07" not in message and "\x9b" not in message  # C1 controls too
    assert message.endswith("lkctl-init: start\n\\x1b]52;c;cm0gLXJmIH4K\\x07\\x1b[2Jok\tdone\\x9b")

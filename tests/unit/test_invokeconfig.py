"""lkctl.invokeconfig: what sends a lean CLI path to the full CLI, and which config files invoke cannot merge."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

from lkctl.errors import ConfigError
from lkctl.invokeconfig import (
    OWN_ENV,
    SETTINGS_ENV,
    check_config_files,
    full_cli_needed,
    invoke_config_files,
)
from lkctl.launcher import LEAN_PATHS
from tests.conftest import REPO


def settings_env_names() -> frozenset[str]:
    """Every `LKCTL_<SECTION>_<KEY>` variable lkctl.settings.load_settings reads, from the settings themselves."""
    import dataclasses

    from lkctl.settings import Settings

    names = set()
    for sec in dataclasses.fields(Settings):
        default = getattr(Settings(), sec.name)
        if dataclasses.is_dataclass(default):
            names |= {f"LKCTL_{sec.name}_{f.name}".upper() for f in dataclasses.fields(default)}
    return frozenset(names)


@pytest.fixture
def places(tmp_path: Path) -> tuple[Path, Path]:
    home, project = tmp_path / "home", tmp_path / "proj"
    home.mkdir()
    (project / ".git").mkdir(parents=True)
    return project, home


@pytest.mark.parametrize(
    ("environ", "needed"),
    [
        ({}, False),
        ({"LKCTL_HOME": "/x", "LKCTL_CACHE_DIR": "/y", "PATH": "/bin"}, False),
        ({"LKCTL_VM_MEMORY": "2048", "LKCTL_DEV_CPUS": "2", "LKCTL_HOSTS": "[]"}, False),
        ({"LKCTL_BENCH_FULL_CLI": "1"}, True),
        ({"LKCTL_VM_MEMORY": "2048", "LKCTL_VM_MEMROY": "1"}, True),  # a misspelt one: invoke's business
        ({"LKCTL_LKCTL_VM_MEMORY": "2048"}, True),
        ({"LKCTL_RUN_ECHO": "1"}, True),  # invoke's run.echo
        ({"LKCTL_RUNTIME_CONFIG": "x.yaml"}, True),
        ({"INVOKE_RUNTIME_CONFIG": "x.yaml"}, True),
        ({"INVOKE_DEBUG": "1"}, True),
    ],
)
def test_which_variables_send_a_lean_path_to_the_full_cli(
    places: tuple[Path, Path], environ: dict[str, str], needed: bool
) -> None:
    project, home = places
    assert full_cli_needed(environ, project, home) is needed


@pytest.mark.parametrize(
    ("text", "needed"),
    [
        ("lkctl:\n  vm:\n    memory: 2048\n", False),
        ("lkctl:\n  vm:\n    memory: not-a-number\n", False),  # the lean vm.run says it as the full one does
        ("lkctl:\n  hosts: []\n", False),
        ("# nothing\n", False),
        ("lkctl: [\n", True),
        ("lkctl:\n", True),
        ("run:\n  echo: true\n", True),
        ("lkctl: {}\ntasks: {}\n", True),
    ],
)
def test_a_project_config_file_the_lean_paths_cannot_judge_sends_them_to_the_full_cli(
    places: tuple[Path, Path], text: str, needed: bool
) -> None:
    project, home = places
    (project / "lkctl.yaml").write_text(text)
    assert full_cli_needed({}, project, home) is needed


def test_a_json_or_py_config_file_sends_the_lean_paths_to_the_full_cli(places: tuple[Path, Path]) -> None:
    project, home = places
    (home / ".lkctl.py").write_text("lkctl = {}\n")
    assert full_cli_needed({}, project, home)


def test_invoke_loads_the_first_suffix_of_each_place_only(places: tuple[Path, Path]) -> None:
    project, home = places
    for name in (".lkctl.yml", ".lkctl.yaml"):
        (home / name).write_text("lkctl: {}\n")
    (project / "lkctl.yml").write_text("lkctl: {}\n")
    (project / "invoke.yaml").write_text("lkctl: [\n")  # only lkctl.configfiles reads it (for vm.run's settings)
    assert invoke_config_files(project, home)[-2:] == [home / ".lkctl.yaml", project / "lkctl.yml"]


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("lkctl: [\n", "cannot read config file {path}: "),
        ("- a\n", "config file {path}: expected a mapping at the top, got list"),
        ("lkctl:\n  templates:\n    variables: 1\n", "config file {path}: `lkctl.templates.variables:` must be"),
        ("run: 5\n", "config file {path}: `run:` must be"),
    ],
)
def test_check_config_files_names_the_file_and_the_key(places: tuple[Path, Path], text: str, said: str) -> None:
    project, home = places
    path = project / "lkctl.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        check_config_files(project, home, defaults={"run": {}, "lkctl": {"templates": {"variables": {}}}})
    assert caught.value.message.startswith(said.format(path=path))


def test_every_lkctl_variable_the_code_reads_is_known_to_the_lean_paths() -> None:
    read = set()
    for source in (REPO / "lkctl").rglob("*.py"):
        read |= set(re.findall(r"\"(LKCTL_[A-Z_]+[A-Z])\"", source.read_text()))
    read -= {"LKCTL_LKCTL_", "LKCTL_RUNTIME_CONFIG"}  # prefixes/variables that send to the full CLI on purpose
    assert read <= OWN_ENV | settings_env_names()


def test_each_lean_path_names_a_function() -> None:
    for word, lean in LEAN_PATHS.items():
        assert callable(getattr(importlib.import_module(lean.module), lean.function)), word


def test_the_settings_variables_written_out_are_those_the_settings_read() -> None:
    assert settings_env_names() == SETTINGS_ENV

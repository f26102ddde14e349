"""The lean `lkctl image.build SOURCE` path: which command lines it takes, and when config sends it to invoke."""

from __future__ import annotations

from pathlib import Path

import pytest

from lkctl.fastbuild import config_may_apply, lean_source


@pytest.mark.parametrize(
    ("args", "source"),
    [
        (["image.build", "minimal"], "minimal"),
        (["image.build", "vm.yml"], "vm.yml"),
        (["image.build"], None),
        (["image.build", "--help"], None),
        (["image.build", "-h"], None),
        (["image.build", "minimal", "--format", "tar"], None),
        (["image.build", "--name", "x", "minimal"], None),
        (["image.build", ""], None),
        (["image.ls", "minimal"], None),
        (["vm.exec", "x", "--", "true"], None),
    ],
)
def test_only_the_plain_form_takes_the_lean_path(args: list[str], source: str | None) -> None:
    assert lean_source(args) == source


def test_no_config_anywhere_allows_the_lean_path(tmp_path: Path) -> None:
    (tmp_path / "repo" / ".git").mkdir(parents=True)
    assert not config_may_apply({"LKCTL_HOME": "/x", "PATH": "/bin"}, tmp_path / "repo", tmp_path / "home")


@pytest.mark.parametrize(
    "name",
    [
        "LKCTL_VM_MEMORY",
        "LKCTL_RUN_ECHO",
        "LKCTL_RUNTIME_CONFIG",
        "LKCTL_LKCTL_X",
        "INVOKE_RUNTIME_CONFIG",
        "INVOKE_DEBUG",
    ],
)
def test_a_variable_invoke_could_read_sends_it_to_the_full_cli(tmp_path: Path, name: str) -> None:
    assert config_may_apply({name: "1"}, tmp_path, tmp_path / "home")


@pytest.mark.parametrize("suffix", [".yaml", ".yml", ".json", ".py"])
def test_a_user_or_project_config_file_sends_it_to_the_full_cli(tmp_path: Path, suffix: str) -> None:
    home, repo = tmp_path / "home", tmp_path / "repo"
    home.mkdir()
    (repo / "sub" / ".git").mkdir(parents=True)
    (home / f".lkctl{suffix}").write_text("")
    assert config_may_apply({}, repo / "sub", home)
    (home / f".lkctl{suffix}").unlink()
    (repo / "sub" / "tasks.py").write_text("")  # the project dir: its lkctl.* files are config
    (repo / "sub" / f"lkctl{suffix}").write_text("")
    assert config_may_apply({}, repo / "sub", home)


@pytest.mark.parametrize("name", ["invoke.yaml", "invoke.yml"])
def test_a_projects_invoke_yaml_sends_it_to_the_full_cli(tmp_path: Path, name: str) -> None:
    # the full CLI reads its `lkctl:` key (lkctl.configfiles): template variables or dirs there change the build
    (tmp_path / "repo" / ".git").mkdir(parents=True)
    (tmp_path / "repo" / name).write_text("lkctl:\n  templates:\n    variables: {FOO: bar}\n")
    assert config_may_apply({}, tmp_path / "repo", tmp_path / "home")


def test_a_project_above_the_repository_root_does_not_count(tmp_path: Path) -> None:
    (tmp_path / "lkctl.yaml").write_text("")  # outside the repository: invoke would not load it either
    (tmp_path / "repo" / ".git").mkdir(parents=True)
    assert not config_may_apply({}, tmp_path / "repo", tmp_path / "home")


@pytest.mark.parametrize("name", [".lkctl.yaml", ".lkctl.yml", ".lkctl.json", ".lkctl.py"])
def test_a_config_name_that_is_not_a_file_sends_it_to_the_full_cli(tmp_path: Path, name: str) -> None:
    # invoke opens every config name that exists and fails on a directory (IsADirectoryError): the lean path must
    # not answer where the full CLI fails
    home = tmp_path / "home"
    (home / name).mkdir(parents=True)
    (tmp_path / "repo" / ".git").mkdir(parents=True)
    assert config_may_apply({}, tmp_path / "repo", home)

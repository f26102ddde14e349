"""The lean `lkctl vm.run -d` (lkctl.runtime.fastrun): which command lines and configurations it takes, the options
and settings it runs with."""

from __future__ import annotations

from pathlib import Path

import pytest

from lkctl.runtime.fastrun import PlainRun, config_tree, parse_plain_run, run_options
from lkctl.settings import load_settings


@pytest.mark.parametrize(
    ("args", "plain"),
    [
        (["vm.run", "--image=minimal", "-d"], PlainRun("minimal")),
        (["vm.run", "-d", "--image", "minimal", "--name", "t1"], PlainRun("minimal", "t1")),
        (["vm.run", "-i", "x.yml", "--detach", "-n", "web"], PlainRun("x.yml", "web")),
        (["vm.run", "--name=a", "--image=/srv/img", "-d"], PlainRun("/srv/img", "a")),
        (["vm.run", "--image=minimal", "-d", "--snapshot", "--name", "b"], PlainRun("minimal", "b", snapshot=True)),
    ],
)
def test_the_plain_detached_run_is_taken(args: list[str], plain: PlainRun) -> None:
    assert parse_plain_run(args) == plain


@pytest.mark.parametrize(
    "args",
    [
        ["vm.run", "--image=minimal"],  # foreground
        ["vm.run", "-d"],  # no image: the full CLI says what to type
        ["vm.run", "--image=minimal", "-d", "--memory", "512"],  # any other option
        ["vm.run", "--image=minimal", "-d", "-d"],
        ["vm.run", "--image=minimal", "-d", "--snapshot", "--snapshot"],
        ["vm.run", "--image=minimal", "--snapshot"],  # foreground: the full CLI refuses it in its own words
        ["vm.run", "--image=minimal", "-d", "--snapshot", "--dry-run"],
        ["vm.run", "--image=a", "--image=b", "-d"],
        ["vm.run", "--image", "-d"],  # a value that looks like a flag
        ["vm.run", "-d", "--image"],  # a flag without its value
        ["vm.run", "-i=minimal", "-d"],  # invoke's short form with `=`: left to invoke
        ["vm.run", "--image=minimal", "-d", "--help"],
        ["vm.run", "--image=minimal", "-d", "--", "x"],
        ["vm.exec", "t1", "--", "true"],
        ["-f", "x.yaml", "vm.run", "--image=minimal", "-d"],
        [],
    ],
)
def test_anything_else_goes_to_the_full_cli(args: list[str]) -> None:
    assert parse_plain_run(args) is None


def test_config_is_the_shared_files_tree(tmp_path: Path) -> None:
    home, project = tmp_path / "home", tmp_path / "project"
    home.mkdir()
    project.mkdir()
    (home / ".lkctl.yaml").write_text("lkctl:\n  vm:\n    memory: 700\n    cpus: 3\n")
    (project / "invoke.yaml").write_text("lkctl:\n  vm:\n    cpus: 2\n")
    tree = config_tree({}, start=project, home=home)
    assert tree == {"vm": {"memory": 700, "cpus": 2}}


@pytest.mark.parametrize(
    ("environ", "extra_file"),
    [
        ({"LKCTL_RUNTIME_CONFIG": "x.yaml"}, ""),
        ({"INVOKE_RUNTIME_CONFIG": "x.yaml"}, ""),
        ({"LKCTL_LKCTL_VM_MEMORY": "512"}, ""),  # invoke's own env mapping of the `lkctl` tree
        ({}, "home/.lkctl.json"),
        ({}, "project/lkctl.py"),
    ],
)
def test_config_only_invoke_reads_goes_to_the_full_cli(
    tmp_path: Path, environ: dict[str, str], extra_file: str
) -> None:
    (tmp_path / "home").mkdir()
    (tmp_path / "project").mkdir()
    (tmp_path / "project" / "tasks.py").write_text("")
    if extra_file:
        (tmp_path / extra_file).write_text("{}")
    assert config_tree(environ, start=tmp_path / "project", home=tmp_path / "home") is None


def test_options_are_the_defaults_and_sizes_only_from_a_source() -> None:
    settings = load_settings({"lkctl": {"vm": {"memory": 700, "cpus": 3, "virtiofs": True}}}, env={})
    opts = run_options(PlainRun("minimal", "t1"), settings, {"memory": "config", "cpus": ""})
    assert (opts.name, opts.detach, opts.wait_ssh, opts.memory, opts.cpus) == ("t1", True, True, 700, 0)
    assert opts.virtiofs and opts.hypervisor == settings.vm.hypervisor
    assert (opts.ports, opts.volumes, opts.env, opts.uefi, opts.network) == ((), (), (), None, None)
    assert not (opts.snapshot or opts.auto_remove or opts.ssh_port or opts.ready_timeout)
    assert run_options(PlainRun("minimal", snapshot=True), settings, {"memory": "", "cpus": ""}).snapshot

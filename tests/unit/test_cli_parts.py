"""Pure parts of the CLI: did-you-mean, usage lines, parse-error wording, config precedence, doctor's reasons."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from lkctl.cli import did_you_mean, explain_parse_error, option_help, task_usage
from lkctl.configfiles import config_files, explicit_values, merge_trees, project_dir, read_files, setting_source
from lkctl.doctor import DEMO_PACKAGES, TEST_PACKAGES, accel_reason, missing_packages
from lkctl.errors import ConfigError
from lkctl.tasks import ns

REPO = Path(__file__).resolve().parents[2]
CONTEXTS = {c.name: c for c in ns.to_contexts() if c.name is not None}


def test_did_you_mean_finds_typos_and_bare_names() -> None:
    names = list(CONTEXTS)
    assert did_you_mean("vm.runn", names)[0] == "vm.run"
    assert did_you_mean("ps", names) == ["vm.ps"]
    assert "image.ls" in did_you_mean("image.lss", names)
    assert did_you_mean("zzzzzz", names) == []


def test_usage_line_shows_positionals_and_the_command_after_dashes() -> None:
    assert task_usage("lkctl", "vm.exec", ["vm"], True) == "Usage: lkctl vm.exec [OPTIONS] VM -- COMMAND [ARG...]"
    assert task_usage("lkctl", "vm.cp", ["src", "dst"], False) == "Usage: lkctl vm.cp SRC DST"


def test_option_help_shows_value_kind_repeatability_and_negation() -> None:
    args = {a.attr_name or a.name: a for a in CONTEXTS["vm.run"].args.values()}
    assert option_help(args["memory"])[0] == "-m STRING, --memory=STRING"
    spec, text = option_help(args["port"])
    assert spec == "-p VALUE, --port=VALUE" and text.count("repeatable") == 1
    assert option_help(args["wait"])[0] == "-w, --[no-]wait"
    assert option_help(args["ssh_port"])[0] == "-s STRING, --ssh-port=STRING"


@pytest.mark.parametrize(
    ("message", "task", "expected"),
    [
        ("No idea what 'uname' is!", "vm.exec", r"^vm\.exec takes the command after --: lkctl vm\.exec VM -- uname"),
        ("No idea what 'minimal' is!", "vm.run", r"did you mean --image minimal\?"),
        ("No idea what '--timout' is!", "vm.stop", r"^vm\.stop has no option --timout; did you mean --timeout\?"),
        ("No idea what '--dry' is!", "vm.run", r"^--dry is an invoke option"),
        ("'vm.stop' did not receive required positional arguments: 'vm'", "vm.stop", r"^vm\.stop needs VM "),
    ],
)
def test_parse_errors_say_what_to_type(message: str, task: str, expected: str) -> None:
    out = explain_parse_error(message, CONTEXTS[task])
    assert re.search(expected, out), out
    assert "\n" not in out
    assert out.endswith(f"(lkctl {task} --help)") or message.endswith("--dry' is!")


def test_project_dir_stops_at_the_repository_root(tmp_path: Path) -> None:
    (tmp_path / "lkctl.yaml").write_text("lkctl: {}\n")
    repo = tmp_path / "repo"
    (repo / ".git").mkdir(parents=True)
    (repo / "sub").mkdir()
    assert project_dir(repo / "sub") is None  # the lkctl.yaml above the repository does not count
    (repo / "invoke.yaml").write_text("lkctl: {}\n")
    assert project_dir(repo / "sub") == repo


def test_config_files_order_user_then_project_invoke_then_lkctl(tmp_path: Path) -> None:
    home, proj = tmp_path / "home", tmp_path / "proj"
    home.mkdir()
    (proj / ".git").mkdir(parents=True)
    (home / ".lkctl.yaml").write_text("lkctl: {vm: {memory: 1000, cpus: 3}}\n")
    (proj / "invoke.yaml").write_text("lkctl: {vm: {memory: 2000}}\n")
    (proj / "lkctl.yaml").write_text("lkctl: {vm: {memory: 3000}}\n")
    files = config_files(proj, home=home)
    assert files[-3:] == [home / ".lkctl.yaml", proj / "invoke.yaml", proj / "lkctl.yaml"]
    assert read_files(files)["vm"] == {"memory": 3000, "cpus": 3}


def test_a_broken_config_file_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "lkctl.yaml"
    bad.write_text("lkctl: [\n")
    with pytest.raises(ConfigError, match=r"cannot read config file .*lkctl\.yaml"):
        read_files([bad])


def test_explicit_values_drop_what_only_repeats_a_default() -> None:
    tree = {"vm": {"memory": 1024, "cpus": 4}, "sources": {"retries": 5}}
    assert explicit_values(tree) == {"vm": {"cpus": 4}}
    assert merge_trees({"vm": {"memory": 1, "cpus": 2}}, {"vm": {"cpus": 3}}) == {"vm": {"memory": 1, "cpus": 3}}


def test_setting_source_environment_beats_config() -> None:
    tree = {"vm": {"memory": 2048}}
    assert setting_source("vm", "memory", tree, {"LKCTL_VM_MEMORY": "512"}) == "environment LKCTL_VM_MEMORY"
    assert setting_source("vm", "memory", tree, {}) == "config"
    assert setting_source("vm", "cpus", tree, {}) == ""


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"chosen": "tcg", "setting": "auto", "system": "linux", "kvm_exists": True, "kvm_usable": True},
         "tcg: /dev/kvm is present but a test guest hung under KVM"),
        ({"chosen": "tcg", "setting": "auto", "system": "linux", "kvm_exists": False, "kvm_usable": False},
         "tcg: there is no /dev/kvm"),
        ({"chosen": "tcg", "setting": "auto", "system": "linux", "kvm_exists": True, "kvm_usable": False},
         "tcg: /dev/kvm is not readable and writable"),
        ({"chosen": "kvm", "setting": "auto", "system": "linux", "kvm_exists": True, "kvm_usable": True},
         "kvm: /dev/kvm works"),
        ({"chosen": "tcg", "setting": "tcg", "system": "linux", "kvm_exists": True, "kvm_usable": True},
         "tcg: set by lkctl.vm.accel=tcg"),
    ],
)  # fmt: skip
def test_accelerator_reason(kwargs: dict[str, object], expected: str) -> None:
    chosen = str(kwargs.pop("chosen"))
    assert accel_reason(chosen, **kwargs).startswith(expected)  # type: ignore[arg-type]


def test_doctor_and_bootstrap_agree_on_the_package_sets() -> None:
    text = (REPO / "bootstrap").read_text()

    def bash_array(name: str) -> list[str]:
        body = re.search(rf"^{name}=\((.*?)\)", text, re.S | re.M)
        assert body, name
        return [w for line in body.group(1).splitlines() for w in line.split("#")[0].split()]

    assert bash_array("DEMO_PACKAGES") == list(DEMO_PACKAGES)
    assert bash_array("TEST_PACKAGES") == list(TEST_PACKAGES)
    assert not set(DEMO_PACKAGES) & {"nginx", "docker-registry", "skopeo"}
    assert missing_packages(("a", "b"), lambda p: p == "a") == ["b"]

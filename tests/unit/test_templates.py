from pathlib import Path

import pytest
import yaml

from lkctl.errors import ConfigError
from lkctl.templates import Template, find_template, list_templates, render_template, template_variables


def tpl(tmp_path: Path, text: str) -> Template:
    p = tmp_path / "t.yml"
    p.write_text(text)
    return Template("t", p, "user")


def test_builtin_minimal_template_exists() -> None:
    t = find_template("minimal")
    assert t is not None and t.source == "builtin"
    assert "minimal" in [x.name for x in list_templates()]


def test_names_are_never_paths() -> None:
    assert find_template("../etc/passwd") is None
    assert find_template("a/b") is None


def test_required_and_optional_variables(tmp_path: Path) -> None:
    t = tpl(tmp_path, "a: ${A}\nb: ${B:-two}\nc: $${LITERAL}\n")
    assert template_variables(t.path.read_text()) == (["A"], {"B": "two"})


def test_values_with_yaml_syntax_cannot_break_the_document(tmp_path: Path) -> None:
    t = tpl(tmp_path, "key: ${V}\nother: ${W:-x}\n")
    value = 'ssh-ed25519 AAAA: "quoted" # not a comment\nsecond line'
    out = yaml.safe_load(render_template(t, {"V": value}))
    assert out == {"key": value, "other": "x"}


def test_literal_dollar_brace_is_kept(tmp_path: Path) -> None:
    t = tpl(tmp_path, "cmd: echo $${HOME} ${X:-y}\n")
    assert render_template(t, {}) == "cmd: echo ${HOME} y\n"


def test_all_missing_variables_are_reported_at_once_with_lines(tmp_path: Path) -> None:
    t = tpl(tmp_path, "a: ${A}\nb: ${B}\nc: ${A}\n")
    with pytest.raises(ConfigError, match=r"A \(line 1\), B \(line 2\)"):
        render_template(t, {})

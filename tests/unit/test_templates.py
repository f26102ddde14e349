"""Templates: discovery and precedence, names, variables from every source, YAML-safe rendering, jinja, errors."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml

from lkctl.build.spec import parse_spec
from lkctl.errors import ConfigError, ImageError
from lkctl.settings import load_settings
from lkctl.templates import (
    Template,
    TemplateInputs,
    check_name,
    discover_templates,
    find_template,
    inputs_from_settings,
    list_templates,
    render_template,
    require_template,
    resolve_values,
    template_meta,
    template_variables,
)
from lkctl.templates.substitute import substitute, variables_of

BUILTINS = ["dev", "linuxkit-sshd", "minimal", "server-php"]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def tpl(tmp_path: Path, text: str, name: str = "t.yml") -> Template:
    p = write(tmp_path / name, text)
    return Template(p.name.split(".")[0], p, "user")


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A fake repository (its root has .git) with a working directory two levels down."""
    root = tmp_path / "repo"
    (root / ".git").mkdir(parents=True)
    (root / "a" / "b").mkdir(parents=True)
    return root


# -- discovery ------------------------------------------------------------------------------------------------
def test_builtins_are_found_outside_any_workspace(tmp_path: Path) -> None:
    found = {t.name: t for t in list_templates(tmp_path)}
    assert sorted(found) == BUILTINS
    assert all(t.source == "builtin" and t.description for t in found.values())


def test_workspace_template_shadows_builtin_and_discovery_says_so(repo: Path) -> None:
    mine = write(repo / ".lkctl" / "templates" / "minimal.yml", "# team minimal\nkernel: {image: x/k:1}\n")
    t = find_template("minimal", repo / "a" / "b")
    assert t is not None and (t.path, t.source, t.description) == (mine, "workspace", "team minimal")
    rows = [x for x in discover_templates(repo / "a" / "b") if x.name == "minimal"]
    assert [(x.source, x.shadowed_by) for x in rows] == [("workspace", None), ("builtin", mine)]


def test_nearest_workspace_dir_wins_and_search_stops_at_the_repository_root(repo: Path) -> None:
    outer = write(repo / ".lkctl" / "templates" / "x.yml", "a: 1\n")
    inner = write(repo / "a" / ".lkctl" / "templates" / "x.yml", "a: 2\n")
    write(repo.parent / ".lkctl" / "templates" / "above.yml", "a: 3\n")  # outside the repository
    t = find_template("x", repo / "a" / "b")
    assert t is not None and t.path == inner
    assert [x.path for x in discover_templates(repo / "a" / "b") if x.name == "x"] == [inner, outer]
    assert find_template("above", repo / "a" / "b") is None


def test_outside_a_repository_only_the_working_directory_counts(tmp_path: Path) -> None:
    write(tmp_path / ".lkctl" / "templates" / "parent.yml", "a: 1\n")
    here = write(tmp_path / "w" / ".lkctl" / "templates" / "here.yml", "a: 1\n")
    assert find_template("parent", tmp_path / "w") is None
    t = find_template("here", tmp_path / "w")
    assert t is not None and t.path == here


def test_precedence_workspace_user_config_builtin(repo: Path, lkctl_home: Path, tmp_path: Path) -> None:
    user = write(lkctl_home / "config" / "templates" / "dev.yml", "a: user\n")
    extra = write(tmp_path / "extra" / "dev.yml", "a: extra\n")
    write(tmp_path / "extra" / "only-extra.yaml", "a: extra\n")
    rows = [t for t in discover_templates(repo, [tmp_path / "extra"]) if t.name == "dev"]
    assert [(t.source, t.path) for t in rows[:2]] == [("user", user), ("config", extra)]
    assert rows[2].source == "builtin" and all(t.shadowed_by == user for t in rows[1:])
    work = write(repo / ".lkctl" / "templates" / "dev.yaml", "a: work\n")
    assert find_template("dev", repo, [tmp_path / "extra"]).path == work  # type: ignore[union-attr]
    assert find_template("only-extra", repo, [tmp_path / "extra"]) is not None


def test_yml_yaml_and_j2_all_count_and_yml_wins_in_one_directory(tmp_path: Path) -> None:
    d = tmp_path / ".lkctl" / "templates"
    yml, yaml_ = write(d / "a.yml", "a: 1\n"), write(d / "a.yaml", "a: 2\n")
    write(d / "b.yaml", "b: 1\n")
    write(d / "c.yml.j2", "c: {{ 1 }}\n")
    write(d / "README.md", "not a template\n")
    write(d / "_partial.yml.j2", "x: 1\n")  # not a valid name: an include, not a template
    (d / "sub.yml").mkdir()
    found = {t.name: t for t in list_templates(tmp_path) if t.source == "workspace"}
    assert sorted(found) == ["a", "b", "c"] and found["a"].path == yml and found["c"].jinja
    shadowed = [t for t in discover_templates(tmp_path) if t.name == "a" and t.shadowed_by]
    assert [t.path for t in shadowed] == [yaml_]


def test_unreadable_or_missing_directories_are_empty(tmp_path: Path) -> None:
    assert [t.name for t in list_templates(tmp_path, [tmp_path / "nope"])] == BUILTINS


@pytest.mark.parametrize("bad", ["../etc/passwd", "a/b", "", ".hidden", "x..y", "dev.yml", "-x", "a b", "é"])
def test_names_are_never_paths(bad: str) -> None:
    assert find_template(bad) is None
    with pytest.raises(ConfigError, match="invalid template name"):
        check_name(bad)
    with pytest.raises(ConfigError, match="invalid template name"):
        require_template(bad)


def test_unknown_template_suggests_close_names() -> None:
    with pytest.raises(ImageError, match=r"unknown template 'devv'; did you mean dev\?"):
        require_template("devv")
    with pytest.raises(ImageError, match="templates: dev, linuxkit-sshd, minimal, server-php"):
        require_template("zzz")


# -- variables ------------------------------------------------------------------------------------------------
def test_required_and_optional_variables_with_lines(tmp_path: Path) -> None:
    v = variables_of("a: ${A}\nb: ${B:-two}\nc: $${LITERAL}\nd: ${A} ${C:-}\ne: ${B:-other}\n")
    assert v.required == {"A": [1, 4]}
    assert v.optional == {"B": "two", "C": ""}  # the first default is the one shown
    assert v.names == ["A", "B", "C"]


def test_a_name_required_anywhere_is_required(tmp_path: Path) -> None:
    v = variables_of("a: ${X:-d}\nb: ${X}\n")
    assert v.required == {"X": [2]} and v.optional == {}


def test_values_come_from_var_then_config_then_env_then_vm_keys(tmp_path: Path) -> None:
    t = tpl(tmp_path, "a: ${A}\nb: ${B:-x}\nc: ${C:-x}\nd: ${D:-x}\nk: ${SSH_KEY}\nh: ${SSH_HOST_KEY:-}\n")
    calls = []

    def keys() -> dict[str, str]:
        calls.append(1)
        return {"SSH_KEY": "ssh-ed25519 K", "SSH_HOST_KEY": "PEM", "SSH_HOST_KEY_PUB": "P"}

    inputs = TemplateInputs(
        variables={"A": "cli"},
        config={"A": "config", "B": "config"},
        environ={"A": "env", "B": "env", "C": "env", "X_D": "prefixed", "D": "plain"},
        env_prefix="X_",
        vm_keys=keys,
    )
    values = resolve_values(t, inputs)
    assert values == {"A": "cli", "B": "config", "D": "prefixed", "SSH_KEY": "ssh-ed25519 K", "SSH_HOST_KEY": "PEM"}
    assert calls == [1]
    no_env = TemplateInputs(environ=None, vm_keys=keys, variables={"SSH_KEY": "mine", "A": "a"})
    assert resolve_values(t, no_env)["SSH_KEY"] == "mine"  # given explicitly: the VM's key is not used


def test_vm_keys_are_made_only_for_templates_that_use_them(tmp_path: Path) -> None:
    def boom() -> dict[str, str]:
        raise AssertionError("keys made for a template that does not need them")

    assert resolve_values(tpl(tmp_path, "a: ${A:-1}\n"), TemplateInputs(vm_keys=boom)) == {}


def test_an_unused_var_is_an_error_that_suggests_the_close_name(tmp_path: Path) -> None:
    t = tpl(tmp_path, "memory: ${MEMORY:-1}\n")
    with pytest.raises(ConfigError, match="has no variable MEMRY; did you mean MEMORY"):
        resolve_values(t, TemplateInputs(variables={"MEMRY": "2"}))
    assert resolve_values(t, TemplateInputs(config={"UNRELATED": "1"})) == {}  # config is shared: fine


def test_settings_feed_template_inputs(tmp_path: Path) -> None:
    settings = load_settings(
        {"lkctl": {"templates": {"variables": {"N": 5, "B": True}, "dirs": f"{tmp_path}/a:{tmp_path}/b"}}},
        env={"LKCTL_TEMPLATES_ENV_PREFIX": "P_"},
    )
    inputs = inputs_from_settings(settings.templates, {"X": "1"}, environ={"P_Y": "2"})
    assert inputs.config == {"N": "5", "B": "true"} and inputs.environ is None
    assert inputs.extra_dirs == (tmp_path / "a", tmp_path / "b")
    asked = inputs_from_settings(settings.templates, use_env=True, environ={"P_Y": "2"})
    assert asked.environ == {"P_Y": "2"} and asked.env_prefix == "P_"
    with pytest.raises(ConfigError, match=r"lkctl\.templates\.variables must be a mapping"):
        load_settings({"lkctl": {"templates": {"variables": ["A=1"]}}})


def test_all_missing_variables_are_reported_at_once_with_template_and_lines(tmp_path: Path) -> None:
    t = tpl(tmp_path, "a: ${A}\nb: ${B}\nc: ${A}\nd: ${C:-ok}\n")
    with pytest.raises(ConfigError) as e:
        render_template(t, {})
    assert str(t.path) in str(e.value)
    assert "A (lines 1, 3), B (line 2)" in str(e.value) and "C" not in str(e.value).split("needs")[1]


# -- rendering: values that must not break the YAML --------------------------------------------------------
TRICKY = [
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOv0 user@host",
    "a: b",
    'say "hi"',
    "it's",
    "x # not a comment",
    "#hash first",
    "- leading dash",
    "* star",
    "&anchor",
    "*alias",
    "!tag value",
    "%percent",
    "@at",
    "`backtick",
    "{braces}",
    "[brackets]",
    ",comma, more",
    "? question",
    "| pipe",
    "> gt",
    "multi\nline\nscript\n",
    "#!/bin/sh\nset -e\necho 'a: b' # c\n  indented\n\n- item\n",
    "  leading spaces\nsecond",
    "trailing newlines\n\n\n",
    "no trailing newline\nend",
    "\nleading newline",
    "tab\tinside",
    "yes",
    "no",
    "on",
    "null",
    "~",
    "0644",
    "1e3",
    "0o17",
    "0x1F",
    ".inf",
    "",
    " ",
    "back\\slash",
    "unicode é 日本 🚀",
    "bell\x07 and nul-free control",
    "crlf\r\nline",
    "nel\x85 and ls\u2028",
    "${NOT_EXPANDED} stays",
    "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----\n",
]

# (template with ${V}, the value expected at each key once V is spliced in)
CONTEXTS = [
    ("whole: ${V}\n", lambda v: {"whole": v}),
    ("whole: ${V}  # trailing comment\nnext: 1\n", lambda v: {"whole": v, "next": 1}),
    ("list:\n  - ${V}\n  - after\n", lambda v: {"list": [v, "after"]}),
    ("nested:\n  - key: ${V}\n    other: x\n", lambda v: {"nested": [{"key": v, "other": "x"}]}),
    ("env:\n  - KEY=${V}\n", lambda v: {"env": ["KEY=" + v]}),
    ('dq: "pre ${V} post"\n', lambda v: {"dq": f"pre {v} post"}),
    ("sq: 'pre ${V} post'\n", lambda v: {"sq": f"pre {v} post"}),
    ("flow: [a, '${V}', ${V}]\n", lambda v: {"flow": ["a", v, v]}),
    ("map: {k: ${V}, j: 1}\n", lambda v: {"map": {"k": v, "j": 1}}),
    ("lit: |\n  first\n  ${V}\n  last\n", lambda v: {"lit": f"first\n{v}\nlast\n"}),
    ("lit: |\n  mid ${V} end\n", lambda v: {"lit": f"mid {v} end\n"}),
    ("lit: |-\n  ${V}\n", lambda v: {"lit": v.rstrip("\n")}),  # the block strips trailing newlines
    ("fold: >\n  a ${V}\n  b\n", lambda v: {"fold": f"a {v} b\n"}),
    ("# comment ${V}\nk: 1\n", lambda v: {"k": 1}),
    ("key ${V}: value\n", lambda v: {f"key {v}": "value"}),
]


def _expected_whole(v: str) -> object:
    return {"": "", " ": " "}.get(v, v)


@pytest.mark.parametrize("value", TRICKY, ids=[repr(v)[:30] for v in TRICKY])
@pytest.mark.parametrize(("text", "expect"), CONTEXTS, ids=[c[0].split(":")[0] for c in CONTEXTS])
def test_any_value_in_any_position_round_trips_through_yaml(text: str, expect: object, value: str) -> None:
    rendered = substitute(text, {"V": value})
    loaded = yaml.safe_load(rendered)
    expected = expect(value)  # type: ignore[operator]
    if text.startswith("fold"):  # folding applies to the author's text, not to the value spliced into it
        assert loaded["fold"].startswith("a " + value)
    else:
        assert loaded == expected, rendered


@pytest.mark.parametrize("value", ["2048", "-1", "0", "1.5", "true", "false"])
def test_a_whole_value_that_is_a_number_or_boolean_keeps_its_type(value: str) -> None:
    assert yaml.safe_load(substitute("v: ${V}\n", {"V": value}))["v"] == yaml.safe_load(value)
    assert yaml.safe_load(substitute('v: "${V}"\n', {"V": value}))["v"] == value  # quoted: always a string
    assert yaml.safe_load(substitute("v: x${V}\n", {"V": value}))["v"] == "x" + value


@pytest.mark.parametrize("value", ["1e3", "0o17", "0x1F", ".inf", "Null", "TRUE", "~", "yes", "on", "007"])
def test_values_a_yaml_1_2_reader_would_not_take_as_strings_are_quoted(value: str) -> None:
    out = substitute("v: ${V}\n", {"V": value})
    assert out == f'v: "{value}"\n'  # LinuxKit (Go yaml.v3) and pyyaml both read a string


def test_multiline_whole_value_becomes_a_literal_block_keeping_the_comment() -> None:
    out = substitute("a:\n  script: ${S}  # run me\n  b: 1\n", {"S": "echo 1\necho 2\n"})
    assert out == "a:\n  script: | # run me\n    echo 1\n    echo 2\n  b: 1\n"


def test_value_inside_a_literal_block_keeps_the_authors_layout() -> None:
    text = "files:\n  - contents: |\n      #!/bin/sh\n      # setup\n      ${CMD}\n      echo done\n    mode: '0755'\n"
    out = substitute(text, {"CMD": "a\nb"})
    assert "      # setup\n      a\n      b\n      echo done\n" in out
    assert yaml.safe_load(out)["files"][0] == {"contents": "#!/bin/sh\n# setup\na\nb\necho done\n", "mode": "0755"}


def test_literal_dollar_brace_and_no_double_expansion() -> None:
    out = substitute("cmd: echo $${HOME} ${X:-y} $$PID\nv: ${V}\n", {"V": "${X}"})
    assert yaml.safe_load(out) == {"cmd": "echo ${HOME} y $$PID", "v": "${X}"}


def test_adjacent_variables_and_defaults_with_colons_and_paths() -> None:
    out = substitute("u: ${A:-a}${B:-b}${C:-c}\nurl: ${URL:-http://localhost:8080/x}\n", {"B": "X"})
    assert yaml.safe_load(out) == {"u": "aXc", "url": "http://localhost:8080/x"}


def test_a_comment_stays_one_line() -> None:
    out = substitute("# ${V}\nk: 1\n", {"V": "x\nevil: 1"})
    assert out == "# x\\nevil: 1\nk: 1\n"


def test_template_that_is_not_yaml_before_substitution_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"t\.yml\) is not valid YAML at line 2: mapping values"):
        render_template(tpl(tmp_path, "a: ${A:-1}\nb: c: d\n"), {})
    with pytest.raises(ConfigError, match=r"t\.yml\) rendered to invalid YAML at line 2: .*\n  2 \| b: \[x"):
        render_template(tpl(tmp_path, "a: ${A:-1}\nb: [x\n\n"), {})  # found only by the parser, at the end


def test_values_spliced_into_a_linuxkit_spec_keep_it_valid(tmp_path: Path) -> None:
    t = tpl(
        tmp_path,
        """
        kernel:
          image: lkctl.local/kernel:latest
          cmdline: "console=ttyS0 ${CMDLINE:-quiet}"
        services:
          - name: web
            image: lkctl.local/sshd:latest
            env:
              - GREETING=${GREETING}
            command: [sh, -c, "${SCRIPT}"]
        files:
          - path: etc/script
            contents: ${SCRIPT}
            mode: "0755"
          - path: etc/motd
            contents: |
              Welcome to ${HOST:-vm}
        """,
    )
    values = {"GREETING": 'hello: "world" # !', "SCRIPT": "#!/bin/sh\necho 'a: b'\n", "HOST": "x: y"}
    spec = parse_spec(render_template(t, values), "t")
    assert spec.kernel.cmdline == "console=ttyS0 quiet"
    assert spec.services[0].config.env == ("GREETING=" + values["GREETING"],)
    assert spec.services[0].config.command == ("sh", "-c", values["SCRIPT"])
    assert [f.contents for f in spec.files] == [values["SCRIPT"], "Welcome to x: y\n"]


# -- jinja ----------------------------------------------------------------------------------------------------
def test_jinja_template_with_loops_conditionals_and_the_yaml_filter(tmp_path: Path) -> None:
    t = tpl(
        tmp_path,
        """
        # lkctl: memory={{ MEMORY | default(512) }}
        services:
        {% for name in NAMES.split(",") %}
          - name: {{ name | yaml }}
            image: lkctl.local/sshd:latest
        {% endfor %}
        {% if DEBUG is defined %}
        debug: {{ DEBUG | yaml }}
        {% endif %}
        key: {{ KEY | yaml }}
        """,
        name="j.yml.j2",
    )
    assert t.jinja
    v = template_variables(t)
    assert sorted(v.required) == ["KEY", "NAMES"] and v.optional == {"MEMORY": "512", "DEBUG": ""}
    key = 'a: "b" # c\nline2 \\ é'
    out = yaml.safe_load(render_template(t, {"NAMES": "a,b: c", "KEY": key}))
    assert out == {"services": [{"name": "a", "image": "lkctl.local/sshd:latest"},
                                {"name": "b: c", "image": "lkctl.local/sshd:latest"}], "key": key}  # fmt: skip
    assert template_meta(render_template(t, {"NAMES": "a", "KEY": "k", "MEMORY": "64"})).memory == 64


def test_jinja_reports_every_missing_variable_with_lines(tmp_path: Path) -> None:
    t = tpl(tmp_path, "a: {{ A }}\n{% if B %}b: 1{% endif %}\nc: {{ C.x }}\nd: {{ A }}\n", name="m.yml.j2")
    with pytest.raises(ConfigError, match=r"A \(lines 1, 4\), B \(line 2\), C \(line 3\)"):
        render_template(t, {})


def test_jinja_output_that_is_not_yaml_shows_the_rendered_line(tmp_path: Path) -> None:
    t = tpl(tmp_path, "a: 1\nb: {{ V }}\n", name="bad.yml.j2")
    with pytest.raises(ConfigError) as e:
        render_template(t, {"V": "x: y: z"})
    assert "rendered to invalid YAML at line 2: mapping values are not allowed here\n  2 | b: x: y: z" in str(e.value)


def test_jinja_is_sandboxed(tmp_path: Path) -> None:
    t = tpl(tmp_path, "a: {{ ''.__class__.__mro__[1].__subclasses__() }}\n", name="evil.yml.j2")
    with pytest.raises(ConfigError, match="jinja2"):
        render_template(t, {})


# -- metadata and built-ins -------------------------------------------------------------------------------
def test_header_metadata_sizes_the_vm() -> None:
    assert template_meta("# desc\n# lkctl: memory=2048 cpus=2\nkernel: {}\n").memory == 2048
    assert template_meta("#lkctl: memory=2G\n").memory == 2048
    assert template_meta("a: 1\n# lkctl: memory=5\n").memory == 0  # only the header comment counts
    with pytest.raises(ConfigError, match="positive whole number"):
        template_meta("# lkctl: cpus=two\n")
    with pytest.raises(ConfigError, match="unknown `# lkctl:` setting 'disk=1'"):
        template_meta("# lkctl: disk=1\n")


FAKE_KEYS = {
    "SSH_KEY": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIK",
    "SSH_HOST_KEY": "-----BEGIN OPENSSH PRIVATE KEY-----\nb3Blbn: NzaC1\n-----END OPENSSH PRIVATE KEY-----\n",
    "SSH_HOST_KEY_PUB": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIH",
}


@pytest.mark.parametrize("name", BUILTINS)
def test_builtin_templates_render_and_validate_as_linuxkit_yaml(name: str) -> None:
    t = require_template(name)
    values = {k: v for k, v in FAKE_KEYS.items() if k in template_variables(t).names}
    spec = parse_spec(render_template(t, values), name)
    assert spec.kernel.image and spec.services
    if values:
        contents = {f.path: f.contents for f in spec.files}
        assert contents["etc/ssh/ssh_host_ed25519_key"] == FAKE_KEYS["SSH_HOST_KEY"]
        assert contents["root/.ssh/authorized_keys"] == FAKE_KEYS["SSH_KEY"]


def test_dev_template_is_sized_by_its_variables() -> None:
    t = require_template("dev")
    meta = template_meta(render_template(t, {"MEMORY": "3072", "CPUS": "4"}))
    assert (meta.memory, meta.cpus) == (3072, 4)
    assert (template_meta(render_template(t, {})).memory, template_meta(render_template(t, {})).cpus) == (2048, 2)
    spec = parse_spec(render_template(t, {"HOSTNAME": "box"}), "dev")
    assert {f.path: f.contents for f in spec.files}["etc/hostname"] == "box\n"
    assert spec.init == ("lkctl.local/dev:latest", "lkctl.local/init:latest")  # init's files win over dev's


def test_a_vms_own_keys_fill_an_upstream_template(lkctl_home: Path) -> None:
    from lkctl.images import staged_vm_keys

    with staged_vm_keys() as keys:
        inputs = TemplateInputs(vm_keys=keys.variables)
        spec = parse_spec(render_template(require_template("linuxkit-sshd"), inputs), "linuxkit-sshd")
        assert keys.made
        contents = {f.path: f.contents for f in spec.files}
        assert contents["etc/ssh/ssh_host_ed25519_key"] == (keys.directory / "ssh_host_ed25519_key").read_text()
        pub = (keys.directory / "id_ed25519.pub").read_text().split()[:2]
        assert contents["root/.ssh/authorized_keys"] == " ".join(pub)
        staged = keys.directory
    assert not staged.exists()

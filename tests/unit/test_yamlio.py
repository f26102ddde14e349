"""lkctl.yamlio parses with libyaml but must give exactly what PyYAML's Python loader gives: values, token marks
and, for a text it refuses, the same error."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lkctl import yamlio
from lkctl.build._schema import Loader as SpecLoader
from lkctl.build.spec import parse_spec
from lkctl.errors import SpecError

ROOT = Path(__file__).resolve().parents[2]
TEXTS = sorted(
    p for pattern in ("templates/*.yml", "images/*/*.yml", "tests/data/yaml/*/*.yml") for p in ROOT.glob(pattern)
)
ODD = [
    "a: héllo ${X}\nb: [ü, 'ß${Y:-z}']\nc: |\n  ✓ ${Z}\n",
    'k: "\\u00e9 ${A}"\nl: >\n  folded\n  text\n',
    "- yes\n- no\n- on\n- true\n- False\n- 0x1f\n- 1_000\n- ~\n- 2001-12-14\n",
    "---\na: 1\n---\nb: [1, {c: d}]\n...\n",
    "",
    "\ufeffa: 1\nb: x\ufeffy\n",
    "a: b\x85c\n",
]


def _samples() -> list[str]:
    return [p.read_text() for p in TEXTS] + ODD


def test_the_samples_are_there() -> None:
    assert len(TEXTS) >= 20, TEXTS
    assert yaml.__with_libyaml__, "PyYAML without libyaml: lkctl works, but slower; the wheel has it"


@pytest.mark.parametrize("text", _samples())
def test_values_are_those_of_the_python_loader(text: str) -> None:
    for loader in (yaml.SafeLoader, SpecLoader):
        try:
            want = list(yaml.load_all(text, Loader=loader))
        except yaml.YAMLError:
            continue  # an invalid sample: see the error tests
        assert yamlio.load_all(text, loader) == want
    if text.count("---") <= 1 and "\n...\n" not in text:
        try:
            want_one = yaml.safe_load(text)
        except yaml.YAMLError:
            return
        assert yamlio.safe_load(text) == want_one


def _tokens(tokens: object) -> list[tuple[object, ...]]:
    return [
        (type(t).__name__, t.start_mark.index, t.end_mark.index, getattr(t, "value", None), getattr(t, "style", None))
        + ((t.start_mark.column,) if isinstance(t, yaml.KeyToken | yaml.BlockEntryToken) else ())
        for t in tokens  # type: ignore[attr-defined]
    ]


@pytest.mark.parametrize("text", _samples())
def test_tokens_have_the_marks_and_styles_of_the_python_scanner(text: str) -> None:
    try:
        want = _tokens(yaml.scan(text, Loader=yaml.SafeLoader))
    except yaml.YAMLError as e:
        with pytest.raises(yaml.YAMLError) as got:
            _tokens(yamlio.scan(text))
        assert str(got.value) == str(e)
        return
    assert _tokens(yamlio.scan(text)) == want


@pytest.mark.parametrize(
    "text",
    [
        "a: [1, 2\nb: 3\n",
        "a: b: c\n",
        "key: 'unterminated\n",
        "\tx: 1\n",
        "a: 1\na: 2\n",
        "- a\nb: 1\n",
        "a: \x00\n",
        "a: \udcff\n",  # a lone surrogate (os.environ's undecodable bytes): libyaml cannot even be given it
    ],
)
def test_a_refused_text_gets_the_python_loaders_error(text: str) -> None:
    for loader in (yaml.SafeLoader, SpecLoader) if text != "a: 1\na: 2\n" else (SpecLoader,):  # duplicate keys
        with pytest.raises(yaml.YAMLError) as want:
            list(yaml.load_all(text, Loader=loader))
        with pytest.raises(yaml.YAMLError) as got:
            yamlio.load_all(text, loader)
        assert str(got.value) == str(want.value)


def test_the_spec_loader_keeps_yaml_1_2_booleans_and_refuses_duplicate_keys() -> None:
    assert yamlio.load_all("a: yes\nb: true\nc: on\n", SpecLoader) == [{"a": "yes", "b": True, "c": "on"}]
    with pytest.raises(SpecError, match="duplicate key 'kernel'"):
        parse_spec("kernel: {image: a}\nkernel: {image: b}\n", "t.yml")

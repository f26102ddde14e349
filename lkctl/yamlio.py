"""YAML parsed by libyaml when PyYAML was built with it, with the pure-Python parser's results and error messages.

PyYAML's pure-Python scanner is most of an unchanged `image.build`'s own time (a template is scanned for its
variables, checked, then parsed as a spec; each base image's recipe is read). The C parser is about ten times
faster and feeds the same Python resolvers and constructors, so a loader's custom tags, booleans and duplicate-key
check behave the same. Errors are the exception: libyaml words them differently, so a text the C parser refuses is
parsed again by the Python loader, which raises the error users have always seen (or, were the two parsers ever
to disagree, returns its result).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import yaml

__all__ = ["load_all", "safe_load", "scan"]


_C_VARIANTS: dict[str, type[Any]] = {}
_ODD_BREAKS = frozenset("\ufeff\x85\u2028\u2029")


def _c_variant(loader: type[yaml.SafeLoader]) -> type[Any] | None:
    """`loader`'s resolvers and constructors over libyaml's parser (made once per loader); None without libyaml.
    Read when first used: a constructor added to `loader` later is not seen."""
    import yaml

    if not getattr(yaml, "__with_libyaml__", False):
        return None
    key = f"{loader.__module__}.{loader.__qualname__}"
    if key not in _C_VARIANTS:
        _C_VARIANTS[key] = type(
            f"C{loader.__name__}",
            (yaml.CSafeLoader,),
            {
                "yaml_implicit_resolvers": loader.yaml_implicit_resolvers,
                "yaml_path_resolvers": loader.yaml_path_resolvers,
                "yaml_constructors": dict(loader.yaml_constructors),
                "yaml_multi_constructors": dict(loader.yaml_multi_constructors),
            },
        )
    return _C_VARIANTS[key]


def _python_loader(loader: type[yaml.SafeLoader] | None) -> type[yaml.SafeLoader]:
    import yaml

    return loader or yaml.SafeLoader


def load_all(text: str, loader: type[yaml.SafeLoader] | None = None) -> list[Any]:
    """Every document of `text`, as `yaml.load_all(text, Loader=loader)` gives them (default: SafeLoader)."""
    import yaml

    py = _python_loader(loader)
    fast = _c_variant(py)
    if fast is not None:
        try:
            return list(yaml.load_all(text, Loader=fast))
        except (yaml.YAMLError, UnicodeError):  # libyaml takes UTF-8: a lone surrogate cannot be encoded
            pass  # the Python loader says what is wrong, in its own words
    return list(yaml.load_all(text, Loader=py))


def safe_load(text: str) -> Any:
    """The one document of `text`, as `yaml.safe_load` gives it (None for an empty text)."""
    import yaml

    if getattr(yaml, "__with_libyaml__", False):
        try:
            return yaml.load(text, Loader=yaml.CSafeLoader)
        except (yaml.YAMLError, UnicodeError):  # libyaml takes UTF-8: a lone surrogate cannot be encoded
            pass
    return yaml.safe_load(text)


def scan(text: str) -> Iterator[yaml.Token]:
    """`yaml.scan(text, Loader=SafeLoader)`'s tokens with the same marks and values; a plain scalar's style is
    None under both parsers (libyaml says "")."""
    import yaml

    fast = _c_variant(yaml.SafeLoader)
    # the two scanners count a byte-order mark and the Unicode line breaks differently in their marks, and the
    # marks say where values are spliced in: such texts take the Python scanner
    if fast is not None and not _ODD_BREAKS.intersection(text):
        try:
            tokens = list(yaml.scan(text, Loader=fast))
        except (yaml.YAMLError, UnicodeError):  # libyaml takes UTF-8: a lone surrogate cannot be encoded
            pass
        else:
            for tok in tokens:
                if isinstance(tok, yaml.ScalarToken) and not tok.style:
                    tok.style = None
            return iter(tokens)
    return yaml.scan(text, Loader=yaml.SafeLoader)

"""`.j2` templates: jinja2 for users who need loops and conditionals. The one place lkctl imports jinja2.

Sandboxed (a workspace template comes with a cloned repository and must not run code on the host), undefined
names are errors, and every missing variable is reported at once: rendering is retried with each newly found
missing name stood in by a harmless undefined until none is left.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lkctl.errors import ConfigError
from lkctl.templates.substitute import Variables, missing_message, yaml_scalar

__all__ = ["jinja_variables", "render_jinja"]

_UNDEFINED = re.compile(r"^'([A-Za-z_][A-Za-z0-9_]*)' is undefined$")


def _environment(directory: Path) -> Any:
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(
        loader=jinja2.FileSystemLoader(str(directory)),  # {% include %} of files next to the template only
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters["yaml"] = yaml_scalar
    return env


def _lines_of(ast: Any, name: str) -> list[int]:
    from jinja2 import nodes

    return sorted({n.lineno for n in ast.find_all(nodes.Name) if n.name == name and n.ctx == "load"})


def jinja_variables(path: Path) -> Variables:
    """Names a `.j2` template reads from its context: optional where it gives a `default` or tests `defined`."""
    import jinja2
    from jinja2 import meta, nodes

    env = _environment(path.parent)
    try:
        ast = env.parse(path.read_text(encoding="utf-8"))
    except jinja2.TemplateSyntaxError as e:
        raise ConfigError(f"{path}:{e.lineno}: jinja2 syntax error: {e.message}") from None
    found = Variables()
    optional: dict[str, str] = {}
    for f in ast.find_all(nodes.Filter):
        if f.name in ("default", "d") and isinstance(f.node, nodes.Name):
            arg = f.args[0] if f.args else None
            optional.setdefault(f.node.name, str(arg.value) if isinstance(arg, nodes.Const) else "")
    for t in ast.find_all(nodes.Test):
        if t.name in ("defined", "undefined") and isinstance(t.node, nodes.Name):
            optional.setdefault(t.node.name, "")
    for name in sorted(meta.find_undeclared_variables(ast)):
        found.lines[name] = _lines_of(ast, name)
        if name in optional:
            found.optional[name] = optional[name]
        else:
            found.required[name] = found.lines[name]
    return found


def render_jinja(path: Path, values: Mapping[str, str], source: str) -> str:
    """Render a `.j2` template with `values` (StrictUndefined; the `yaml` filter quotes a value safely)."""
    import jinja2

    env = _environment(path.parent)
    try:
        template = env.get_template(path.name)
        ast = env.parse(path.read_text(encoding="utf-8"))
    except jinja2.TemplateSyntaxError as e:
        raise ConfigError(f"{source}, line {e.lineno}: jinja2 syntax error: {e.message}") from None
    context: dict[str, Any] = dict(values)
    missing: dict[str, list[int]] = {}
    while True:
        try:
            text: str = template.render(context)
        except jinja2.UndefinedError as e:
            m = _UNDEFINED.match(e.message or "")
            if m is None or m.group(1) in missing:
                raise ConfigError(f"{source}: {e.message}") from None
            missing[m.group(1)] = _lines_of(ast, m.group(1))
            context[m.group(1)] = jinja2.ChainableUndefined(name=m.group(1))  # go on to find the others
        except jinja2.TemplateError as e:
            raise ConfigError(f"{source}: jinja2: {e}") from None
        else:
            if missing:
                raise ConfigError(missing_message(source, missing))
            return text

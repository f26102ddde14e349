"""template.*: ls, show, vars, render."""

from __future__ import annotations

import json as _json
import sys
from pathlib import Path

from invoke.collection import Collection
from invoke.context import Context

from lkctl.tasks._adapter import adapt, parse_vars, settings_from, task
from lkctl.tasks._format import table

__all__ = ["ls", "render", "show", "vars_"]


def _extra_dirs(c: Context) -> tuple[Path, ...]:
    from lkctl.templates import inputs_from_settings

    return inputs_from_settings(settings_from(c).templates).extra_dirs


@task(help={"json": "print JSON"})
@adapt
def ls(c: Context, json: bool = False) -> None:
    """List templates: workspace, user, configured and built-in, marking those another one shadows."""
    from lkctl.templates import discover_templates

    found = discover_templates(extra=_extra_dirs(c))
    rows = [
        {
            "name": t.name,
            "source": t.source,
            "path": str(t.path),
            "description": t.description,
            "jinja": t.jinja,
            "shadowed_by": str(t.shadowed_by) if t.shadowed_by else None,
        }
        for t in found
    ]
    if json:
        print(_json.dumps(rows, indent=2))
        return
    if not rows:
        print("no templates", file=sys.stderr)
        return

    def short(text: str, width: int = 60) -> str:
        return text if len(text) <= width else text[: width - 1] + "…"

    body = [
        [t.name, t.source + (" (shadowed)" if t.shadowed_by else ""), short(t.description or "-"), str(t.path)]
        for t in found
    ]
    print(table(["NAME", "SOURCE", "DESCRIPTION", "PATH"], body))


@task(help={"name": "template name"})
@adapt
def show(c: Context, name: str) -> None:
    """Print a template as written (before variables are filled in)."""
    from lkctl.templates import read_template, require_template

    t = require_template(name, extra=_extra_dirs(c))
    text = read_template(t)
    print(f"# {t.name}: {t.source} template {t.path}", file=sys.stderr)
    sys.stdout.write(text)


@task(name="vars", help={"name": "template name", "json": "print JSON"})
@adapt
def vars_(c: Context, name: str, json: bool = False) -> None:
    """The variables a template uses: required ones, and optional ones with their defaults."""
    from lkctl.templates import KEY_VARIABLES, require_template, template_variables

    t = require_template(name, extra=_extra_dirs(c))
    v = template_variables(t)
    if json:
        out = {
            "template": t.name,
            "required": [{"name": n, "lines": lines} for n, lines in v.required.items()],
            "optional": [{"name": n, "default": d, "lines": v.lines[n]} for n, d in v.optional.items()],
            "filled_by_lkctl": [n for n in KEY_VARIABLES if n in v.lines],
        }
        print(_json.dumps(out, indent=2))
        return
    rows = [[n, "required", "-", ",".join(map(str, lines))] for n, lines in v.required.items()]
    rows += [[n, "optional", d if d else '""', ",".join(map(str, v.lines[n]))] for n, d in v.optional.items()]
    if not rows:
        print(f"template {t.name} uses no variables", file=sys.stderr)
        return
    print(table(["NAME", "KIND", "DEFAULT", "LINES"], rows))
    keys = [n for n in KEY_VARIABLES if n in v.lines]
    if keys:
        print(f"vm.run fills {', '.join(keys)} from the VM's own SSH keys", file=sys.stderr)


@task(
    iterable=["var"],
    help={
        "name": "template name",
        "var": "variable NAME=VALUE (repeatable)",
        "out": "write the YAML to this file instead of stdout",
        "env-vars": "also take variables from the environment (NAME, or lkctl.templates.env_prefix+NAME)",
    },
)
@adapt
def render(c: Context, name: str, var: list[str] | None = None, out: str = "", env_vars: bool = False) -> None:
    """Render a template to LinuxKit YAML (variables filled in, checked to be valid YAML)."""
    from lkctl.fsutil import atomic_write
    from lkctl.templates import inputs_from_settings, render_template, require_template

    inputs = inputs_from_settings(settings_from(c).templates, parse_vars(var), use_env=env_vars)
    text = render_template(require_template(name, extra=inputs.extra_dirs), inputs)
    if out:
        atomic_write(Path(out), text)
        print(f"lkctl: wrote {out}", file=sys.stderr)
    else:
        sys.stdout.write(text)


ns = Collection("template", ls, show, vars_, render)

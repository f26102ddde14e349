"""LinuxKit YAML templates: discovery, variables from every source, rendering that keeps the YAML valid.

A template is a LinuxKit YAML file with `${VAR}` (required), `${VAR:-default}` (optional) and `$${VAR}` (a
literal `${VAR}`), or a `.yml.j2` file rendered with jinja2. Values come from `--var NAME=VALUE`, then config
(`lkctl.templates.variables`), then the environment when asked (`--env-vars` or `lkctl.templates.use_env`), then
this VM's own SSH keys for `SSH_KEY`/`SSH_HOST_KEY`/`SSH_HOST_KEY_PUB`, then the template's defaults.

A `# lkctl: memory=${MEMORY:-2048} cpus=${CPUS:-2}` line in the header comment sizes the VM (LinuxKit YAML has
no such fields); `vm.run --memory/--cpus` still win.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lkctl.errors import ConfigError
from lkctl.templates.discovery import (
    SUFFIXES,
    Template,
    check_name,
    discover_templates,
    find_template,
    list_templates,
    require_template,
    template_dirs,
)

if TYPE_CHECKING:
    from lkctl.settings import TemplatesSettings
    from lkctl.templates.substitute import Variables, yaml_scalar

__all__ = [
    "KEY_VARIABLES",
    "SUFFIXES",
    "Template",
    "TemplateInputs",
    "TemplateMeta",
    "Variables",
    "check_name",
    "discover_templates",
    "find_template",
    "inputs_from_settings",
    "list_templates",
    "read_template",
    "render_template",
    "require_template",
    "resolve_values",
    "template_dirs",
    "template_meta",
    "template_variables",
    "yaml_scalar",
]


def __getattr__(name: str) -> Any:
    # the substitution module is imported when something is rendered or scanned: finding a template (what an
    # unchanged `image.build` does before its receipt answers) does not pay for it
    if name in ("Variables", "yaml_scalar"):
        from lkctl.templates import substitute

        return getattr(substitute, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


#: variables lkctl fills from the VM's own keys when nothing else gives them: the client public key (for
#: authorized_keys), the host private key (OpenSSH PEM) and its public half (what lkctl's known_hosts pins)
KEY_VARIABLES = ("SSH_KEY", "SSH_HOST_KEY", "SSH_HOST_KEY_PUB")
_META = re.compile(r"^#\s*lkctl:(.*)$")


@dataclass(frozen=True)
class TemplateInputs:
    """Everything rendering depends on besides the template: where to look and where values come from."""

    variables: Mapping[str, str] = field(default_factory=dict)  # --var NAME=VALUE: the highest precedence
    config: Mapping[str, str] = field(default_factory=dict)  # lkctl.templates.variables
    environ: Mapping[str, str] | None = None  # None: the environment is not consulted
    env_prefix: str = ""
    vm_keys: Callable[[], Mapping[str, str]] | None = None  # this VM's keys by KEY_VARIABLES name, made on demand
    extra_dirs: tuple[Path, ...] = ()
    cwd: Path | None = None
    # where a template that uses this VM's keys is built (private, 0700) instead of the shared build cache; a
    # callable, so that the VM's staging dir is only made when such a template asks for it
    private_builds: Callable[[], Path] | None = None


@dataclass(frozen=True)
class TemplateMeta:
    """What a template says about the VM beyond LinuxKit YAML (0: not said)."""

    memory: int = 0  # MB
    cpus: int = 0


def inputs_from_settings(
    settings: TemplatesSettings,
    variables: Mapping[str, str] | None = None,
    *,
    use_env: bool = False,
    vm_keys: Callable[[], Mapping[str, str]] | None = None,
    environ: Mapping[str, str] | None = None,
) -> TemplateInputs:
    """TemplateInputs from lkctl's settings plus the command line (`--var`, `--env-vars`)."""
    import os

    env = (os.environ if environ is None else environ) if (use_env or settings.use_env) else None
    return TemplateInputs(
        variables=dict(variables or {}),
        config=dict(settings.variables),
        environ=env,
        env_prefix=settings.env_prefix,
        vm_keys=vm_keys,
        extra_dirs=tuple(Path(d) for d in settings.dirs.split(os.pathsep) if d),
    )


def template_variables(template: Template) -> Variables:
    """The variables `template` uses: required (with lines) and optional (with defaults)."""
    if template.jinja:
        from lkctl.templates._jinja import jinja_variables

        return jinja_variables(template.path)
    from lkctl.templates.substitute import variables_of

    return variables_of(read_template(template))


def read_template(template: Template) -> str:
    """The template's text as written (UTF-8); ConfigError when it cannot be read."""
    try:
        return template.path.read_text(encoding="utf-8")  # LinuxKit YAML is UTF-8, whatever the locale
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read template {template.name} ({template.path}): {e}") from None


def resolve_values(template: Template, inputs: TemplateInputs) -> dict[str, str]:
    """The value of each variable `template` uses that some source gives (defaults stay in the template).

    A `--var` the template does not use is an error (a typo would otherwise be silently ignored); config values
    are shared by every template, so unused ones are fine.
    """
    import difflib

    used = template_variables(template)
    names = used.names
    unknown = [n for n in inputs.variables if n not in names]
    if unknown:
        close = difflib.get_close_matches(unknown[0], names, n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        raise ConfigError(
            f"template {template.name} has no variable {unknown[0]}{hint} (its variables: {', '.join(names) or 'none'})"
        )
    out: dict[str, str] = {}
    for name in names:
        if name in inputs.variables:
            out[name] = inputs.variables[name]
        elif name in inputs.config:
            out[name] = inputs.config[name]
        elif inputs.environ is not None and inputs.env_prefix + name in inputs.environ:
            out[name] = inputs.environ[inputs.env_prefix + name]
    wanted = [n for n in KEY_VARIABLES if n in names and n not in out]
    if wanted and inputs.vm_keys is not None:
        keys = inputs.vm_keys()
        out.update({n: keys[n] for n in wanted})
    return out


def _check_yaml(text: str, source: str) -> None:
    import yaml

    from lkctl.yamlio import load_all

    try:
        load_all(text)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        if mark is None:
            raise ConfigError(f"{source} rendered to invalid YAML: {e.problem or e.context}") from None
        lines = text.splitlines() or [""]
        line = min(mark.line, len(lines) - 1)  # an error at the end of the text: show its last line
        while line > 0 and not lines[line].strip():
            line -= 1
        problem = e.problem or e.context
        raise ConfigError(
            f"{source} rendered to invalid YAML at line {line + 1}: {problem}\n  {line + 1} | {lines[line]}"
        ) from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{source} rendered to invalid YAML: {e}") from None


def render_template(template: Template, values: Mapping[str, str] | TemplateInputs | None = None) -> str:
    """The LinuxKit YAML `template` makes with `values` (or with values resolved from `TemplateInputs`).

    Every missing required variable is named in one error, with its lines; output that is not valid YAML (a
    `.j2` template can produce anything) is an error showing the rendered line.
    """
    if isinstance(values, TemplateInputs):
        values = resolve_values(template, values)
    source = f"template {template.name} ({template.path})"
    if template.jinja:
        from lkctl.templates._jinja import render_jinja

        text = render_jinja(template.path, values or {}, source)
    else:
        from lkctl.templates.substitute import substitute

        text = substitute(read_template(template), values or {}, source)
    _check_yaml(text, source)
    return text


def _size(key: str, value: str, source: str, suffixes: dict[str, int]) -> int:
    m = re.fullmatch(r"([0-9]+)([A-Za-z]?)", value.strip())
    unit = m.group(2).upper() if m else ""
    if m is None or unit not in suffixes or int(m.group(1)) <= 0:
        raise ConfigError(f"{source}: `# lkctl: {key}=` needs a positive whole number, got {value!r}")
    return int(m.group(1)) * suffixes[unit]


def template_meta(rendered: str, source: str = "template") -> TemplateMeta:
    """The `# lkctl: memory=... cpus=...` line(s) of a rendered template's header comment."""
    found: dict[str, int] = {}
    for line in rendered.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            break  # only the header comment
        m = _META.match(stripped)
        for word in m.group(1).split() if m else []:
            key, sep, value = word.partition("=")
            if key == "memory" and sep:
                found["memory"] = _size(key, value, source, {"": 1, "M": 1, "G": 1024})
            elif key == "cpus" and sep:
                found["cpus"] = _size(key, value, source, {"": 1})
            else:
                raise ConfigError(f"{source}: unknown `# lkctl:` setting {word!r} (known: memory=MB, cpus=N)")
    return TemplateMeta(**found)

"""LinuxKit YAML templates: discovery and `${VAR}` / `${VAR:-default}` substitution.

Built-in templates ship in `templates/`; workspace (`.lkctl/templates/` up to the repository root) and user
(`~/.config/lkctl/templates/`) templates override them by name.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from lkctl import paths
from lkctl.errors import ConfigError, ImageError

__all__ = ["Template", "find_template", "list_templates", "render_template", "template_variables"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_VAR = re.compile(r"\$(\$?)\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


@dataclass(frozen=True)
class Template:
    name: str
    path: Path
    source: str  # builtin | user | workspace

    @property
    def description(self) -> str:
        for line in self.path.read_text().splitlines():
            stripped = line.strip()
            if stripped.startswith("#") and stripped.lstrip("#").strip():
                return stripped.lstrip("#").strip()
            if stripped and not stripped.startswith("#"):
                break
        return ""


def _workspace_dirs(start: Path) -> list[Path]:
    dirs = []
    for d in [start, *start.parents]:
        candidate = d / ".lkctl" / "templates"
        if candidate.is_dir():
            dirs.append(candidate)
        if (d / ".git").exists():
            break
    return dirs


def _search_path(cwd: Path | None = None) -> list[tuple[str, Path]]:
    """Template directories, highest precedence first."""
    found = [("workspace", d) for d in _workspace_dirs((cwd or Path.cwd()).resolve())]
    found.append(("user", paths.config_dir() / "templates"))
    found.append(("builtin", paths.resource_dir("templates")))
    return found


def list_templates(cwd: Path | None = None) -> list[Template]:
    """Every visible template (the highest-precedence one per name), sorted by name."""
    seen: dict[str, Template] = {}
    for source, d in _search_path(cwd):
        if not d.is_dir():
            continue
        for f in sorted(d.iterdir()):
            if f.suffix in (".yml", ".yaml") and f.is_file() and _NAME.match(f.stem):
                seen.setdefault(f.stem, Template(f.stem, f, source))
    return [seen[k] for k in sorted(seen)]


def find_template(name: str, cwd: Path | None = None) -> Template | None:
    if not _NAME.match(name):
        return None  # never a path: "../x" or "a/b" are not template names
    for t in list_templates(cwd):
        if t.name == name:
            return t
    return None


def template_variables(text: str) -> tuple[list[str], dict[str, str]]:
    """(required names, optional name → default) used in `text`."""
    required: list[str] = []
    optional: dict[str, str] = {}
    for m in _VAR.finditer(text):
        if m.group(1):
            continue
        name, default = m.group(2), m.group(3)
        if default is None:
            if name not in required:
                required.append(name)
        else:
            optional.setdefault(name, default)
    return required, optional


def _yaml_scalar(value: str) -> str:
    # JSON strings are valid YAML flow scalars: quotes, colons and newlines cannot break the document
    return json.dumps(value)


def render_template(template: Template, variables: dict[str, str]) -> str:
    """Substitute variables. A variable that is a whole YAML scalar is inserted as a quoted string."""
    text = template.path.read_text()
    missing: list[str] = []
    lines_of: dict[str, int] = {}
    for m in _VAR.finditer(text):
        if not m.group(1) and m.group(3) is None and m.group(2) not in variables and m.group(2) not in lines_of:
            lines_of[m.group(2)] = text.count("\n", 0, m.start()) + 1
            missing.append(m.group(2))
    if missing:
        where = ", ".join(f"{n} (line {lines_of[n]})" for n in missing)
        raise ConfigError(f"template {template.name} ({template.path}) needs variables: {where}; pass --var NAME=VALUE")

    def replace(m: re.Match[str]) -> str:
        if m.group(1):
            return m.group(0)[1:]  # $${VAR} is a literal ${VAR}
        value = variables.get(m.group(2), m.group(3) or "")
        return value

    out_lines = []
    for line in text.splitlines(keepends=True):
        stripped = line.rstrip("\n")
        key, sep, rest = stripped.partition(": ")
        whole = _VAR.fullmatch(rest.strip()) if sep else None
        if whole and not whole.group(1):
            indent = stripped[: len(stripped) - len(stripped.lstrip())]
            value = variables.get(whole.group(2), whole.group(3) or "")
            out_lines.append(f"{key}{sep}{_yaml_scalar(value)}\n" if indent or key else line)
        else:
            out_lines.append(_VAR.sub(replace, line))
    return "".join(out_lines)


def require_template(name: str) -> Template:
    t = find_template(name)
    if t is None:
        names = ", ".join(t.name for t in list_templates()) or "none"
        raise ImageError(f"unknown template {name!r} (templates: {names})")
    return t


__all__ += ["require_template"]

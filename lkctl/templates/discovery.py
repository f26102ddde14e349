"""Where templates come from: workspace, user, configured and built-in directories, nearest first.

A team overrides a built-in by committing `.lkctl/templates/<name>.yml`; a user by putting one in
`~/.config/lkctl/templates/`. The Go tool used exactly one user directory (the working directory's, else the
home one), let built-ins win, listed `.yaml` files it could not load and took `../x` as a name; here every
directory is searched in order, the first match wins, `template.ls` shows what is shadowed, and a name is never
a path.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lkctl import paths
from lkctl.errors import ConfigError, ImageError

__all__ = [
    "SUFFIXES",
    "Template",
    "check_name",
    "discover_templates",
    "find_template",
    "list_templates",
    "require_template",
    "template_dirs",
]

#: file name endings that make a template, in the order one directory prefers them
SUFFIXES = (".yml", ".yaml", ".yml.j2", ".yaml.j2")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_META = re.compile(r"^#\s*lkctl:")


@dataclass(frozen=True)
class Template:
    """One template file. `source`: workspace | user | config | builtin."""

    name: str
    path: Path
    source: str
    shadowed_by: Path | None = None  # set by discover_templates on a template another one hides

    @property
    def jinja(self) -> bool:
        return self.path.name.endswith(".j2")

    @property
    def description(self) -> str:
        """The first non-empty `#` comment line before any YAML (the `# lkctl:` metadata line excluded)."""
        try:
            lines = self.path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        for line in lines:
            stripped = line.strip()
            if not stripped:
                continue
            if not stripped.startswith("#"):
                break
            text = stripped.lstrip("#").strip()
            if text and not _META.match(stripped):
                return text
        return ""


def check_name(name: str) -> str:
    """`name` if it can name a template (letters, digits, `.`, `_`, `-`; never a path), else ConfigError."""
    if not _NAME.fullmatch(name) or name.endswith(SUFFIXES) or ".." in name:
        raise ConfigError(f"invalid template name {name!r}: use letters, digits, '.', '_' and '-' (a name, not a path)")
    return name


def _template_name(filename: str) -> str | None:
    for suffix in SUFFIXES[::-1]:  # longest first: x.yml.j2 is x, not x.yml
        if filename.endswith(suffix):
            stem = filename[: -len(suffix)]
            return stem if _NAME.fullmatch(stem) and ".." not in stem else None
    return None


def _workspace_dirs(start: Path) -> list[Path]:
    """`.lkctl/templates` in `start` and each parent up to the repository root (the nearest first); outside a
    repository, only `start`'s: a stray `/tmp/.lkctl` must not leak into every project below it."""
    found, chain = [], [start, *start.parents]
    root = next((i for i, d in enumerate(chain) if (d / ".git").exists()), None)
    for d in chain[: (root + 1) if root is not None else 1]:
        candidate = d / ".lkctl" / "templates"
        if candidate.is_dir():
            found.append(candidate)
    return found


def template_dirs(cwd: Path | None = None, extra: Sequence[Path] = ()) -> list[tuple[str, Path]]:
    """(source, directory) in precedence order: workspace (nearest first), user, configured extras, built-in."""
    out = [("workspace", d) for d in _workspace_dirs((cwd or Path.cwd()).resolve())]
    out.append(("user", paths.config_dir() / "templates"))
    out += [("config", Path(os.path.expanduser(str(d)))) for d in extra]
    out.append(("builtin", paths.resource_dir("templates")))
    return out


def discover_templates(cwd: Path | None = None, extra: Sequence[Path] = ()) -> list[Template]:
    """Every template file, by name then precedence; all but the first of each name carry `shadowed_by`."""
    found: dict[str, list[Template]] = {}
    seen_dirs: set[Path] = set()
    for source, d in template_dirs(cwd, extra):
        real = d.resolve()
        try:
            files = sorted(d.iterdir()) if d.is_dir() and real not in seen_dirs else []
        except OSError:
            files = []  # unreadable: as good as absent
        seen_dirs.add(real)  # a directory named twice (user dir also in lkctl.templates.dirs) counts once
        here: dict[str, list[tuple[int, Path]]] = {}
        for f in files:
            tname = _template_name(f.name)
            if tname is not None and f.is_file():
                rank = next(i for i, suffix in enumerate(SUFFIXES) if f.name == tname + suffix)
                here.setdefault(tname, []).append((rank, f))
        for tname, candidates in here.items():
            for _, f in sorted(candidates):  # x.yml before x.yaml before x.yml.j2: the others are shadowed
                found.setdefault(tname, []).append(Template(tname, f, source))
    out = []
    for name in sorted(found):
        first, *rest = found[name]
        out.append(first)
        out += [Template(t.name, t.path, t.source, shadowed_by=first.path) for t in rest]
    return out


def list_templates(cwd: Path | None = None, extra: Sequence[Path] = ()) -> list[Template]:
    """The templates a name resolves to (the highest-precedence file of each name), sorted by name."""
    return [t for t in discover_templates(cwd, extra) if t.shadowed_by is None]


def find_template(name: str, cwd: Path | None = None, extra: Sequence[Path] = ()) -> Template | None:
    """The template `name` resolves to, or None (also for anything that is not a valid name, such as a path)."""
    try:
        check_name(name)
    except ConfigError:
        return None
    return next((t for t in list_templates(cwd, extra) if t.name == name), None)


def require_template(name: str, cwd: Path | None = None, extra: Sequence[Path] = ()) -> Template:
    """The template `name` resolves to; an unknown name is an error that suggests close ones."""
    check_name(name)
    known = list_templates(cwd, extra)
    for t in known:
        if t.name == name:
            return t
    names = [t.name for t in known]
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    raise ImageError(f"unknown template {name!r}{hint} (templates: {', '.join(names) or 'none'}; see template.ls)")

"""Which config files count, and where an effective setting came from.

`lkctl` and `invoke` read the same files: `/etc/lkctl.yaml`, `~/.lkctl.yaml`, then in the project (the nearest
directory from the working directory up to the repository root that holds `lkctl.yaml`, `invoke.yaml` or
`tasks.py`) its `invoke.yaml` and `lkctl.yaml`, each file's `lkctl:` key only. Above them sits what the running
program's own config holds (invoke's files, `-f FILE`), then the environment (`LKCTL_<SECTION>_<KEY>`), then flags.
For a VM's size, a template's `# lkctl: memory=… cpus=…` line comes below all of these and above the defaults.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lkctl.errors import ConfigError

__all__ = [
    "config_files",
    "explicit_values",
    "invoke_only_config",
    "merge_trees",
    "project_dir",
    "read_files",
    "setting_source",
]

_PROJECT_MARKERS = ("lkctl.yaml", "lkctl.yml", "invoke.yaml", "invoke.yml", "tasks.py")


def project_dir(start: Path) -> Path | None:
    """The nearest directory from `start` up to its repository root holding lkctl.yaml, invoke.yaml or tasks.py."""
    for d in [start, *start.parents]:
        if any((d / m).is_file() for m in _PROJECT_MARKERS):
            return d
        if (d / ".git").exists():
            return None
    return None


def config_files(start: Path | None = None, home: Path | None = None) -> list[Path]:
    """The config files that exist, lowest precedence first."""
    home = Path.home() if home is None else home
    found = [Path("/etc/lkctl.yaml"), Path("/etc/lkctl.yml"), home / ".lkctl.yaml", home / ".lkctl.yml"]
    project = project_dir(Path.cwd() if start is None else start)
    if project is not None:
        found += [project / n for n in ("invoke.yaml", "invoke.yml", "lkctl.yaml", "lkctl.yml")]
    return [p for p in found if p.is_file()]


def invoke_only_config(environ: Mapping[str, str], start: Path, home: Path) -> bool:
    """True when the full CLI would read config these files do not hold: a runtime config file, a `.json`/`.py`
    config file beside the YAML ones, a config name that exists but is no regular file (invoke opens it and
    fails: a directory `~/.lkctl.yaml`), or invoke's own `LKCTL_LKCTL_*` variables. The lean paths (lkctl.fastbuild,
    lkctl.runtime.fastrun) read config_files() themselves and leave anything beyond them to the full CLI."""
    if environ.get("LKCTL_RUNTIME_CONFIG") or environ.get("INVOKE_RUNTIME_CONFIG"):
        return True
    if any(k.startswith("LKCTL_LKCTL_") for k in environ):
        return True
    bases = [Path("/etc/lkctl"), home / ".lkctl"]
    project = project_dir(start)
    if project is not None:
        bases.append(project / "lkctl")
    json_py = [base.with_name(base.name + ext) for base in bases for ext in (".json", ".py")]
    yaml = [base.with_name(base.name + ext) for base in bases for ext in (".yaml", ".yml")]
    return any(p.exists() for p in json_py) or any(p.exists() and not p.is_file() for p in yaml)


def merge_trees(low: Mapping[str, Any], high: Mapping[str, Any]) -> dict[str, Any]:
    """`high` over `low`, recursively for mappings."""
    out = dict(low)
    for k, v in high.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = merge_trees(out[k], v)
        else:
            out[k] = v
    return out


def read_files(paths: list[Path]) -> dict[str, Any]:
    """The merged `lkctl:` trees of these YAML files (later files win)."""
    import yaml

    from lkctl.yamlio import safe_load

    tree: dict[str, Any] = {}
    for path in paths:
        try:
            data = safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ConfigError(f"cannot read config file {path}: {first}") from None
        if not isinstance(data, Mapping):
            raise ConfigError(f"config file {path}: expected a mapping at the top, got {type(data).__name__}")
        section = data.get("lkctl") or {}
        if not isinstance(section, Mapping):
            raise ConfigError(f"config file {path}: `lkctl:` must be a mapping")
        tree = merge_trees(tree, section)
    return tree


def explicit_values(tree: Mapping[str, Any]) -> dict[str, Any]:
    """The values of an invoke config `lkctl` tree that differ from the code defaults (what a file really set).

    invoke's config holds our defaults too (Collection.configure), so a value equal to its default cannot be told
    from "not set"; it then changes nothing anyway, except that it does not outrank a template's sizing.
    """
    import dataclasses

    from lkctl.settings import Settings  # here, not at the top: the lean CLI paths import this module

    defaults = dataclasses.asdict(Settings())
    out: dict[str, Any] = {}
    for section, values in tree.items():
        if not isinstance(values, Mapping):
            out[section] = values
            continue
        kept = {k: v for k, v in values.items() if defaults.get(section, {}).get(k, object()) != v}
        if kept:
            out[section] = kept
    return out


def setting_source(section: str, key: str, tree: Mapping[str, Any], env: Mapping[str, str]) -> str:
    """Where `lkctl.<section>.<key>` comes from: `environment LKCTL_…`, `config`, or "" (the default)."""
    env_name = f"LKCTL_{section}_{key}".upper()
    if env.get(env_name):
        return f"environment {env_name}"
    values = tree.get(section)
    if isinstance(values, Mapping) and values.get(key) is not None:
        return "config"
    return ""

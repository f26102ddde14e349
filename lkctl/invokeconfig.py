"""What the full CLI's invoke reads besides our settings, judged without importing invoke.

The `lkctl` launcher answers a few commands on lean paths that never import invoke (lkctl.launcher). They may do
so only when the full CLI would behave the same, so they ask here first. invoke (config prefix `lkctl`) loads
`/etc/lkctl.*`, `~/.lkctl.*` and the project's `lkctl.*` (the first of .yaml, .yml, .json, .py for each) as a
whole, maps `LKCTL_*` variables onto its own config keys, and takes `-f`/`*_RUNTIME_CONFIG`. A file it cannot
merge (bad YAML, a list at the top, `lkctl:` not a mapping) stops the full CLI, which says so in one line
(check_config_files, called by lkctl.cli before invoke loads anything); the lean paths hand such a file, and
anything else only invoke reads, to the full CLI (full_cli_needed).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lkctl.errors import ConfigError

__all__ = [
    "OWN_ENV",
    "SETTINGS_ENV",
    "check_config_files",
    "check_config_tree",
    "full_cli_needed",
    "invoke_config_files",
    "settings_defaults",
]

OWN_ENV = frozenset(
    {
        "LKCTL_HOME",
        "LKCTL_CACHE_DIR",
        "LKCTL_STATE_DIR",
        "LKCTL_DATA_DIR",
        "LKCTL_CONFIG_DIR",
        "LKCTL_OCI_STORE",
        "LKCTL_HOSTS",
        "LKCTL_BUILD_FRAGMENT_LIMIT",
        "LKCTL_REGISTRY_USERNAME",
        "LKCTL_REGISTRY_PASSWORD",
    }
)
"""`LKCTL_*` variables lkctl reads itself (directories, hosts, registry login), the same on every path."""

SETTINGS_ENV = frozenset(
    {
        "LKCTL_BUILD_ARCH",
        "LKCTL_DEV_AGENT_AUTH",
        "LKCTL_DEV_AGENT_COMMAND",
        "LKCTL_DEV_CONSOLE_SHELL",
        "LKCTL_DEV_CPUS",
        "LKCTL_DEV_MEMORY",
        "LKCTL_DEV_SERVE_PORT",
        "LKCTL_DEV_SHARE",
        "LKCTL_LIBVIRT_POOL",
        "LKCTL_LIBVIRT_POOL_PATH",
        "LKCTL_SOURCES_CDN_URL",
        "LKCTL_SOURCES_GITHUB_API",
        "LKCTL_SOURCES_GITHUB_ASSET",
        "LKCTL_SOURCES_GITHUB_REPO",
        "LKCTL_SOURCES_INSECURE_REGISTRIES",
        "LKCTL_SOURCES_OCI_REPOSITORY",
        "LKCTL_SOURCES_ORDER",
        "LKCTL_SOURCES_RETRIES",
        "LKCTL_SOURCES_TIMEOUT",
        "LKCTL_TEMPLATES_DIRS",
        "LKCTL_TEMPLATES_ENV_PREFIX",
        "LKCTL_TEMPLATES_USE_ENV",
        "LKCTL_TEMPLATES_VARIABLES",
        "LKCTL_VM_ACCEL",
        "LKCTL_VM_CMDLINE_EXTRA",
        "LKCTL_VM_CPUS",
        "LKCTL_VM_HYPERVISOR",
        "LKCTL_VM_MEMORY",
        "LKCTL_VM_NETWORK",
        "LKCTL_VM_PVH",
        "LKCTL_VM_QEMU",
        "LKCTL_VM_READY_TIMEOUT",
        "LKCTL_VM_STOP_TIMEOUT",
        "LKCTL_VM_VIRTIOFS",
    }
)
"""Every `LKCTL_<SECTION>_<KEY>` variable lkctl.settings reads, written out so a lean path
judges the environment without importing the settings (~12 ms of dataclasses; a unit test keeps the two equal)."""

_SUFFIXES = (".yaml", ".yml", ".json", ".py")  # invoke's order: it loads the first that exists


def invoke_config_files(start: Path | None = None, home: Path | None = None) -> list[Path]:
    """The config files the full CLI's invoke loads, lowest precedence first (at most one per place: the first
    name that exists, as invoke takes it; a directory there is listed too, invoke fails on it)."""
    from lkctl.configfiles import project_dir

    home = Path.home() if home is None else home
    bases = [Path("/etc/lkctl"), home / ".lkctl"]
    project = project_dir(Path.cwd() if start is None else start)
    if project is not None:
        bases.append(project / "lkctl")
    found = []
    for base in bases:
        for suffix in _SUFFIXES:
            path = base.with_name(base.name + suffix)
            if path.exists():
                found.append(path)
                break
    return found


def settings_defaults() -> dict[str, Any]:
    """Our part of invoke's defaults: `{"lkctl": {section: {key: default}}}` (lkctl.settings.invoke_defaults)."""
    from lkctl.settings import invoke_defaults

    return invoke_defaults()


def _unmergeable(value: Any, default: Any, where: str) -> str:
    """The dotted key where `value` cannot be merged over `default` as invoke merges (a mapping must stay one)."""
    if not isinstance(default, Mapping):
        return ""
    if not isinstance(value, Mapping):
        return where
    for key, sub in value.items():
        bad = _unmergeable(sub, default.get(key), f"{where}.{key}" if where else str(key))
        if bad:
            return bad
    return ""


def _read_yaml(path: Path, defaults: Mapping[str, Any]) -> dict[str, Any]:
    """The top-level mapping of one YAML config file; ConfigError when invoke could not merge it over `defaults`."""
    import yaml

    from lkctl.yamlio import safe_load

    try:
        data = safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"cannot read config file {path}: {first}") from None
    check_config_tree(data, path, defaults)
    return dict(data)


def check_config_tree(data: Any, path: Path | str, defaults: Mapping[str, Any]) -> None:
    """ConfigError when invoke could not merge a config file's contents `data` over `defaults` (it would fail with a
    traceback): not a mapping at the top, or a value where the defaults have a mapping (`run: 3`)."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"config file {path}: expected a mapping at the top, got {type(data).__name__}")
    bad = _unmergeable(data, defaults, "")
    if bad:
        raise ConfigError(f"config file {path}: `{bad}:` must be a mapping (of settings), as in the defaults")


def check_config_files(
    start: Path | None = None, home: Path | None = None, defaults: Mapping[str, Any] | None = None
) -> list[dict[str, Any]]:
    """The contents of the YAML files invoke_config_files() lists; ConfigError for one invoke could not merge over
    `defaults` (default: ours, settings_defaults()). (.json and .py files are left to invoke.)"""
    found = invoke_config_files(start, home)
    for path in found:
        if not path.is_file():
            raise ConfigError(f"config file {path} is not a regular file: remove or rename it")
    files = [p for p in found if p.suffix in (".yaml", ".yml")]
    if not files:
        return []  # the common case on the lean paths: no settings import at all
    tree = settings_defaults() if defaults is None else defaults
    return [_read_yaml(p, tree) for p in files]


def full_cli_needed(environ: Mapping[str, str], start: Path | None = None, home: Path | None = None) -> bool:
    """True when something only the full CLI understands is in play, so a lean path must hand over: an `INVOKE_*`
    or `LKCTL_*` variable lkctl does not read itself (invoke's own, `*_RUNTIME_CONFIG`, or one like
    `LKCTL_BENCH_FULL_CLI=1` set to force the full CLI), a `.json`/`.py` config file, a YAML config file invoke
    cannot merge (the full CLI says why) or one that sets invoke's own keys (`run:`, `tasks:`...)."""
    from lkctl.configfiles import invoke_only_config

    home = Path.home() if home is None else home
    start = Path.cwd() if start is None else start
    odd = [k for k in environ if k.startswith("INVOKE_") or (k.startswith("LKCTL_") and k not in OWN_ENV)]
    if odd and (any(k.startswith("INVOKE_") for k in odd) or not set(odd) <= SETTINGS_ENV):
        return True
    if invoke_only_config(environ, start, home):
        return True
    try:
        trees = check_config_files(start, home)
    except ConfigError:
        return True
    return any(set(tree) - {"lkctl"} for tree in trees)

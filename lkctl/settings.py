"""lkctl's settings, declared once with their defaults.

Precedence, lowest to highest: these defaults → invoke config under the `lkctl` key (`invoke.yaml`, `lkctl.yaml`,
`-f file`) → environment `LKCTL_<SECTION>_<KEY>` (e.g. `LKCTL_VM_MEMORY=2048`) → task flags. A user who calls the
library or our tasks from their own `tasks.py` gets the same defaults because they live here, in code.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lkctl.errors import ConfigError

if TYPE_CHECKING:
    from lkctl.runtime.libvirt.hosts import HostConfig

__all__ = [
    "BuildSettings",
    "DevSettings",
    "LibvirtSettings",
    "Settings",
    "SourcesSettings",
    "TemplatesSettings",
    "VmSettings",
    "invoke_defaults",
    "load_settings",
]


@dataclass(frozen=True)
class VmSettings:
    """How VMs are started and stopped."""

    memory: int = 1024  # MB
    cpus: int = 1
    accel: str = "auto"  # auto | kvm | hvf | tcg
    qemu: str = ""  # path to qemu-system-<arch>; empty = look it up on PATH
    ready_timeout: float = 180.0  # seconds `vm.run -d` waits for the guest to answer SSH
    stop_timeout: float = 30.0  # seconds a guest gets to power off after ACPI shutdown before SIGTERM
    cmdline_extra: str = ""  # appended to every kernel command line
    hypervisor: str = "auto"  # auto | qemu | hyperkit (macOS on Intel)
    virtiofs: bool = False  # share read-write volumes over virtiofs (root + virtiofsd) instead of 9p
    pvh: bool = True  # x86 QEMU: boot the uncompressed kernel through PVH (skips in-guest decompression)
    network: str = "user"  # user | restricted | none: what the guest reaches (README "Safety" says why user)


@dataclass(frozen=True)
class BuildSettings:
    """How images are built."""

    arch: str = ""  # what image.build builds for without --arch; "" = this machine's architecture


@dataclass(frozen=True)
class SourcesSettings:
    """Where `image.pull` fetches prebuilt images from. Lists are comma-separated strings so env vars can set them."""

    order: str = "cdn,github,oci"  # what `--source auto` tries, first to last; unconfigured sources are skipped
    cdn_url: str = ""  # base URL(s) of the CDN layout; several = mirrors tried in order
    github_repo: str = ""  # OWNER/REPO whose releases carry the images
    github_api: str = "https://api.github.com"  # REST API root (GitHub Enterprise: https://HOST/api/v3)
    github_asset: str = "{image}-{os}-{arch}.*"  # release asset name pattern (fnmatch, after formatting)
    oci_repository: str = ""  # registry repository prefix, e.g. ghcr.io/ORG/images → ghcr.io/ORG/images/NAME:VERSION
    insecure_registries: str = ""  # registry hosts spoken to over plain http (localhost/127.0.0.1 always are)
    timeout: float = 30.0  # seconds without progress before a request fails (connect: 10 s at most)
    retries: int = 5  # attempts per URL on connection errors, dropped streams, 429 and 5xx


@dataclass(frozen=True)
class TemplatesSettings:
    """Where templates are found (besides workspace, user and built-in ones) and where their variables come from."""

    dirs: str = ""  # more template directories, os.pathsep-separated; searched after the user's, before built-ins
    use_env: bool = False  # fill template variables from the environment too (as `--env-vars` does)
    env_prefix: str = ""  # with use_env: variable NAME comes from <env_prefix>NAME (e.g. LKCTL_VAR_)
    variables: dict[str, str] = field(default_factory=dict)  # NAME: VALUE for every template, below --var


@dataclass(frozen=True)
class LibvirtSettings:
    """VMs run through libvirt (`vm.run --connect URI` or `--host NAME`): where their volumes live on each host."""

    pool: str = "lkctl"  # storage pool holding images, overlays and consoles (created as a dir pool if missing)
    pool_path: str = "/var/lib/libvirt/lkctl"  # that pool's directory when lkctl creates it


@dataclass(frozen=True)
class DevSettings:
    """The project's dev VM (`dev.*`)."""

    memory: int = 4096  # MB
    cpus: int = 2
    serve_port: int = 8000  # dev.serve's port, guest and host (127.0.0.1)
    agent_command: str = "claude"  # what dev.claude runs in /app (a shell command line)
    agent_auth: str = "anthropic,git"  # dev.claude's default --auth (gh and ssh only when asked)
    console_shell: bool = True  # dev.boot starts a root shell on the serial console (dev.shell --console)
    share: str = "auto"  # how /app is shared: auto (virtiofs with root and virtiofsd, else 9p) | virtiofs | 9p


@dataclass(frozen=True)
class Settings:
    vm: VmSettings = field(default_factory=VmSettings)
    build: BuildSettings = field(default_factory=BuildSettings)
    sources: SourcesSettings = field(default_factory=SourcesSettings)
    templates: TemplatesSettings = field(default_factory=TemplatesSettings)
    libvirt: LibvirtSettings = field(default_factory=LibvirtSettings)
    hosts: tuple[HostConfig, ...] = ()  # lkctl.hosts: [{name, uri, memory, accel, known_hosts}] (env: LKCTL_HOSTS)
    dev: DevSettings = field(default_factory=DevSettings)


def invoke_defaults() -> dict[str, Any]:
    """The defaults as an invoke config fragment (`{"lkctl": {...}}`) for Collection.configure."""
    return {"lkctl": dataclasses.asdict(Settings())}


def _mapping(value: Any) -> dict[str, str]:
    """A NAME → VALUE table from config (a mapping) or the environment (a JSON object); scalars become text."""
    if isinstance(value, str):
        value = json.loads(value)
    if not isinstance(value, Mapping):
        raise TypeError(value)
    out = {}
    for k, v in value.items():
        if isinstance(v, Mapping | list) or v is None:
            raise TypeError(v)
        out[str(k)] = ("true" if v else "false") if isinstance(v, bool) else str(v)
    return out


_KINDS = {dict: "a mapping of names to scalar values", int: "a whole number", float: "a number", str: "a string"}


def _coerce(section: str, name: str, value: Any, default: Any, origin: str) -> Any:
    try:
        if isinstance(default, dict):
            return _mapping(value)
        if isinstance(default, bool):
            if isinstance(value, str):
                return value.strip().lower() in ("1", "true", "yes", "on")
            return bool(value)
        if isinstance(default, int):
            return int(value)
        if isinstance(default, float):
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        kind = _KINDS.get(type(default), type(default).__name__)
        raise ConfigError(f"{origin}: lkctl.{section}.{name} must be {kind}, got {value!r}") from None


def _check_seconds(section: str, name: str, value: Any, origin: str) -> None:
    """A `*timeout` setting is a finite number of seconds, above 0 (stop_timeout: 0 or more, SIGTERM at once)."""
    if not name.endswith("timeout"):
        return
    least_ok = value >= 0 if name == "stop_timeout" else value > 0
    if not (math.isfinite(value) and least_ok):
        what = "a number of seconds, 0 or more" if name == "stop_timeout" else "a number of seconds above 0"
        raise ConfigError(f"{origin}: lkctl.{section}.{name} must be {what}, got {value:g}")


def load_settings(config: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Settings from an invoke config mapping (its `lkctl` key) and the environment, over the code defaults."""
    env = os.environ if env is None else env
    tree = dict((config or {}).get("lkctl") or {})
    sections: dict[str, Any] = {}
    for sec_field in dataclasses.fields(Settings):
        if sec_field.name == "hosts":  # a list of mappings, not a section of scalars
            from lkctl.runtime.libvirt.hosts import parse_hosts

            sections["hosts"] = parse_hosts(env.get("LKCTL_HOSTS") or tree.get("hosts"))
            continue
        sec_default = getattr(Settings(), sec_field.name)
        given = dict(tree.get(sec_field.name) or {})
        known = {f.name for f in dataclasses.fields(sec_default)}
        unknown = sorted(set(given) - known)
        if unknown:
            raise ConfigError(
                f"config: unknown setting lkctl.{sec_field.name}.{unknown[0]} (known: {', '.join(sorted(known))})"
            )
        values = {}
        for f in dataclasses.fields(sec_default):
            default = getattr(sec_default, f.name)
            value = default
            if f.name in given and given[f.name] is not None:
                value = _coerce(sec_field.name, f.name, given[f.name], default, "config")
                _check_seconds(sec_field.name, f.name, value, "config")
            env_name = f"LKCTL_{sec_field.name}_{f.name}".upper()
            if env.get(env_name):
                value = _coerce(sec_field.name, f.name, env[env_name], default, f"environment {env_name}")
                _check_seconds(sec_field.name, f.name, value, f"environment {env_name}")
            values[f.name] = value
        sections[sec_field.name] = type(sec_default)(**values)
    return Settings(**sections)

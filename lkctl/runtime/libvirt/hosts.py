"""Hypervisor hosts: `lkctl.hosts` from config, placement, and how to reach a host over SSH. Pure functions.

A host is a name and a libvirt URI (`qemu:///system`, `qemu+ssh://root@hv1/system`), with optional limits. The
SSH side of a `qemu+ssh://` URI is also the jump host through which `vm.exec` reaches guests there: their SSH
forwards listen on that host's 127.0.0.1 only. Its host key comes from an explicit pin (`known_hosts` in the host's
config) or the user's `~/.ssh/known_hosts`; it is never accepted on first use.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

from lkctl.errors import ConfigError

if TYPE_CHECKING:
    from lkctl.ssh import JumpHost

__all__ = [
    "HostConfig",
    "HostLoad",
    "choose_host",
    "is_local_uri",
    "jump_host",
    "parse_hosts",
    "validate_uri",
]

_HOST_KEYS = {"name", "uri", "memory", "accel", "known_hosts"}


@dataclass(frozen=True)
class HostConfig:
    """One hypervisor host from `lkctl.hosts`."""

    name: str
    uri: str
    memory: int = 0  # MiB lkctl may give VMs there in total; 0 = whatever the host reports free
    accel: str = "auto"  # auto (probe) | kvm | tcg
    known_hosts: str = ""  # pinned host key of the host's sshd (qemu+ssh); empty = ~/.ssh/known_hosts


@dataclass(frozen=True)
class HostLoad:
    """What placement knows about a reachable host: what libvirt reports free, what lkctl's VMs there use."""

    host: HostConfig
    free_memory: int  # MiB
    used_by_lkctl: int = 0  # MiB of lkctl's running domains there


def validate_uri(uri: str) -> str:
    """`uri` if it names a QEMU libvirt driver, else a one-line ConfigError with an example."""
    parts = urlsplit(uri)
    driver = parts.scheme.split("+", 1)[0]
    if driver != "qemu" or parts.path not in ("/system", "/session"):
        raise ConfigError(
            f"libvirt URI {uri!r}: lkctl drives QEMU through libvirt; use e.g. qemu:///system or "
            "qemu+ssh://root@HOST/system"
        )
    return uri


def is_local_uri(uri: str) -> bool:
    """The URI reaches this machine's libvirtd (so its guests' forwards are on this machine's loopback)."""
    parts = urlsplit(uri)
    return not parts.hostname and parts.scheme in ("qemu", "qemu+unix")


def jump_host(uri: str, pin: str = "", *, home: Path | None = None) -> JumpHost | None:
    """The SSH jump to a remote host's guests, from its `qemu+ssh://` URI; None for a local URI.

    `pin` is a known_hosts file holding the host's key; without it the user's own known_hosts is used.
    """
    from lkctl.ssh import JumpHost  # not at import time: settings import this module, and `invoke --list` them

    if is_local_uri(uri):
        return None
    parts = urlsplit(uri)
    transport = parts.scheme.partition("+")[2]
    if transport not in ("ssh", "libssh", "libssh2"):
        raise ConfigError(
            f"{uri}: lkctl reaches guests on a remote host through its sshd; use a qemu+ssh:// URI for that host"
        )
    query = dict(parse_qsl(parts.query))
    user = parts.username or query.get("name") or "root"
    keyfile = query.get("keyfile")
    known = Path(pin).expanduser() if pin else (home or Path.home()) / ".ssh" / "known_hosts"
    assert parts.hostname is not None  # not local, so there is a host
    return JumpHost(parts.hostname, parts.port or 22, user, Path(keyfile) if keyfile else None, known)


def _host(item: Any, index: int) -> HostConfig:
    if not isinstance(item, Mapping):
        raise ConfigError(f"lkctl.hosts[{index}] must be a mapping with name and uri, e.g. {{name: hv1, uri: ...}}")
    unknown = sorted(set(item) - _HOST_KEYS)
    if unknown:
        raise ConfigError(f"lkctl.hosts[{index}]: unknown key {unknown[0]!r} (known: {', '.join(sorted(_HOST_KEYS))})")
    name, uri = str(item.get("name") or ""), str(item.get("uri") or "")
    if not name or not uri:
        raise ConfigError(f"lkctl.hosts[{index}] needs a name and a uri, e.g. {{name: hv1, uri: qemu:///system}}")
    if name == "auto" or not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise ConfigError(f"lkctl.hosts[{index}]: {name!r} is not a usable host name (letters, digits, -_.; not auto)")
    accel = str(item.get("accel") or "auto")
    if accel not in ("auto", "kvm", "tcg"):
        raise ConfigError(f"lkctl.hosts[{index}] ({name}): accel must be auto, kvm or tcg, not {accel!r}")
    try:
        memory = int(item.get("memory") or 0)
    except (TypeError, ValueError):
        raise ConfigError(f"lkctl.hosts[{index}] ({name}): memory must be a number of MiB") from None
    return HostConfig(name, validate_uri(uri), memory, accel, str(item.get("known_hosts") or ""))


def parse_hosts(value: Any) -> tuple[HostConfig, ...]:
    """`lkctl.hosts` from config (a list of mappings) or the environment (`LKCTL_HOSTS`, the same as JSON)."""
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise ConfigError("LKCTL_HOSTS must be a JSON list of {name, uri} objects") from None
    if isinstance(value, HostConfig):
        return (value,)
    if not isinstance(value, Sequence) or isinstance(value, str | bytes):
        raise ConfigError("lkctl.hosts must be a list of {name, uri} mappings")
    hosts = tuple(h if isinstance(h, HostConfig) else _host(h, i) for i, h in enumerate(value))
    names = [h.name for h in hosts]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup:
        raise ConfigError(f"lkctl.hosts: the name {dup!r} is used twice")
    return hosts


def choose_host(loads: Sequence[HostLoad], memory: int, *, unreachable: Sequence[str] = ()) -> HostConfig:
    """`--host auto`: the reachable host with the most free memory that fits `memory` MiB, or a one-line refusal."""
    best: tuple[int, HostConfig] | None = None
    for load in loads:
        room = load.free_memory
        if load.host.memory:
            room = min(room, load.host.memory - load.used_by_lkctl)
        if room >= memory and (best is None or room > best[0]):
            best = (room, load.host)
    if best is not None:
        return best[1]
    seen = ", ".join(f"{ld.host.name} {ld.free_memory} MiB free" for ld in loads) or "no reachable host"
    down = f"; unreachable: {', '.join(unreachable)}" if unreachable else ""
    raise ConfigError(f"no host can take a VM of {memory} MiB ({seen}{down}); ask for less --memory or add a host")

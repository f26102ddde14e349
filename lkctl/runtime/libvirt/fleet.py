"""Several libvirt hosts at once: where `vm.run --host NAME|auto` goes, and `vm.ps` across hosts in parallel."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from lkctl.errors import ConfigError, LkError
from lkctl.runtime.libvirt import backend
from lkctl.runtime.libvirt.hosts import HostConfig, HostLoad, choose_host, validate_uri

if TYPE_CHECKING:
    import libvirt

    from lkctl.settings import Settings

__all__ = ["list_host_vms", "target_host"]


def target_host(settings: Settings, connect: str = "", host: str = "", memory: int = 0) -> HostConfig:
    """Where `vm.run --connect URI` / `--host NAME|auto` runs a VM. `auto` places it by free memory."""
    if connect and host:
        raise ConfigError("give either --connect URI or --host NAME, not both")
    if connect:
        validate_uri(connect)
        return next((h for h in settings.hosts if h.uri == connect), HostConfig(connect, connect))
    if host == "auto":
        if not settings.hosts:
            raise ConfigError("--host auto places VMs on the hosts in lkctl.hosts, and none is configured")
        loads, down = _loads(settings.hosts)
        return choose_host(loads, memory or settings.vm.memory, unreachable=down)
    found = next((h for h in settings.hosts if h.name == host), None)
    if found is None:
        names = ", ".join(h.name for h in settings.hosts) or "none is configured"
        raise ConfigError(f"--host {host}: no such host in lkctl.hosts ({names}); or use --connect URI")
    return found


def _load(host: HostConfig) -> HostLoad:
    with backend.connection(host.uri, host.known_hosts) as conn:
        used = sum(
            int(meta.get("memory") or 0) for dom, meta in backend.lkctl_domains(conn) if dom.isActive()
        )  # fmt: skip
        return HostLoad(host, int(conn.getFreeMemory()) // (1 << 20), used)


def _loads(hosts: Sequence[HostConfig]) -> tuple[list[HostLoad], list[str]]:
    loads, down = [], []
    with ThreadPoolExecutor(max_workers=max(1, len(hosts))) as pool:
        for host, fut in [(h, pool.submit(_load, h)) for h in hosts]:
            try:
                loads.append(fut.result())
            except LkError:
                down.append(host.name)
    return loads, down


def _host_rows(host: HostConfig, include_stopped: bool) -> list[dict[str, Any]]:
    rows = []
    with backend.connection(host.uri, host.known_hosts) as conn:
        for dom, meta in backend.lkctl_domains(conn):
            status = backend.domain_state(dom)
            if not include_stopped and status != "running":
                continue
            rows.append({
                "id": meta.get("id", ""), "name": meta.get("name", ""), "image": meta.get("image", ""),
                "status": status, "created": meta.get("created", ""), "pid": None,
                "ssh_port": meta.get("ssh_port", 0), "ports": meta.get("ports", []), "memory": meta.get("memory", 0),
                "cpus": meta.get("cpus", 0), "accel": _domain_type(dom), "error": None,
                "host": host.name, "uri": host.uri, "uuid": dom.UUIDString(),
            })  # fmt: skip
    return rows


def _domain_type(dom: libvirt.virDomain) -> str:
    return ET.fromstring(dom.XMLDesc(0)).get("type", "")  # noqa: S314 - libvirtd's own output


def list_host_vms(
    hosts: Sequence[HostConfig], *, include_stopped: bool = False
) -> tuple[list[dict[str, Any]], list[str]]:
    """lkctl's VMs on every host, asked in parallel: (rows, one line per host that did not answer)."""
    rows: list[dict[str, Any]] = []
    problems: list[str] = []
    if not hosts:
        return rows, problems
    with ThreadPoolExecutor(max_workers=len(hosts)) as pool:
        futures = [(h, pool.submit(_host_rows, h, include_stopped)) for h in hosts]
        for host, fut in futures:
            try:
                rows += fut.result()
            except LkError as e:
                problems.append(f"host {host.name} is unreachable: {e.message}")
    return rows, problems

"""Plain-text output for tasks (pure functions, unit-tested)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from lkctl.runtime.fastrun import running_line  # the lean `vm.run -d` says it too, without invoke

if TYPE_CHECKING:
    from lkctl.runtime.launch import RunPlan

__all__ = ["age", "plan_line", "ps_table", "running_line", "stats_table", "table"]

_MIB = 1024 * 1024


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns padded by two spaces; widths count characters, not bytes."""
    widths = [max(map(len, column)) for column in zip(headers, *rows, strict=True)]
    line = "  ".join(f"{{:<{w}}}" for w in widths).format  # one call a row (`vm.ps --all` may list thousands)
    return "\n".join([line(*headers).rstrip(), *(line(*row).rstrip() for row in rows)])


def age(iso: str, now: datetime | None = None) -> str:
    """`42s`, `5m`, `3h`, `2d` ago from an ISO-8601 timestamp."""
    try:
        then = datetime.fromisoformat(iso)
    except ValueError:
        return "?"
    seconds = int(((now or datetime.now(UTC)) - then).total_seconds())
    if seconds < 60:
        return f"{max(seconds, 0)}s"
    if seconds < 3600:
        return f"{seconds // 60}m"
    if seconds < 86400:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"


def ps_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """`vm.ps`'s table: one row a VM (long image names shortened from the left)."""
    now = datetime.now(UTC)
    body = [
        [
            r["id"],
            r["name"],
            r["host"],
            r["image"] if len(r["image"]) <= 30 else "…" + r["image"][-29:],
            r["status"],
            age(r["created"], now),
            f"127.0.0.1:{r['ssh_port']}" if r["ssh_port"] else "-",
            ",".join(r["ports"]) or "-",
        ]
        for r in rows
    ]
    return table(["ID", "NAME", "HOST", "IMAGE", "STATUS", "CREATED", "SSH", "PORTS"], body)


def stats_table(s: Mapping[str, Any]) -> str:
    """`vm.stats`'s one-row table."""
    row = [
        s["id"],
        s["name"],
        f"{s['cpu_percent']:.1f}%",
        f"{s['rss_bytes'] / _MIB:.0f}MiB / {s['memory_bytes'] / _MIB:.0f}MiB",
        str(s["vcpus"]),
        f"{s['uptime_seconds']:.0f}s",
        s["status"],
    ]
    return table(["ID", "NAME", "CPU %", "MEM (RSS / GUEST)", "VCPUS", "UPTIME", "STATE"], [row])


def plan_line(plan: RunPlan) -> str:
    """What `vm.run --dry-run` says about the VM it would create."""
    r = plan.record
    return (
        f"lkctl: dry run, nothing started. Would create VM {r.name} ({r.id}) from {plan.boot_path} "
        f"({'built now' if plan.built else 'cached'}): {r.memory} MB, {r.cpus} CPU(s), accel {r.accel}, "
        f"ssh on 127.0.0.1:{r.ssh_port}{', ports ' + ', '.join(r.ports) if r.ports else ''}; state in {r.dir}"
        + (f"; {plan.note}" if plan.note else "")
    )

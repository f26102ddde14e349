"""Plain-text output for tasks (pure functions, unit-tested)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

__all__ = ["age", "table"]


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns padded by two spaces; widths count characters, not bytes."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    for row in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)


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

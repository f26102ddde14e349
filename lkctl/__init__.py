"""lkctl: LinuxKit virtual machines run like containers, driven from Python and invoke.

`lkctl.run`, `lkctl.get`, `lkctl.ps`, `lkctl.build`, `lkctl.Vm` and `lkctl.ExecResult` come from `lkctl.api`
(docs/api.md); they are imported on first use, so `import lkctl.tasks` stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from lkctl.api import ExecFailed, ExecResult, Session, Vm, build, get, ps, run

__all__ = ["ExecFailed", "ExecResult", "Session", "Vm", "__version__", "build", "get", "ps", "run"]

_API = frozenset(__all__) - {"__version__"}


def __getattr__(name: str) -> Any:
    if name in _API:
        from lkctl import api

        return getattr(api, name)
    raise AttributeError(f"module 'lkctl' has no attribute {name!r}")

"""lkctl: LinuxKit virtual machines run like containers, driven from Python and invoke.

`lkctl.run`, `lkctl.get`, `lkctl.ps`, `lkctl.build`, `lkctl.Vm` and `lkctl.ExecResult` come from `lkctl.api`
(docs/api.md); they are imported on first use, so `import lkctl.tasks` stays cheap.
"""

from __future__ import annotations

import types
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from lkctl.api import ExecFailed, ExecResult, Session, Vm, build, get, ps, run

__all__ = ["ExecFailed", "ExecResult", "Session", "Vm", "__version__", "build", "get", "ps", "run"]

_API = frozenset(__all__) - {"__version__"}


class CallableBuildPackage(types.ModuleType):
    """`lkctl.build(...)` is the facade's build (`lkctl.api.build`), yet `lkctl.build` is also the builder package:
    importing it makes the package the attribute `lkctl.build`, whatever this module says. So that package takes
    this class, and calling it calls the facade. It lives here, not in the builder, so the builder never imports
    the facade (no import cycle)."""

    def __call__(self, source: str, **kwargs: Any) -> Any:
        from lkctl.api import build

        return build(source, **kwargs)


def __getattr__(name: str) -> Any:
    if name in _API:
        from lkctl import api

        return getattr(api, name)
    raise AttributeError(f"module 'lkctl' has no attribute {name!r}")

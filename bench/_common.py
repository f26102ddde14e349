"""Shared by the benchmarks: measure lkctl as installed, with its modules byte-compiled.

A wheel install ships .pyc files; a checkout run with PYTHONDONTWRITEBYTECODE=1 (as here) would otherwise
recompile every lkctl module in every CLI process and charge that to lkctl.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def precompile() -> None:
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "lkctl")], check=True, capture_output=True)

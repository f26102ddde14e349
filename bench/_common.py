"""Shared by the benchmarks: measure lkctl as installed, with its modules byte-compiled, from a throwaway home.

A wheel install ships .pyc files; a checkout run with PYTHONDONTWRITEBYTECODE=1 (as here) would otherwise
recompile every lkctl module in every CLI process and charge that to lkctl.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent  # the lkctl CLI of the Python running the bench


def precompile() -> None:
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "lkctl")], check=True, capture_output=True)


def bench_args(doc: str | None, *, rounds: int) -> argparse.Namespace:
    """Byte-compile lkctl, then parse the usual bench options: --rounds N (default `rounds`)."""
    precompile()
    parser = argparse.ArgumentParser(description=doc)
    parser.add_argument("--rounds", type=int, default=rounds)
    return parser.parse_args()


@contextlib.contextmanager
def bench_home() -> Iterator[dict[str, str]]:
    """The environment for lkctl CLIs of one bench run: LKCTL_HOME in a temp dir, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="lkbench-") as home:
        yield dict(os.environ, LKCTL_HOME=home)


def lkctl(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run the lkctl CLI; a failure ends the bench with its output."""
    result = subprocess.run([str(BIN / "lkctl"), *args], env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"lkctl {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
    return result

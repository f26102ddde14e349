"""This repository's own tasks (test, lint, bench) plus lkctl's collections, so `invoke vm.run ...` works here."""

from __future__ import annotations

import os
import shlex
import sys

from invoke.collection import Collection
from invoke.context import Context
from invoke.tasks import task

from lkctl.settings import invoke_defaults
from lkctl.tasks import dev, image, template, vm

PY = shlex.quote(sys.executable)


@task(help={"boot": "include the boot tests (default: yes)", "k": "only tests matching this expression"})
def test(c: Context, boot: bool = True, k: str = "") -> None:
    """Run the whole test suite: lint and types, unit, integration and boot tests."""
    args = ["-n", "2", "--dist", "loadfile"]
    if not boot:
        args += ["-m", "not boot"]
    if k:
        args += ["-k", k]
    c.run(f"{PY} -m pytest {shlex.join(args)}", pty=False, in_stream=False)


@task
def lint(c: Context) -> None:
    """ruff and mypy."""
    c.run(f"{PY} -m ruff check lkctl tests bench tasks.py", in_stream=False)
    c.run(f"{PY} -m ruff format --check lkctl tests bench tasks.py", in_stream=False)
    c.run(f"{PY} -m mypy", in_stream=False)


@task
def bench(c: Context) -> None:
    """Run the benchmarks in bench/ and print their ratios."""
    for script in sorted(os.listdir("bench")):
        if script.endswith(".py") and not script.startswith("_"):
            c.run(f"{PY} bench/{script}", in_stream=False)


ns = Collection(test, lint, bench)
ns.add_collection(vm.ns)
ns.add_collection(image.ns)
ns.add_collection(template.ns)
ns.add_collection(dev.ns)
ns.configure(invoke_defaults())

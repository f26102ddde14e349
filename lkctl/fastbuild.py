"""The `lkctl` executable's lean path for an unchanged `lkctl image.build SOURCE`.

Starting invoke (importing it, loading its config, parsing the task collection) is most of what an unchanged
build costs; the build itself is one receipt check (lkctl.build.receipt). So `lkctl.launcher.main` hands the
plain form `image.build SOURCE` (no option) here, and this answers it only when it would answer exactly as the
full CLI does:

- nothing the full CLI reads before running the task could change what it does or make it fail: no config file
  invoke would load for lkctl (`/etc/lkctl.*`, `~/.lkctl.*`, the project's `lkctl.*`: any of them sends the
  command to the full CLI, even a valid one), no `LKCTL_*` environment variable but lkctl's own directories
  (invoke maps the others onto its config, and can refuse them) and no `INVOKE_*` one (`INVOKE_RUNTIME_CONFIG`
  names a config file, `INVOKE_DEBUG` turns logging on);
- the build's receipt answers (`lkctl.images.unchanged_build`): then the task would only print its two lines,
  which are printed here the same way (its progress ticker leaves nothing: on a terminal its first frame comes
  after 0.2 s and is cleared at the end, elsewhere its first line after 15 s).

Anything else (another form, `--help`, a change to any input, an error of any kind) goes to the full CLI, which
builds or says what is wrong in its own words. Nothing here imports invoke.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Mapping
from pathlib import Path

__all__ = ["config_may_apply", "fast_build", "lean_source"]


def lean_source(args: list[str]) -> str | None:
    """SOURCE when `args` is `image.build SOURCE` and nothing else; else None. Pure."""
    if len(args) != 2 or args[0] != "image.build" or not args[1] or args[1].startswith("-"):
        return None
    return args[1]


def config_may_apply(environ: Mapping[str, str], cwd: Path, home: Path) -> bool:
    """True if invoke could read config (or config-like variables) for this command; then only the full CLI
    knows what happens. Errs towards True."""
    from lkctl.invokeconfig import OWN_ENV

    if any((k.startswith("LKCTL_") and k not in OWN_ENV) or k.startswith("INVOKE_") for k in environ):
        return True  # INVOKE_RUNTIME_CONFIG names a config file, INVOKE_DEBUG turns logging on
    from lkctl.configfiles import config_files, invoke_only_config

    # the files the full CLI reads (lkctl.configfiles), even an empty one, and what only invoke reads
    return bool(config_files(cwd, home)) or invoke_only_config(environ, cwd, home)


def fast_build(args: list[str]) -> int | None:
    """The exit status of an unchanged `image.build SOURCE` answered here; None to use the full CLI instead."""
    source = lean_source(args)
    if source is None:
        return None
    try:
        if config_may_apply(os.environ, Path.cwd(), Path.home()):
            return None
    except (OSError, RuntimeError):  # no cwd, no home: the full CLI says what it makes of that
        return None
    from lkctl.images import unchanged_build

    result = unchanged_build(source)
    if result is None:
        return None
    files = result.outputs["kernel+initrd"]
    try:
        print(f"lkctl: unchanged, from cache: {', '.join(str(p) for p in files)}", file=sys.stderr, flush=True)
        print(result.prefix, flush=True)  # the prefix `vm.run --image` takes, as the task prints it
    except BrokenPipeError:
        # the reader went away: quiet, and 141, as the full CLI ends (lkctl.cli.LkProgram.run)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    return 0

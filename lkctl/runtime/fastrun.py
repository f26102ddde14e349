"""The lean `lkctl vm.run -d`: the plain detached run answered without invoke (issue 12 item 1, cold boot).

Until QEMU runs, everything `lkctl vm.run -d` does is on the boot's critical path, and importing invoke, lkctl's
Program and its task collections was ~0.15 s of it on a quiet machine (0.3-0.4 s on a loaded one). So the
launcher hands `vm.run` here first: its plain form (`-d`/`--detach`, `--image`/`-i`, `--name`/`-n`, `--snapshot`,
nothing else) runs the same library call as the `vm.run` task, with the same settings, and says the same lines.
Anything else, or a configuration only invoke reads (`-f`/`*_RUNTIME_CONFIG`, a `.json`/`.py` config file, an
`LKCTL_LKCTL_*` variable), returns None and the full CLI runs as before.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lkctl.runtime.state import VmRecord
    from lkctl.runtime.vm import RunOptions
    from lkctl.settings import Settings

__all__ = ["PlainRun", "config_tree", "fast_run", "parse_plain_run", "run_options", "running_line"]

_VALUED = {"--image": "image", "-i": "image", "--name": "name", "-n": "name"}


@dataclass(frozen=True)
class PlainRun:
    """`vm.run -d --image IMAGE [--name NAME] [--snapshot]`: what the lean path runs."""

    image: str
    name: str = ""
    snapshot: bool = False  # `--snapshot`: a warm start from the image's memory snapshot


def parse_plain_run(args: list[str]) -> PlainRun | None:
    """`args` (after the program name) as a plain detached `vm.run`, or None when they are anything else."""
    if not args or args[0] != "vm.run":
        return None
    values: dict[str, str] = {}
    detach = snapshot = False
    rest = args[1:]
    i = 0
    while i < len(rest):
        word = rest[i]
        if word in ("-d", "--detach") and not detach:
            detach = True
            i += 1
            continue
        if word == "--snapshot" and not snapshot:
            snapshot = True
            i += 1
            continue
        flag, eq, value = word.partition("=")
        if flag not in _VALUED or (eq and not flag.startswith("--")):
            return None
        if not eq:
            if i + 1 >= len(rest):
                return None
            value = rest[i + 1]
            i += 1
        i += 1
        key = _VALUED[flag]
        if key in values or not value or value.startswith("-"):
            return None
        values[key] = value
    if not detach or not values.get("image"):
        return None
    return PlainRun(values["image"], values.get("name", ""), snapshot)


def config_tree(
    environ: Mapping[str, str], start: Path | None = None, home: Path | None = None
) -> dict[str, Any] | None:
    """The `lkctl:` config tree the full CLI would use, from the shared config files; None when the full CLI would
    also read something else (a runtime config file, a `.json`/`.py` config file, invoke's `LKCTL_LKCTL_*`)."""
    from lkctl.configfiles import config_files, invoke_only_config, read_files

    home = Path.home() if home is None else home
    start = Path.cwd() if start is None else start
    if invoke_only_config(environ, start, home):
        return None
    return read_files(config_files(start, home))


def run_options(plain: PlainRun, settings: Settings, sources: Mapping[str, str]) -> RunOptions:
    """The RunOptions the `vm.run` task makes for `plain` (every other option at its default)."""
    from lkctl.runtime.launch import run_options

    return run_options(settings, sources, name=plain.name, detach=True, snapshot=plain.snapshot)


def running_line(record: VmRecord) -> str:
    """What `vm.run -d` says once the VM runs: where it is and what to try."""
    head = f"lkctl: VM {record.name} ({record.id}) is running"
    hint = f"Try: vm.exec {record.name} -- uname -a   Stop: vm.stop {record.name}"
    if record.libvirt:
        return f"{head} on {record.libvirt['host']} through libvirt. {hint}"
    if not record.ssh_port:
        return f"{head} with no network. Stop: vm.stop {record.name}"
    return f"{head}; ssh on 127.0.0.1:{record.ssh_port}. {hint}"


def _err(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def fast_run(args: list[str]) -> int | None:
    """Run `lkctl vm.run -d --image X [--name N]` as the full CLI would and return its exit status; None (having
    done nothing) when `args` or the configuration need the full CLI."""
    plain = parse_plain_run(args)
    if plain is None:
        return None
    from lkctl.errors import LkError

    try:
        tree = config_tree(os.environ)
    except LkError:
        return None  # an unreadable config file: the full CLI says it in its own words
    if tree is None:
        return None
    from lkctl.configfiles import setting_source
    from lkctl.runtime.launch import run_image
    from lkctl.settings import load_settings

    # as the full CLI: SIGTERM/SIGHUP unwind like Ctrl-C, so a half-started VM is not left behind
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    try:
        settings = load_settings({"lkctl": tree})
        sources = {k: setting_source("vm", k, tree, os.environ) for k in ("memory", "cpus")}
        record, _ = run_image(
            plain.image, run_options(plain, settings, sources), settings, console=sys.stdout.buffer,
            say=lambda msg: _err(f"lkctl: {msg}"), size_sources=sources, progress=sys.stderr,
        )  # fmt: skip
        print(record.id, flush=True)
        _err(running_line(record))
    except LkError as e:
        _err(f"lkctl: {e.message}")
        return e.exit_code
    except KeyboardInterrupt:
        _err("lkctl: interrupted")
        return 130
    except BrokenPipeError:
        return 128 + signal.SIGPIPE
    return 0

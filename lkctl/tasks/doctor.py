"""doctor: what this host has for lkctl and what is missing."""

from __future__ import annotations

import json as _json

from invoke.context import Context
from invoke.exceptions import Exit

from lkctl.tasks._adapter import adapt, config_tree, settings_from, size_sources, task

__all__ = ["doctor"]


@task(help={"json": "print the report as JSON", "probe": "probe the accelerator (--no-probe skips the test boot)"})
@adapt
def doctor(c: Context, json: bool = False, probe: bool = True) -> None:
    """Check this host: QEMU, accelerator and why, missing packages (with the apt line), libvirt, ports, config."""
    from lkctl.configfiles import config_files
    from lkctl.doctor import diagnose, render_report

    config_tree(c)  # a broken or missing config file is reported like everywhere else
    report = diagnose(settings_from(c), config_files=config_files(), sources=size_sources(c, memory=0, cpus=0),
                      probe=probe)  # fmt: skip
    print(_json.dumps(report, indent=2) if json else render_report(report))
    if report["qemu"]["path"] is None or report["packages"]["missing_for_demo"]:
        raise Exit(code=1)

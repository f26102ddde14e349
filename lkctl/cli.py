"""The `lkctl` command: an invoke Program over the same collections `invoke` users import."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

from invoke.config import Config
from invoke.program import Program

from lkctl import __version__
from lkctl.tasks import ns

__all__ = ["LkConfig", "LkProgram", "program"]


class LkConfig(Config):
    """Config files `/etc/lkctl.yaml`, `~/.lkctl.yaml` and, unlike plain invoke, `./lkctl.yaml` up to the repo root."""

    prefix = "lkctl"

    @staticmethod
    def global_defaults() -> dict[str, Any]:
        base: dict[str, Any] = Config.global_defaults()
        base["run"]["in_stream"] = False
        return base


def _project_dir(start: Path) -> Path | None:
    for d in [start, *start.parents]:
        if (d / "lkctl.yaml").is_file() or (d / "lkctl.yml").is_file():
            return d
        if (d / ".git").exists():
            return None
    return None


def _sigterm_to_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


class LkProgram(Program):
    def parse_collection(self) -> None:
        super().parse_collection()
        project = _project_dir(Path.cwd())
        if project is not None:
            # invoke skips project config in bundled-namespace mode; load ./lkctl.yaml ourselves
            self.config.set_project_location(str(project))
            self.config.load_project()

    def parse_cleanup(self) -> None:
        if self.args.complete.value:  # VM and template names before invoke's task names (it then exits)
            import re

            from lkctl.tasks._completion import completion_candidates

            invocation = re.sub(r"^\S*lkctl ", "", self.core.remainder)
            for word in completion_candidates(invocation, self.collection.task_names):
                print(word)
        super().parse_cleanup()

    def run(self, argv: list[str] | None = None, exit: bool = True) -> None:
        # SIGTERM/SIGHUP (CI cancel, closed terminal) unwind like Ctrl-C so cleanup runs and no QEMU is orphaned
        previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP)}
        for s in previous:
            signal.signal(s, _sigterm_to_interrupt)
        try:
            super().run(argv, exit)
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)


program = LkProgram(
    name="lkctl",
    binary="lkctl",
    binary_names=["lkctl"],
    version=__version__,
    namespace=ns,
    config_class=LkConfig,
)

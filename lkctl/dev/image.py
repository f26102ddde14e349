"""PLACEHOLDER for the dev image API; the devimg branch replaces this whole file (the coordinator takes theirs).

Until then the "dev image" is the built-in `dev` template: an initrd userland in RAM (bash, git, python3, make,
curl) built on demand from this machine's packages. It has no persistent root, no Node/PHP/Go: tests that need
those check `PLACEHOLDER` and skip with that reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lkctl import paths

__all__ = ["PLACEHOLDER", "DevImage", "dev_image_update", "install_dev_image", "installed_dev_image"]

PLACEHOLDER = True  # the devimg branch's module has no such name


@dataclass(frozen=True)
class DevImage:
    name: str
    version: str
    image: str  # what lkctl.runtime.launch.run_image / `vm.run --image` accepts
    path: Path
    size: int


def _template() -> DevImage:
    path = paths.resource_dir("templates") / "dev.yml"
    return DevImage(name="dev", version="template", image="dev", path=path, size=0)


def installed_dev_image() -> DevImage | None:
    """The dev image `dev.boot` uses (placeholder: the `dev` template, always there)."""
    return _template()


def install_dev_image(*, source: str | None = None, force: bool = False) -> DevImage:
    """Get the dev image (placeholder: nothing to fetch; the template is built on first boot)."""
    return _template()


def dev_image_update(*, check: bool = False) -> tuple[bool, str]:
    """(whether a newer dev image exists or was installed, a one-line message)."""
    return False, "the dev template is built from this machine's packages: nothing to update"

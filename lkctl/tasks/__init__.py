"""lkctl's invoke collections. In your own tasks.py: `from lkctl.tasks import ns` (or add `vm`, `image`, `dev`...)."""

from __future__ import annotations

from typing import Any

from invoke.collection import Collection

from lkctl.tasks import dev, doctor, image, template, vm

__all__ = ["dev", "doctor", "image", "ns", "template", "vm"]


class _Namespace(Collection):
    """The root collection. Its configuration starts with lkctl's settings' defaults (`lkctl.settings`), made the
    first time anything reads or merges into it rather than at import: making the settings' frozen dataclasses is
    most of what `import lkctl.tasks` would cost. Options given to `configure` still land over the defaults."""

    _lkctl_config: dict[str, Any] | None = None

    @property
    def _configuration(self) -> dict[str, Any]:
        if self._lkctl_config is None:
            from lkctl.settings import invoke_defaults

            self._lkctl_config = invoke_defaults()
        return self._lkctl_config

    @_configuration.setter
    def _configuration(self, value: dict[str, Any]) -> None:
        # Collection.__init__ starts a collection with {}: ours starts with the defaults, made when first read
        self._lkctl_config = None if value == {} and self._lkctl_config is None else value


ns = _Namespace()
ns.add_collection(vm.ns)
ns.add_collection(image.ns)
ns.add_collection(template.ns)
ns.add_collection(dev.ns)
ns.add_task(doctor.doctor)

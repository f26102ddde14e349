"""lkctl's invoke collections. In your own tasks.py: `from lkctl.tasks import ns` (or add `vm`, `image`, `dev`...)."""

from __future__ import annotations

from invoke.collection import Collection

from lkctl.settings import invoke_defaults
from lkctl.tasks import dev, doctor, image, template, vm

__all__ = ["dev", "doctor", "image", "ns", "template", "vm"]

ns = Collection()
ns.add_collection(vm.ns)
ns.add_collection(image.ns)
ns.add_collection(template.ns)
ns.add_collection(dev.ns)
ns.add_task(doctor.doctor)
ns.configure(invoke_defaults())

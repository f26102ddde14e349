"""The project's dev VM: `dev.*` as library functions (the tasks in lkctl/tasks/dev.py are thin adapters).

- project.py: which project (git root or cwd) and its dev VM's stable name
- image.py: the dev image (installed_dev_image, install_dev_image, dev_image_update)
- environment.py: boot / stop / status / shell / tests in /app
- detect.py: serve and test command detection, `.lkctl/test.yaml`
- serve.py + forward.py: a server in the VM forwarded to 127.0.0.1 on the running VM (QMP hostfwd_add/remove)
- agent.py: a coding agent in the VM with only the credentials asked for
- console.py: the serial console, attached without SSH
"""

from __future__ import annotations

from lkctl.dev.project import GUEST_APP, Project, dev_vm_name, find_project

__all__ = ["GUEST_APP", "Project", "dev_vm_name", "find_project"]

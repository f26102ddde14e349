"""Shell completion of VM and template names for `lkctl` (invoke's `--complete` offers only task names and flags).

The shell scripts invoke ships (`lkctl --print-completion-script bash|zsh|fish`) pass the words typed so far and
filter what we print by the word being completed, so printing every candidate is enough.
"""

from __future__ import annotations

import contextlib
import shlex
from collections.abc import Iterable, Sequence

__all__ = ["completion_candidates", "words_wanting"]

# tasks whose positional names VMs (vm.cp takes VM:PATH, so a VM name followed by ':')
_VM_TASKS = frozenset(
    f"vm.{t}"
    for t in ("stop", "rm", "kill", "inspect", "restart", "start", "wait", "stats", "ssh-config", "logs", "exec")
) | {"vm.shell"}
_IMAGE_FLAGS = frozenset({"--image", "--template", "-i"})
_TEMPLATE_TASKS = frozenset({"image.build", "template.show", "template.render", "template.vars"})


def words_wanting(tokens: Sequence[str], task_names: Iterable[str]) -> set[str]:
    """What the word being completed may be, from the words before it: {"vm"}, {"vm:"}, {"template"} or none."""
    tasks = set(task_names)
    current = next((t for t in reversed(tokens) if t in tasks), None)
    if current is None:
        return set()
    tail = list(tokens[len(tokens) - tokens[::-1].index(current) :])
    # the last full word may be a flag waiting for its value (`--image ` or `--image mi`)
    if (tail and tail[-1] in _IMAGE_FLAGS) or (len(tail) >= 2 and tail[-2] in _IMAGE_FLAGS):
        return {"template"}
    if "--" in tail:
        return set()
    if current in _VM_TASKS:
        return {"vm"}
    if current == "vm.cp":
        return {"vm:"}
    if current in _TEMPLATE_TASKS:
        return {"template"}
    return set()


def completion_candidates(invocation: str, task_names: Iterable[str]) -> list[str]:
    """VM names and IDs, or template names, that fit where the cursor is in `invocation` (lkctl's argv tail)."""
    try:
        tokens = shlex.split(invocation)
    except ValueError:
        return []
    wanted = words_wanting(tokens, task_names)
    out: list[str] = []
    with contextlib.suppress(Exception):  # completion must never print a traceback into the user's shell
        if wanted & {"vm", "vm:"}:
            from lkctl.runtime.state import listed_records

            suffix = ":" if "vm:" in wanted else ""
            for r in listed_records():
                out += [r.name + suffix] + ([r.id + suffix] if r.id != r.name else [])
        if "template" in wanted:
            from lkctl.templates import list_templates

            out += [t.name for t in list_templates()]
    return out

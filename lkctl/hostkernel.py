"""The host's kernels and their module index: which kernel lkctl's base kernel image takes, and which module
files a VM needs (the closure of what a recipe names over modules.dep, aliases and soft dependencies).

Pure functions over the text of `modules.*` files, plus the one look at /boot and /lib/modules.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

from lkctl.proc import ProgramMissing

__all__ = ["BOOT_DIR", "MODULES_DIR", "filter_module_index", "kernel_version", "module_name", "select_modules"]

BOOT_DIR = Path("/boot")
MODULES_DIR = Path("/lib/modules")
_KO = re.compile(r"\.ko(\.(xz|gz|zst))?$")


def _version_key(version: str) -> list[tuple[int, str]]:
    return [(int(p), "") if p.isdigit() else (-1, p) for p in re.split(r"(\d+)", version) if p]


def kernel_version(wanted: str, *, boot: Path = BOOT_DIR, modules: Path = MODULES_DIR) -> str:
    """`wanted`, or for "auto" the running kernel if /boot has it, else the newest kernel in /boot (each with
    its modules installed)."""
    have = sorted((p.name.removeprefix("vmlinuz-") for p in boot.glob("vmlinuz-*")), key=_version_key)
    have = [v for v in have if (modules / v / "modules.dep").is_file()]
    if wanted != "auto":
        if wanted not in have:
            raise ProgramMissing(f"kernel {wanted} is not installed in {boot} with its modules in {modules}")
        return wanted
    running = os.uname().release
    if running in have:
        return running
    if not have:
        from lkctl.arch import debian_arch

        deb = debian_arch()
        package = f"linux-image-{deb}" if deb in ("amd64", "arm64") else "linux-image"  # Debian's metapackages
        raise ProgramMissing(
            f"no kernel with modules found in {boot}; install one with: sudo apt-get install {package}"
        )
    return have[-1]


def module_name(path: str) -> str:
    """`kernel/fs/9p/9p.ko.xz` → `9p`: the name modprobe knows a module file by."""
    return _KO.sub("", path.rsplit("/", 1)[-1]).replace("-", "_")


def select_modules(
    wanted: Iterable[str], dep_text: str, alias_text: str = "", softdep_text: str = ""
) -> tuple[list[str], list[str]]:
    """The module files (paths as in modules.dep) for `wanted`, closed over dependencies and soft dependencies.

    Returns (sorted paths, wanted names the kernel has no module for: built in, or absent). Pure: it reads
    only the text of modules.dep, modules.alias and modules.softdep.
    """
    deps: dict[str, list[str]] = {}
    by_name: dict[str, str] = {}
    for line in dep_text.splitlines():
        path, colon, rest = line.partition(":")
        if colon:
            deps[path] = rest.split()
            by_name[module_name(path)] = path
    aliases: dict[str, set[str]] = {}
    for line in alias_text.splitlines():
        words = line.split()
        if len(words) == 3 and words[0] == "alias":
            aliases.setdefault(words[1], set()).add(words[2].replace("-", "_"))
    soft: dict[str, list[str]] = {}
    for line in softdep_text.splitlines():
        words = line.split()
        if len(words) > 2 and words[0] == "softdep":
            soft.setdefault(words[1].replace("-", "_"), []).extend(w for w in words[2:] if not w.endswith(":"))

    def resolve(name: str) -> list[str]:
        norm = name.replace("-", "_")
        if norm in by_name:
            return [by_name[norm]]
        return [by_name[m] for m in sorted(aliases.get(name, ())) if m in by_name]

    chosen: set[str] = set()
    missing: list[str] = []
    todo: list[str] = []
    for name in wanted:
        found = resolve(name)
        if not found:
            missing.append(name)
        todo.extend(found)
    while todo:
        path = todo.pop()
        if path in chosen:
            continue
        chosen.add(path)
        todo.extend(deps.get(path, []))
        for s in soft.get(module_name(path), []):
            todo.extend(resolve(s))
    return sorted(chosen), missing


def filter_module_index(name: str, text: str, keep: set[str]) -> str:
    """modules.<name> (dep, alias, softdep, symbols, order) cut down to the module files in `keep`.

    The fallback when depmod is not installed; `keep` must be closed over dependencies (see select_modules).
    """
    names = {module_name(p) for p in keep}
    out = []
    for line in text.splitlines():
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        if name == "dep":
            ok = line.partition(":")[0] in keep
        elif name == "order":
            ok = words[0] in keep
        elif name == "softdep":  # softdep <module> pre: ... post: ...
            ok = len(words) > 1 and words[1].replace("-", "_") in names
        else:  # alias <pattern> <module>, alias symbol:<sym> <module>
            ok = len(words) == 3 and words[2].replace("-", "_") in names
        if ok:
            out.append(line)
    return "".join(line + "\n" for line in out)

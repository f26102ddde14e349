"""The file tree of one base-image layer: a recipe's steps run against this machine, written as a reproducible tar.

`lkctl.baseimages` owns recipes, stamps and the store; this module owns what a step puts in the layer: host files
(`file`, `elf` with the libraries ldd names, `busybox` and its applet links, the host `kernel` and the modules a
recipe names, closed over their dependencies, `packages` from dpkg) and recipe data (`tree`, `dir`, `symlink`).
The layer is sorted, root-owned and has LinuxKit's fixed mtime, so the same inputs give the same bytes.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lkctl import hostkernel
from lkctl.errors import BuildError
from lkctl.hostkernel import filter_module_index, module_name, select_modules
from lkctl.proc import ProgramMissing, find_program, run

__all__ = ["LayerEntry", "LayerTree", "file_mode", "layer_tree", "ldd", "recipe_step", "walk_tree", "write_layer_tar"]

log = logging.getLogger("lkctl.baseimages")

_MTIME = 1492533000  # 2017-04-18T16:30:00Z, LinuxKit's timestamp for generated files


@dataclass(frozen=True)
class LayerEntry:
    kind: str  # file | dir | symlink
    mode: int = 0o644
    data: bytes | None = None
    host: Path | None = None
    target: str = ""


@dataclass
class LayerTree:
    """Paths (relative, no leading /) → entries; later additions replace earlier ones, parents are implied."""

    entries: dict[str, LayerEntry] = field(default_factory=dict)
    host_files: set[Path] = field(default_factory=set)

    def add(self, path: str, entry: LayerEntry, *, replace: bool = True) -> None:
        rel = _clean(path)
        if not replace and rel in self.entries:
            return
        parts = rel.split("/")
        for i in range(1, len(parts)):
            self.entries.setdefault("/".join(parts[:i]), LayerEntry("dir", 0o755))
        if entry.host is not None:
            self.host_files.add(entry.host)
        self.entries[rel] = entry

    def add_host(self, path: str, host: Path, mode: int) -> None:
        self.add(path, LayerEntry("file", mode, host=host))


def _clean(path: str) -> str:
    rel = os.path.normpath("/" + path).lstrip("/")
    if not rel or rel.startswith(".."):
        raise BuildError(f"bad path {path!r} in a recipe")
    return rel


def write_layer_tar(tree: LayerTree, out: io.BufferedIOBase | Any) -> None:
    """A reproducible tar: sorted names (parents first), fixed mtime, root-owned, no user or group names."""
    import tarfile

    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for path in sorted(tree.entries):
            e = tree.entries[path]
            info = tarfile.TarInfo(path)
            info.mtime, info.uid, info.gid, info.uname, info.gname = _MTIME, 0, 0, "", ""
            info.mode = e.mode
            if e.kind == "dir":
                info.type = tarfile.DIRTYPE
                tf.addfile(info)
            elif e.kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, e.target
                tf.addfile(info)
            else:
                data = e.data if e.data is not None else _read_host(e.host)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))


def _read_host(path: Path | None) -> bytes:
    assert path is not None
    try:
        return path.read_bytes()
    except PermissionError:
        raise BuildError(f"cannot read {path}: permission denied (e.g. `sudo chmod a+r {path}`)") from None


def recipe_step(step: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    if not isinstance(step, dict) or len(step) != 1:
        raise BuildError(f"a recipe step must be a mapping with one key (its type), got {step!r}")
    kind, spec = next(iter(step.items()))
    return str(kind), dict(spec or {})


def _mode(value: Any, default: int) -> int:
    return default if value is None else int(str(value), 8)


def _host_file(path: str, package: str | None, what: str) -> Path:
    p = Path(path)
    if not p.exists():
        hint = f"; install it with: sudo apt-get install {package}" if package else ""
        raise ProgramMissing(f"{path} ({what}) is missing{hint}")
    return p


def _busybox(tree: LayerTree, spec: dict[str, Any]) -> None:
    binary = Path(find_program(spec.get("program", "busybox")))
    dest = _clean(spec.get("dest", "bin/busybox"))
    tree.add_host(dest, binary, 0o755)
    listing = run([str(binary), "--list-full"], what="busybox --list-full").stdout.decode()
    for applet in sorted(listing.split()):
        if applet not in ("linuxrc", dest):
            tree.add(applet, LayerEntry("symlink", 0o777, target="/" + dest), replace=False)


def _tree(tree: LayerTree, recipe_dir: Path, spec: dict[str, Any]) -> None:
    src = recipe_dir / spec.get("src", "rootfs")
    base = spec.get("dest", "")
    modes = {k: _mode(v, 0o644) for k, v in (spec.get("modes") or {}).items()}
    for rel, path in walk_tree(src):
        dest = f"{base}/{rel}"
        if path.is_symlink():
            tree.add(dest, LayerEntry("symlink", 0o777, target=os.readlink(path)))
        elif path.is_dir():
            tree.add(dest, LayerEntry("dir", modes.get(rel, 0o755)))
        else:
            data = path.read_bytes()
            tree.add(dest, LayerEntry("file", modes.get(rel, file_mode(path, data)), data=data))


def file_mode(path: Path, data: bytes) -> int:
    # a script is executable even where the exec bit got lost (a wheel, a zip, a Windows checkout)
    return 0o755 if path.stat().st_mode & 0o100 or data.startswith(b"#!") else 0o644


def walk_tree(root: Path) -> list[tuple[str, Path]]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in [*dirnames, *sorted(filenames)]:
            p = Path(dirpath) / name
            out.append((p.relative_to(root).as_posix(), p))
    return sorted(out)


def _file(tree: LayerTree, recipe_dir: Path, name: str, spec: dict[str, Any]) -> None:
    mode = _mode(spec.get("mode"), 0o644)
    if "contents" in spec:
        tree.add(spec["dest"], LayerEntry("file", mode, data=str(spec["contents"]).encode()))
    elif "src" in spec:
        tree.add(spec["dest"], LayerEntry("file", mode, data=(recipe_dir / spec["src"]).read_bytes()))
    elif "host" in spec:
        if spec.get("optional") and not Path(spec["host"]).exists():
            tree.host_files.add(Path(spec["host"]))  # its appearance makes the image stale
            return
        tree.add_host(spec["dest"], _host_file(spec["host"], spec.get("package"), "a host file"), mode)
    else:
        raise BuildError(f"{name}: a file step needs contents, src or host: {spec!r}")


def ldd(binary: Path) -> list[Path]:
    """The shared libraries (and dynamic loader) `binary` needs, as ldd resolves them on this machine."""
    proc = run([find_program("ldd"), str(binary)], check=False, what="ldd")
    out = proc.stdout.decode(errors="replace")
    if proc.returncode != 0:
        if "not a dynamic executable" in out + proc.stderr.decode(errors="replace"):
            return []
        raise BuildError(f"ldd {binary} failed: {proc.stderr.decode(errors='replace').strip()}")
    libs = []
    for line in out.splitlines():
        left, arrow, right = line.strip().partition("=>")
        if arrow and right.strip().startswith("not found"):
            raise BuildError(f"{binary} needs {left.strip()}, which ldd cannot find on this machine")
        path = (right if arrow else left).strip().split(" (")[0].strip()
        if path.startswith("/"):
            libs.append(Path(path))
    return libs


def _elf(tree: LayerTree, spec: dict[str, Any]) -> None:
    for item in spec.get("binaries") or []:
        host = Path(item["host"])
        if not host.exists() and spec.get("optional"):
            tree.host_files.add(host)  # its appearance makes the image stale
            continue
        host = _host_file(item["host"], spec.get("package"), "a program")
        tree.add_host(item.get("dest", item["host"]), host, 0o755)
        for lib in ldd(host):
            tree.add_host(str(lib), lib, 0o755)


def _packages(tree: LayerTree, spec: dict[str, Any]) -> None:
    from lkctl.debpackages import collect_package_files

    entries, used = collect_package_files(
        spec.get("names") or [],
        exclude=spec.get("exclude") or [],
        skip=spec.get("skip") or [],
        alternatives=bool(spec.get("alternatives", True)),
    )
    for e in entries:
        tree.add(e.path, LayerEntry(e.kind, e.mode, host=e.host, target=e.target))
    tree.host_files.update(used)
    log.info("packages: %d entries from %s", len(entries), ", ".join(spec.get("names") or []))


# -- the kernel ----------------------------------------------------------------------------------------------
def _kernel(tree: LayerTree, spec: dict[str, Any], version: str) -> None:
    vmlinuz = hostkernel.BOOT_DIR / f"vmlinuz-{version}"
    mdir = hostkernel.MODULES_DIR / version

    def text(name: str) -> str:
        p = mdir / f"modules.{name}"
        if not p.exists():
            return ""
        tree.host_files.add(p)
        return p.read_text(errors="replace")

    selected, missing = select_modules(spec.get("modules") or [], text("dep"), text("alias"), text("softdep"))
    builtin = {module_name(line) for line in text("builtin").split()}
    absent = [m for m in missing if m.replace("-", "_") not in builtin]
    if absent:
        log.info("kernel %s has no module for: %s", version, ", ".join(absent))
    tree.add_host("kernel", vmlinuz, 0o644)
    modules = LayerTree()
    with tempfile.TemporaryDirectory(prefix="lkctl-modules.") as tmp:
        out = Path(tmp) / "lib" / "modules" / version
        out.mkdir(parents=True)
        for rel in selected:
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(mdir / rel, out / rel)
            tree.host_files.add(mdir / rel)
        keep = set(selected)
        (out / "modules.order").write_text(filter_module_index("order", text("order"), keep))
        for extra in ("builtin", "builtin.modinfo"):
            if (mdir / f"modules.{extra}").exists():
                shutil.copyfile(mdir / f"modules.{extra}", out / f"modules.{extra}")
        try:
            depmod: str | None = find_program("depmod")
        except ProgramMissing:
            depmod = None
        if depmod:
            run([depmod, "-b", tmp, version], what="depmod")
        else:
            for name in ("dep", "alias", "softdep", "symbols"):
                (out / f"modules.{name}").write_text(filter_module_index(name, text(name), keep))
        for rel, path in walk_tree(Path(tmp)):
            if path.is_dir():
                modules.add(rel, LayerEntry("dir", 0o755))
            else:
                modules.add(rel, LayerEntry("file", 0o644, data=path.read_bytes()))
    buf = io.BytesIO()
    write_layer_tar(modules, buf)
    tree.add("kernel.tar", LayerEntry("file", 0o644, data=buf.getvalue()))
    log.info("kernel %s: %d modules, kernel.tar %d KiB", version, len(selected), len(buf.getvalue()) // 1024)


# -- building and caching ----------------------------------------------------------------------------------
def layer_tree(recipe_dir: Path, name: str, steps: Any, params: dict[str, str]) -> LayerTree:
    """The layer the recipe `name` (in `recipe_dir`) makes with `steps` and the host facts `params` resolved."""
    tree = LayerTree()
    for i, step in enumerate(steps):
        kind, spec = recipe_step(step)
        if kind == "busybox":
            _busybox(tree, spec)
        elif kind == "tree":
            _tree(tree, recipe_dir, spec)
        elif kind == "file":
            _file(tree, recipe_dir, name, spec)
        elif kind == "dir":
            for p in spec.get("paths") or [spec["dest"]]:
                tree.add(p, LayerEntry("dir", _mode(spec.get("mode"), 0o755)))
        elif kind == "symlink":
            tree.add(spec["dest"], LayerEntry("symlink", 0o777, target=str(spec["target"])))
        elif kind == "elf":
            _elf(tree, spec)
        elif kind == "kernel":
            _kernel(tree, spec, params[f"{i}.kernel"])
        elif kind == "packages":
            _packages(tree, spec)
        else:
            raise BuildError(f"{recipe_dir / 'recipe.yml'}: unknown step type {kind!r}")
    return tree

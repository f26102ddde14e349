"""lkctl's base images (kernel, init, sshd, dev), made from this machine's Debian packages.

LinuxKit YAML names OCI images for its kernel, init and services. So that no registry is needed, lkctl makes
`lkctl.local/kernel`, `lkctl.local/init` and `lkctl.local/sshd` from the host's /boot kernel, busybox-static and
dropbear-bin, and `lkctl.local/dev` (bash, git, python3, make, curl, an editor) from the files of the host's
installed Debian packages and their dependencies, only when something names it. Each image is data
(`images/<name>/recipe.yml`: files, trees, symlinks, dirs, plus typed `busybox`, `elf`, `kernel` and `packages`
steps) run here into one deterministic layer (sorted, fixed mtime, uid/gid 0) in the local OCI
store, tagged `latest` and with a content tag. A stamp in the store (recipe contents + every host file used, by
path, size and mtime) makes a second run a no-op.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from lkctl import hostkernel, paths
from lkctl.errors import BuildError, ImageError, LkError
from lkctl.fsutil import atomic_write, file_identity, file_lock
from lkctl.hostkernel import filter_module_index, kernel_version, module_name, select_modules
from lkctl.proc import ProgramMissing, find_program, run

if TYPE_CHECKING:
    from lkctl.oci.layout import Store

__all__ = [
    "BASE_IMAGES",
    "LOCAL_IMAGES",
    "base_image_name",
    "build_all",
    "ensure_base_image",
    "filter_module_index",
    "freshness_facts",
    "freshness_holds",
    "host_params",
    "is_base_image",
    "select_modules",
]

log = logging.getLogger("lkctl.baseimages")

#: short name → repository of every image lkctl makes itself
BASE_IMAGES: Mapping[str, str] = MappingProxyType(
    {"kernel": "lkctl.local/kernel", "init": "lkctl.local/init", "sshd": "lkctl.local/sshd"}
)
#: every image lkctl can make: the base images plus those made only on demand (the large `dev` userland, and
#: e2fsck for the dev image's initrd)
LOCAL_IMAGES: Mapping[str, str] = MappingProxyType(
    {**BASE_IMAGES, "dev": "lkctl.local/dev", "e2fsck": "lkctl.local/e2fsck"}
)

_STAMP_FORMAT = 1
_MTIME = 1492533000  # 2017-04-18T16:30:00Z, LinuxKit's timestamp for generated files


def base_image_name(ref: str) -> str | None:
    """The short name (`kernel`, `init`, `sshd`, `dev`, `e2fsck`) if `ref` names an image lkctl makes, else None."""
    from lkctl.oci.reference import parse_reference

    try:
        name = parse_reference(ref).name
    except ImageError:
        return None
    return next((short for short, repo in LOCAL_IMAGES.items() if repo == name), None)


def is_base_image(ref: str) -> bool:
    """True if `ref` is an image lkctl makes itself (`lkctl.local/{kernel,init,sshd,dev,e2fsck}[:tag]`)."""
    return base_image_name(ref) is not None


# -- the file tree of one layer ------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Entry:
    kind: str  # file | dir | symlink
    mode: int = 0o644
    data: bytes | None = None
    host: Path | None = None
    target: str = ""


@dataclass
class _Tree:
    """Paths (relative, no leading /) → entries; later additions replace earlier ones, parents are implied."""

    entries: dict[str, _Entry] = field(default_factory=dict)
    host_files: set[Path] = field(default_factory=set)

    def add(self, path: str, entry: _Entry, *, replace: bool = True) -> None:
        rel = _clean(path)
        if not replace and rel in self.entries:
            return
        parts = rel.split("/")
        for i in range(1, len(parts)):
            self.entries.setdefault("/".join(parts[:i]), _Entry("dir", 0o755))
        if entry.host is not None:
            self.host_files.add(entry.host)
        self.entries[rel] = entry

    def add_host(self, path: str, host: Path, mode: int) -> None:
        self.add(path, _Entry("file", mode, host=host))


def _clean(path: str) -> str:
    rel = os.path.normpath("/" + path).lstrip("/")
    if not rel or rel.startswith(".."):
        raise BuildError(f"bad path {path!r} in a recipe")
    return rel


def _write_tar(tree: _Tree, out: io.BufferedIOBase | Any) -> None:
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


# -- recipes ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Recipe:
    name: str
    ref: str
    dir: Path
    steps: tuple[dict[str, Any], ...]
    config: dict[str, Any]
    labels: dict[str, str]


def _load_recipe(name: str) -> _Recipe:
    import yaml

    from lkctl.yamlio import safe_load

    rdir = paths.resource_dir("images") / name
    try:
        doc = safe_load((rdir / "recipe.yml").read_text())  # libyaml when PyYAML has it (every build reads these)
    except FileNotFoundError:
        raise BuildError(f"no recipe for base image {name}: {rdir / 'recipe.yml'} is missing") from None
    except yaml.YAMLError as e:
        raise BuildError(f"{rdir / 'recipe.yml'} is not valid YAML: {e}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("steps"), list):
        raise BuildError(f"{rdir / 'recipe.yml'}: expected a mapping with a `steps` list")
    labels = {
        k: v if isinstance(v, str) else json.dumps(v, sort_keys=True, separators=(",", ":"))
        for k, v in (doc.get("labels") or {}).items()
    }
    return _Recipe(
        name=name,
        ref=str(doc.get("ref") or LOCAL_IMAGES[name]),
        dir=rdir,
        steps=tuple(doc["steps"]),
        config=dict(doc.get("config") or {}),
        labels=labels,
    )


def _step(step: dict[str, Any]) -> tuple[str, dict[str, Any]]:
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


def _busybox(tree: _Tree, spec: dict[str, Any]) -> None:
    binary = Path(find_program(spec.get("program", "busybox")))
    dest = _clean(spec.get("dest", "bin/busybox"))
    tree.add_host(dest, binary, 0o755)
    listing = run([str(binary), "--list-full"], what="busybox --list-full").stdout.decode()
    for applet in sorted(listing.split()):
        if applet not in ("linuxrc", dest):
            tree.add(applet, _Entry("symlink", 0o777, target="/" + dest), replace=False)


def _tree(tree: _Tree, recipe: _Recipe, spec: dict[str, Any]) -> None:
    src = recipe.dir / spec.get("src", "rootfs")
    base = spec.get("dest", "")
    modes = {k: _mode(v, 0o644) for k, v in (spec.get("modes") or {}).items()}
    for rel, path in _walk(src):
        dest = f"{base}/{rel}"
        if path.is_symlink():
            tree.add(dest, _Entry("symlink", 0o777, target=os.readlink(path)))
        elif path.is_dir():
            tree.add(dest, _Entry("dir", modes.get(rel, 0o755)))
        else:
            data = path.read_bytes()
            tree.add(dest, _Entry("file", modes.get(rel, _file_mode(path, data)), data=data))


def _file_mode(path: Path, data: bytes) -> int:
    # a script is executable even where the exec bit got lost (a wheel, a zip, a Windows checkout)
    return 0o755 if path.stat().st_mode & 0o100 or data.startswith(b"#!") else 0o644


def _walk(root: Path) -> list[tuple[str, Path]]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in [*dirnames, *sorted(filenames)]:
            p = Path(dirpath) / name
            out.append((p.relative_to(root).as_posix(), p))
    return sorted(out)


def _file(tree: _Tree, recipe: _Recipe, spec: dict[str, Any]) -> None:
    mode = _mode(spec.get("mode"), 0o644)
    if "contents" in spec:
        tree.add(spec["dest"], _Entry("file", mode, data=str(spec["contents"]).encode()))
    elif "src" in spec:
        tree.add(spec["dest"], _Entry("file", mode, data=(recipe.dir / spec["src"]).read_bytes()))
    elif "host" in spec:
        if spec.get("optional") and not Path(spec["host"]).exists():
            tree.host_files.add(Path(spec["host"]))  # its appearance makes the image stale
            return
        tree.add_host(spec["dest"], _host_file(spec["host"], spec.get("package"), "a host file"), mode)
    else:
        raise BuildError(f"{recipe.name}: a file step needs contents, src or host: {spec!r}")


def _ldd(binary: Path) -> list[Path]:
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


def _elf(tree: _Tree, spec: dict[str, Any]) -> None:
    for item in spec.get("binaries") or []:
        host = Path(item["host"])
        if not host.exists() and spec.get("optional"):
            tree.host_files.add(host)  # its appearance makes the image stale
            continue
        host = _host_file(item["host"], spec.get("package"), "a program")
        tree.add_host(item.get("dest", item["host"]), host, 0o755)
        for lib in _ldd(host):
            tree.add_host(str(lib), lib, 0o755)


def _packages(tree: _Tree, spec: dict[str, Any]) -> None:
    from lkctl.debpackages import collect_package_files

    entries, used = collect_package_files(
        spec.get("names") or [],
        exclude=spec.get("exclude") or [],
        skip=spec.get("skip") or [],
        alternatives=bool(spec.get("alternatives", True)),
    )
    for e in entries:
        tree.add(e.path, _Entry(e.kind, e.mode, host=e.host, target=e.target))
    tree.host_files.update(used)
    log.info("packages: %d entries from %s", len(entries), ", ".join(spec.get("names") or []))


# -- the kernel ----------------------------------------------------------------------------------------------
def _kernel(tree: _Tree, spec: dict[str, Any], version: str) -> None:
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
    modules = _Tree()
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
        for rel, path in _walk(Path(tmp)):
            if path.is_dir():
                modules.add(rel, _Entry("dir", 0o755))
            else:
                modules.add(rel, _Entry("file", 0o644, data=path.read_bytes()))
    buf = io.BytesIO()
    _write_tar(modules, buf)
    tree.add("kernel.tar", _Entry("file", 0o644, data=buf.getvalue()))
    log.info("kernel %s: %d modules, kernel.tar %d KiB", version, len(selected), len(buf.getvalue()) // 1024)


# -- building and caching ----------------------------------------------------------------------------------
def _param_requests(recipe: _Recipe) -> list[tuple[str, str, str]]:
    """(key, kind, argument) of each host fact the recipe's steps resolve at build time."""
    out = []
    for i, step in enumerate(recipe.steps):
        kind, spec = _step(step)
        if kind == "kernel":
            out.append((f"{i}.kernel", kind, str(spec.get("version", "auto"))))
        elif kind == "busybox":
            out.append((f"{i}.busybox", kind, str(spec.get("program", "busybox"))))
    return out


def host_params(requests: list[tuple[str, str, str]]) -> dict[str, str]:
    """The host facts a recipe resolves at build time besides file stats (kernel version, program paths), for
    its (key, kind, argument) requests."""
    out: dict[str, str] = {}
    for key, kind, arg in requests:
        out[key] = kernel_version(arg) if kind == "kernel" else find_program(arg)
    return out


def _params(recipe: _Recipe) -> dict[str, str]:
    return host_params(_param_requests(recipe))


def _build_tree(recipe: _Recipe, params: dict[str, str]) -> _Tree:
    tree = _Tree()
    for i, step in enumerate(recipe.steps):
        kind, spec = _step(step)
        if kind == "busybox":
            _busybox(tree, spec)
        elif kind == "tree":
            _tree(tree, recipe, spec)
        elif kind == "file":
            _file(tree, recipe, spec)
        elif kind == "dir":
            for p in spec.get("paths") or [spec["dest"]]:
                tree.add(p, _Entry("dir", _mode(spec.get("mode"), 0o755)))
        elif kind == "symlink":
            tree.add(spec["dest"], _Entry("symlink", 0o777, target=str(spec["target"])))
        elif kind == "elf":
            _elf(tree, spec)
        elif kind == "kernel":
            _kernel(tree, spec, params[f"{i}.kernel"])
        elif kind == "packages":
            _packages(tree, spec)
        else:
            raise BuildError(f"{recipe.dir / 'recipe.yml'}: unknown step type {kind!r}")
    return tree


def _recipe_hash(recipe: _Recipe) -> str:
    h = hashlib.sha256(Path(__file__).read_bytes())  # a change to this builder changes every image
    for rel, path in _walk(recipe.dir):
        h.update(rel.encode() + b"\0")
        if path.is_symlink():
            h.update(b"L" + os.readlink(path).encode())
        elif path.is_file():
            data = path.read_bytes()
            h.update(b"%o" % _file_mode(path, data) + hashlib.sha256(data).digest())
    return h.hexdigest()


def _stat(path: Path) -> list[Any]:
    try:
        st = path.stat()
    except FileNotFoundError:
        return [str(path), -1, -1]
    return [str(path), st.st_size, st.st_mtime_ns]


def _stamp_path(store: Store, name: str) -> Path:
    return store.root / ".lkctl" / "baseimages" / f"{name}.json"


def _is_fresh(store: Store, recipe: _Recipe, rhash: str, params: dict[str, str]) -> bool:
    try:
        stamp = json.loads(_stamp_path(store, recipe.name).read_text())
        if (stamp["format"], stamp["recipe"], stamp["params"]) != (_STAMP_FORMAT, rhash, params):
            return False
        if any(_stat(Path(p)) != [p, size, mtime] for p, size, mtime in stamp["host"]):
            return False
    except (OSError, ValueError, KeyError, TypeError):
        return False
    latest = store.lookup(f"{recipe.ref}:latest")
    tagged = store.lookup(f"{recipe.ref}:{stamp['tag']}")
    return (
        latest is not None
        and tagged is not None
        and latest.digest == stamp["manifest"] == tagged.digest
        and store.has_blob(latest.digest)
    )


def _build(store: Store, recipe: _Recipe, rhash: str, params: dict[str, str]) -> str:
    log.info("building %s from this machine's packages", recipe.ref)
    tree = _build_tree(recipe, params)
    store.ensure()
    work = store.root / ".lkctl" / "tmp"
    work.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=work, prefix=f"{recipe.name}.", suffix=".tar") as tmp:
        _write_tar(tree, tmp)
        tmp.flush()
        layer = store.put_layer_tar(Path(tmp.name))
    desc = store.add_image(
        f"{recipe.ref}:latest", [layer], config=recipe.config, labels=recipe.labels, architecture=_oci_arch()
    )
    tag = desc.digest.removeprefix("sha256:")[:12]
    store.set_ref(f"{recipe.ref}:{tag}", desc)
    stamp = {
        "format": _STAMP_FORMAT,
        "recipe": rhash,
        "params": params,
        "host": sorted(_stat(p) for p in tree.host_files),
        "manifest": desc.digest,
        "tag": tag,
    }
    atomic_write(_stamp_path(store, recipe.name), json.dumps(stamp, indent=1))
    log.info("built %s:%s (layer %d KiB)", recipe.ref, tag, layer[0].size // 1024)
    return tag


def _oci_arch() -> str:
    from lkctl.arch import oci_arch

    return oci_arch()


def _ensure(store: Store, name: str, force: bool) -> bool:
    recipe = _load_recipe(name)
    with file_lock(store.root / ".lkctl" / "baseimages.lock"):
        rhash = _recipe_hash(recipe)
        params = _params(recipe)
        if not force and _is_fresh(store, recipe, rhash, params):
            return False
        _build(store, recipe, rhash, params)
        return True


def ensure_base_image(ref: str, store: Store) -> bool:
    """Make the base image `ref` (e.g. `lkctl.local/init`) if it is missing or stale; True if it did work."""
    name = base_image_name(ref)
    if name is None:
        raise ImageError(f"{ref} is not one of lkctl's base images ({', '.join(LOCAL_IMAGES.values())})")
    built = _ensure(store, name, force=False)
    if store.lookup(ref) is None:
        raise ImageError(
            f"{ref} is not available: lkctl makes {LOCAL_IMAGES[name]}:latest from this machine's packages"
        )
    return built


def _recipe_identity(rdir: Path) -> list[list[int | str]]:
    return [file_identity(Path(__file__)), file_identity(rdir), *(file_identity(p) for _, p in _walk(rdir))]


def freshness_facts(ref: str, store: Store) -> dict[str, Any] | None:
    """What decides that base image `ref` is fresh, for a build receipt (lkctl.build.receipt): the stamp's
    bytes, the identity of this builder and of every file of the recipe, and the host facts its steps resolve.
    None when `ref` is not fresh now (a build would make it)."""
    name = base_image_name(ref)
    if name is None:
        return None
    recipe = _load_recipe(name)
    requests = _param_requests(recipe)
    params = host_params(requests)
    if not _is_fresh(store, recipe, _recipe_hash(recipe), params):
        return None
    stamp = _stamp_path(store, name)
    digest = hashlib.sha256(stamp.read_bytes()).hexdigest()
    return {"stamp": [str(stamp), digest], "recipe": [str(recipe.dir), _recipe_identity(recipe.dir)],
            "requests": requests, "params": params}  # fmt: skip


def freshness_holds(facts: Any) -> bool:
    """True if `freshness_facts`' answer still holds, so `ensure_base_image` would find the image fresh and do
    nothing: the same stamp bytes, builder and recipe files, host facts and stamped host files. Reads no YAML;
    anything unexpected is False."""
    try:
        path, digest = facts["stamp"]
        data = Path(path).read_bytes()
        rdir, identity = facts["recipe"]
        return (
            hashlib.sha256(data).hexdigest() == digest
            and _recipe_identity(Path(rdir)) == identity
            and host_params([(str(k), str(kind), str(arg)) for k, kind, arg in facts["requests"]]) == facts["params"]
            and json.loads(data)["params"] == facts["params"]
            and all(_stat(Path(p)) == [p, size, mtime] for p, size, mtime in json.loads(data)["host"])
        )
    except (OSError, ValueError, KeyError, TypeError, LkError):
        return False


def build_all(store: Store, force: bool = False) -> list[str]:
    """Make every base image that is missing or stale (all of them with `force`); the refs it built."""
    return [BASE_IMAGES[name] for name in BASE_IMAGES if _ensure(store, name, force)]

"""lkctl's base images (kernel, init, sshd, dev), made from this machine's Debian packages.

LinuxKit YAML names OCI images for its kernel, init and services. So that no registry is needed, lkctl makes
`lkctl.local/kernel`, `lkctl.local/init` and `lkctl.local/sshd` from the host's /boot kernel, busybox-static and
dropbear-bin, and `lkctl.local/dev` (bash, git, python3, make, curl, an editor) from the files of the host's
installed Debian packages and their dependencies, only when something names it. Each image is data
(`images/<name>/recipe.yml`: files, trees, symlinks, dirs, plus typed `busybox`, `elf`, `kernel` and `packages`
steps) run by `lkctl.baselayer` into one deterministic layer (sorted, fixed mtime, uid/gid 0) in the local OCI
store, tagged `latest` and with a content tag. A stamp in the store (recipe contents + every host file used, by
path, size and mtime) makes a second run a no-op.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from lkctl import baselayer, paths
from lkctl.baselayer import file_mode, layer_tree, recipe_step, walk_tree, write_layer_tar
from lkctl.errors import BuildError, ImageError, LkError
from lkctl.fsutil import atomic_write, file_identity, file_lock
from lkctl.hostkernel import filter_module_index, kernel_version, select_modules
from lkctl.proc import find_program

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
_ldd = baselayer.ldd  # moved to lkctl.baselayer; tests/boot/test_guest_init.py still imports it from here

#: the code that decides what a base image holds: a change to either changes every image
_BUILDER_FILES = (Path(__file__), Path(baselayer.__file__))


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
        # libyaml when PyYAML has it (every build reads these); UTF-8 whatever the locale
        doc = safe_load((rdir / "recipe.yml").read_text(encoding="utf-8"))
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


def _param_requests(recipe: _Recipe) -> list[tuple[str, str, str]]:
    """(key, kind, argument) of each host fact the recipe's steps resolve at build time."""
    out = []
    for i, step in enumerate(recipe.steps):
        kind, spec = recipe_step(step)
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


def _recipe_hash(recipe: _Recipe) -> str:
    h = hashlib.sha256(b"".join(f.read_bytes() for f in _BUILDER_FILES))  # a change to the builder changes every image
    for rel, path in walk_tree(recipe.dir):
        h.update(rel.encode() + b"\0")
        if path.is_symlink():
            h.update(b"L" + os.readlink(path).encode())
        elif path.is_file():
            data = path.read_bytes()
            h.update(b"%o" % file_mode(path, data) + hashlib.sha256(data).digest())
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
    tree = layer_tree(recipe.dir, recipe.name, recipe.steps, params)
    store.ensure()
    work = store.root / ".lkctl" / "tmp"
    work.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=work, prefix=f"{recipe.name}.", suffix=".tar") as tmp:
        write_layer_tar(tree, tmp)
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
    return [*map(file_identity, _BUILDER_FILES), file_identity(rdir), *(file_identity(p) for _, p in walk_tree(rdir))]


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

"""The dev image's root disk: a recipe (`images/devdisk/recipe.yml`) → an ext4 file system → a qcow2 base image.

The userland is the files of this machine's installed Debian packages and their dependency closure
(`lkctl.debpackages`), laid out in a staging directory with a merged /usr as on the host, then made into an ext4
file system by `mke2fs -d` in a sparse file (no root, no loop device, no Docker), checked with `e2fsck -fn` and
converted to qcow2. The disk is keyed by `disk_fingerprint`: the recipe text, this builder, and the name, version
and architecture of every package in the closure, so a package upgrade or a recipe edit makes a new disk and
nothing else does. Timestamps, UUID and hash seed are fixed, so the same inputs give the same file system.
"""

from __future__ import annotations

import glob
import hashlib
import logging
import os
import shutil
import stat
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lkctl import paths
from lkctl.debpackages import InstalledPackage, PackageEntry, package_closure
from lkctl.dev.gocache import WARM_KEY, date_go_cache, warm_go_cache
from lkctl.errors import BuildError
from lkctl.proc import find_program, minimal_env, run

__all__ = [
    "DiskRecipe",
    "RootDisk",
    "build_root_disk",
    "chosen_packages",
    "disk_fingerprint",
    "host_facts",
    "load_disk_recipe",
    "owner_script",
    "parse_disk_recipe",
    "parse_size_text",
]

log = logging.getLogger("lkctl.dev.rootdisk")

_BUILDER_VERSION = "2"  # bump when the layout this module writes changes
_MTIME = 1492533000  # 2017-04-18T16:30:00Z, the timestamp of every file (LinuxKit's)
_MERGED = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")  # top-level links into /usr on a merged-/usr host
_FS_LABEL = "lkctl-root"


@dataclass(frozen=True)
class DiskRecipe:
    """A root disk recipe: packages (+ closure), host paths, symlinks, files and dirs laid in that order."""

    name: str
    packages: tuple[str, ...]
    optional: tuple[str, ...]  # added when installed on this machine
    exclude: tuple[str, ...]  # packages (fnmatch) left out of the closure
    skip: tuple[str, ...]  # paths (fnmatch, and everything below) left out
    host: tuple[str, ...]  # host paths (globs) copied as they are
    symlinks: tuple[tuple[str, str], ...]
    files: tuple[tuple[str, str], ...]
    modes: tuple[tuple[str, int], ...]
    dirs: tuple[str, ...]
    free: int  # bytes of free space in the file system beyond its contents
    text: str  # the recipe as written: part of the fingerprint


def parse_size_text(text: str) -> int:
    """`8G`, `512M`, `1024K` or a byte count → bytes."""
    t = text.strip().upper().removesuffix("B")
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    mult = units.get(t[-1:], 1)
    number = t[:-1] if t[-1:] in units else t
    try:
        value = int(float(number) * mult)
    except ValueError:
        raise BuildError(f"{text!r} is not a size (e.g. 8G, 512M)") from None
    if value < 0:
        raise BuildError(f"{text!r} is not a size (e.g. 8G, 512M)")
    return value


def _strings(doc: Mapping[str, Any], key: str, where: str) -> tuple[str, ...]:
    value = doc.get(key) or []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BuildError(f"{where}: `{key}` must be a list of strings")
    return tuple(value)


def _pairs(doc: Mapping[str, Any], key: str, where: str) -> tuple[tuple[str, str], ...]:
    value = doc.get(key) or {}
    if not isinstance(value, dict):
        raise BuildError(f"{where}: `{key}` must be a mapping of path: value")
    return tuple((_clean(str(k), where), str(v)) for k, v in value.items())


def _clean(path: str, where: str) -> str:
    rel = os.path.normpath("/" + path).lstrip("/")
    if not rel or rel.startswith(".."):
        raise BuildError(f"{where}: bad path {path!r}")
    return rel


def parse_disk_recipe(text: str, where: str) -> DiskRecipe:
    """Parse and check a root disk recipe (YAML). Pure: unknown keys and wrong types are errors naming them."""
    import yaml

    from lkctl.yamlio import safe_load

    try:
        doc = safe_load(text)
    except yaml.YAMLError as e:
        raise BuildError(f"{where} is not valid YAML: {e}") from None
    if not isinstance(doc, dict):
        raise BuildError(f"{where}: expected a mapping")
    known = {"name", "packages", "host", "symlinks", "files", "modes", "dirs", "free"}
    if unknown := sorted(set(doc) - known):
        raise BuildError(f"{where}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    pkgs = doc.get("packages") or {}
    if not isinstance(pkgs, dict) or not pkgs.get("names"):
        raise BuildError(f"{where}: `packages.names` must list the packages to install")
    pwhere = f"{where}: packages"
    if unknown := sorted(set(pkgs) - {"names", "optional", "exclude", "skip"}):
        raise BuildError(f"{pwhere}: unknown key(s) {', '.join(unknown)}")
    try:
        modes = tuple((p, int(str(m), 8)) for p, m in _pairs(doc, "modes", where))
    except ValueError:
        raise BuildError(f'{where}: `modes` values must be octal, e.g. "0600"') from None
    return DiskRecipe(
        name=str(doc.get("name") or "lkctl-dev"),
        packages=_strings(pkgs, "names", pwhere),
        optional=_strings(pkgs, "optional", pwhere),
        exclude=_strings(pkgs, "exclude", pwhere),
        skip=_strings(pkgs, "skip", pwhere),
        host=tuple(_clean(h, where) for h in _strings(doc, "host", where)),
        symlinks=_pairs(doc, "symlinks", where),
        files=_pairs(doc, "files", where),
        modes=modes,
        dirs=tuple(_clean(d, where) for d in _strings(doc, "dirs", where)),
        free=_free(doc, where),
        text=text,
    )


def _free(doc: Mapping[str, Any], where: str) -> int:
    try:
        return parse_size_text(str(doc.get("free", "4G")))
    except BuildError as e:
        raise BuildError(f"{where}: free: {e.message}") from None


def load_disk_recipe(path: Path | None = None) -> DiskRecipe:
    """The dev image's recipe (`images/devdisk/recipe.yml` unless `path`)."""
    path = path or paths.resource_dir("images") / "devdisk" / "recipe.yml"
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise BuildError(f"the dev image recipe {path} is missing") from None
    return parse_disk_recipe(text, str(path))


def chosen_packages(recipe: DiskRecipe, packages: Mapping[str, InstalledPackage]) -> list[str]:
    """The recipe's packages (its optional ones when installed) and their dependency closure, sorted. Pure."""
    wanted = [*recipe.packages, *(p for p in recipe.optional if p in packages and p not in recipe.packages)]
    return package_closure(packages, wanted, recipe.exclude)


def disk_fingerprint(
    recipe: DiskRecipe, packages: Mapping[str, InstalledPackage], host_facts: Sequence[str] = ()
) -> str:
    """sha256 of what the disk is made of: builder (with the prebuilt Go cache's WARM_KEY), recipe text, every
    closure package's name, version and architecture, and `host_facts` (the copied host paths' contents). Pure."""
    h = hashlib.sha256(f"lkctl-rootdisk {_BUILDER_VERSION} {WARM_KEY}\n".encode())
    h.update(recipe.text.encode() + b"\0")
    for name in chosen_packages(recipe, packages):
        pkg = packages[name]
        h.update(f"{name}={pkg.version}:{pkg.architecture}\n".encode())
    for fact in host_facts:
        h.update(fact.encode() + b"\n")
    return h.hexdigest()


def host_facts(recipe: DiskRecipe, root: Path = Path("/")) -> list[str]:
    """What the recipe's `host:` paths hold on this machine, one line per path (link target or content digest)."""
    out = []
    for rel, path in _host_paths(recipe, root):
        if path.is_symlink():
            out.append(f"{rel} -> {os.readlink(path)}")
        elif path.is_file():
            out.append(f"{rel} {hashlib.sha256(path.read_bytes()).hexdigest()}")
        elif path.is_dir():
            out.append(f"{rel}/")
    return out


def _host_paths(recipe: DiskRecipe, root: Path) -> list[tuple[str, Path]]:
    found: dict[str, Path] = {}
    for pattern in recipe.host:
        for match in sorted(glob.glob(str(root / pattern))):
            top = Path(match)
            found[top.relative_to(root).as_posix()] = top
            if top.is_dir() and not top.is_symlink():
                for dirpath, dirnames, filenames in os.walk(top):
                    for name in [*dirnames, *filenames]:
                        p = Path(dirpath) / name
                        found[p.relative_to(root).as_posix()] = p
    return sorted(found.items())


@dataclass(frozen=True)
class RootDisk:
    path: Path  # the qcow2 base image
    size: int  # bytes on disk
    content: int  # bytes of files in the file system
    entries: int  # paths in the file system
    seconds: float  # build time


# -- staging ---------------------------------------------------------------------------------------------------
class _Stage:
    """A directory that becomes the file system: paths are written where they really land (through /bin → usr/bin),
    later writes replace earlier ones, a link that would point at itself is dropped."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _real(self, rel: str) -> Path:
        parent, _, name = rel.rpartition("/")
        pdir = self.root / parent if parent else self.root
        pdir.mkdir(parents=True, exist_ok=True)
        real_parent = Path(os.path.realpath(pdir))
        if real_parent != self.root and self.root not in real_parent.parents:
            raise BuildError(f"{rel}: its parent leads outside the image")
        return real_parent / name

    def _clear(self, real: Path) -> bool:
        """Make room at `real`; False when a directory is there (it stays)."""
        if real.is_symlink() or real.is_file():
            real.unlink()
        return not real.exists()

    def dir(self, rel: str, mode: int) -> None:
        real = self._real(rel)
        if real.is_symlink() and real.resolve().is_dir():
            return  # /lib/x86_64-linux-gnu through the lib → usr/lib link
        if not real.is_dir():
            self._clear(real)
            real.mkdir()
        real.chmod(mode)

    def symlink(self, rel: str, target: str) -> None:
        real = self._real(rel)
        if os.path.normpath(target) == "/" + real.relative_to(self.root).as_posix():
            return  # `bin/bash → /usr/bin/bash` where /bin already is usr/bin
        if self._clear(real):
            real.symlink_to(target)
        else:
            log.debug("%s: a directory is there, link to %s dropped", rel, target)

    def file(self, rel: str, mode: int, *, host: Path | None = None, data: bytes | None = None) -> None:
        real = self._real(rel)
        if not self._clear(real):
            raise BuildError(f"{rel}: a directory is in the way of a file")
        if host is not None:
            try:
                shutil.copyfile(host, real, follow_symlinks=False)
            except PermissionError:
                raise BuildError(f"cannot read {host}: permission denied (e.g. `sudo chmod a+r {host}`)") from None
        else:
            real.write_bytes(data or b"")
        real.chmod(mode)

    def entry(self, e: PackageEntry) -> None:
        if e.kind == "dir":
            self.dir(e.path, e.mode)
        elif e.kind == "symlink":
            self.symlink(e.path, e.target)
        else:
            self.file(e.path, e.mode, host=e.host)


def _stage(recipe: DiskRecipe, root: Path, names: list[str]) -> None:
    from lkctl.debpackages import collect_package_files

    stage = _Stage(root)
    for top in _MERGED:  # the host's merged /usr: /bin → usr/bin (and what packages install there lands in /usr)
        if Path("/", top).is_symlink():
            (root / top).symlink_to(os.readlink(Path("/", top)))
    entries, _ = collect_package_files(names, exclude=recipe.exclude, skip=recipe.skip)
    for e in entries:
        stage.entry(e)
    for rel, path in _host_paths(recipe, Path("/")):
        if path.is_symlink():
            stage.symlink(rel, os.readlink(path))
        elif path.is_dir():
            stage.dir(rel, path.stat().st_mode & 0o7777)
        elif path.is_file():
            stage.file(rel, path.stat().st_mode & 0o777, host=path)
    for rel, target in recipe.symlinks:
        stage.symlink(rel, target)
    modes = dict(recipe.modes)
    for rel, contents in recipe.files:
        stage.file(rel, modes.get(rel, 0o644), data=contents.encode())
    for rel in recipe.dirs:
        stage.dir(rel, modes.get(rel, {"tmp": 0o1777, "var/tmp": 0o1777, "root": 0o700}.get(rel, 0o755)))


def _settle(root: Path) -> tuple[int, int, list[str]]:
    """Fixed timestamps on every path; returns (bytes of file content, number of paths, paths for ownership)."""
    content, count, names = 0, 0, []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            p = Path(dirpath) / name
            st = p.lstat()
            if stat.S_ISREG(st.st_mode):
                content += st.st_size
            count += 1
            names.append("/" + p.relative_to(root).as_posix())
            os.utime(p, (_MTIME, _MTIME), follow_symlinks=False)
    os.utime(root, (_MTIME, _MTIME))
    return content, count, names


def owner_script(names: Sequence[str]) -> str:
    """debugfs commands giving every path to root (mke2fs -d keeps the builder's uid/gid). Pure."""
    lines = []
    for n in names:
        if '"' in n or "\n" in n:
            continue
        lines += [f'sif "{n}" uid 0', f'sif "{n}" gid 0']
    return "".join(line + "\n" for line in lines)


# -- the file system ---------------------------------------------------------------------------------------------
def _mkfs(staging: Path, raw: Path, size: int, fingerprint: str, names: list[str]) -> None:
    fs_uuid = str(uuid.UUID(fingerprint[:32]))
    env = minimal_env({"E2FSPROGS_FAKE_TIME": str(_MTIME)})
    run(
        [
            find_program("mke2fs"), "-q", "-F", "-t", "ext4", "-L", _FS_LABEL, "-U", fs_uuid, "-m", "0",
            "-E", f"root_owner=0:0,hash_seed={fs_uuid}", "-d", str(staging), str(raw), f"{size // 1024}k",
        ],
        env=env,
        what="mke2fs (making the dev root file system)",
    )  # fmt: skip
    if os.geteuid() != 0 or os.getegid() != 0:
        script = raw.with_name("chown.debugfs")
        script.write_text(owner_script(names))
        run([find_program("debugfs"), "-w", "-f", str(script), str(raw)], env=env, what="debugfs (file owners)")
    fsck = run([find_program("e2fsck"), "-fn", str(raw)], check=False, env=env, what="e2fsck")
    if fsck.returncode != 0:
        tail = fsck.stdout.decode(errors="replace").strip().splitlines()[-3:]
        raise BuildError(f"the new dev root file system does not check clean: {' / '.join(tail)}")


def build_root_disk(recipe: DiskRecipe, out: Path, fingerprint: str, *, names: list[str]) -> RootDisk:
    """Build the root disk for `recipe` (closure `names`, from chosen_packages) at `out` (qcow2), atomically:
    everything is made in a temporary directory beside `out`, which appears only when complete and checked."""
    start = time.monotonic()
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.build-", dir=out.parent))
    try:
        staging = work / "root"
        staging.mkdir(mode=0o755)
        _stage(recipe, staging, names)
        warm_go_cache(staging)  # Go's standard library compiled here, at native speed (see gocache.py)
        content, count, names_in_fs = _settle(staging)
        date_go_cache(staging)
        # ext4 metadata (inode tables, journal, directories) on top of the contents, plus the free space
        size = ((content * 5 // 4 + count * 4096 + recipe.free + (256 << 20)) >> 20) << 20
        raw = work / "root.ext4"
        _mkfs(staging, raw, size, fingerprint, names_in_fs)
        shutil.rmtree(staging)
        tmp = work / "root.qcow2"
        run(
            [find_program("qemu-img"), "convert", "-q", "-f", "raw", "-O", "qcow2", str(raw), str(tmp)],
            what="qemu-img convert (dev root disk to qcow2)",
        )
        os.chmod(tmp, 0o444)  # a base image: VMs write to their own overlays
        os.replace(tmp, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    size_on_disk = out.stat().st_blocks * 512
    seconds = time.monotonic() - start
    log.info("built %s: %d paths, %d MiB of files, %d MiB on disk, %.0f s", out, count, content >> 20,
             size_on_disk >> 20, seconds)  # fmt: skip
    return RootDisk(out, size_on_disk, content, count, seconds)

"""The files of installed Debian packages and their dependency closure, read from dpkg's database.

The `dev` base image is a userland (bash, git, python3, make, curl, an editor) made from this machine's installed
packages, so it needs no network and matches what the host runs. This module reads dpkg's own files
(`/var/lib/dpkg/status`, `info/<package>.list`, `alternatives/*`) instead of running `dpkg -L` a hundred times;
the parsing is pure and tested on text.
"""

from __future__ import annotations

import fnmatch
import os
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from lkctl.errors import BuildError
from lkctl.proc import ProgramMissing

__all__ = [
    "DPKG_DIR",
    "InstalledPackage",
    "PackageEntry",
    "alternative_links",
    "alternative_target",
    "collect_package_files",
    "installed_packages",
    "package_closure",
    "package_files",
    "parse_status",
]

DPKG_DIR = Path("/var/lib/dpkg")


#: top-level directories that a merged-/usr system makes symlinks into /usr
_MERGED = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")


@dataclass(frozen=True)
class PackageEntry:
    """One path of the image: relative (no leading /), a file read from `host`, a dir or a symlink."""

    path: str
    kind: str  # file | dir | symlink
    mode: int
    host: Path | None = None
    target: str = ""


@dataclass(frozen=True)
class InstalledPackage:
    name: str
    architecture: str
    depends: tuple[tuple[str, ...], ...]  # each dependency: its alternatives, first choice first
    provides: tuple[str, ...]
    version: str = ""


def _names(field: str) -> tuple[tuple[str, ...], ...]:
    """`a (>= 1) | b:any, c [amd64]` → (("a", "b"), ("c",)); versions and architecture qualifiers dropped."""
    out = []
    for dep in field.split(","):
        alternatives = tuple(a.strip().split(" ")[0].split("(")[0].split(":")[0] for a in dep.split("|"))
        alternatives = tuple(a for a in alternatives if a)
        if alternatives:
            out.append(alternatives)
    return tuple(out)


def parse_status(text: str, native_arch: str) -> dict[str, InstalledPackage]:
    """Installed packages in a dpkg `status` file, by name (the native or `all` architecture wins a tie)."""
    out: dict[str, InstalledPackage] = {}
    for para in text.split("\n\n"):
        fields: dict[str, str] = {}
        key = ""
        for line in para.splitlines():
            if line[:1] in (" ", "\t"):
                if key:
                    fields[key] += "\n" + line
                continue
            key, _, value = line.partition(":")
            fields[key] = value.strip()
        name = fields.get("Package")
        if not name or fields.get("Status", "").split()[-1:] != ["installed"]:
            continue
        pkg = InstalledPackage(
            name=name,
            architecture=fields.get("Architecture", ""),
            depends=_names(fields.get("Pre-Depends", "")) + _names(fields.get("Depends", "")),
            provides=tuple(p[0] for p in _names(fields.get("Provides", ""))),
            version=fields.get("Version", ""),
        )
        if name not in out or pkg.architecture in (native_arch, "all"):
            out[name] = pkg
    return out


def package_closure(
    packages: Mapping[str, InstalledPackage], wanted: Iterable[str], exclude: Iterable[str] = ()
) -> list[str]:
    """`wanted` plus everything they depend on (Pre-Depends and Depends), minus `exclude` (fnmatch patterns).

    An alternative (`a | b`) is satisfied by the first installed choice; a virtual package by its first provider.
    A wanted package that is not installed is an error naming the apt-get command that fixes it.
    """
    providers: dict[str, list[str]] = {}
    for pkg in packages.values():
        for virtual in pkg.provides:
            providers.setdefault(virtual, []).append(pkg.name)
    patterns = list(exclude)

    def pick(name: str) -> str | None:
        if name in packages:
            return name
        return min(providers[name]) if name in providers else None

    missing = [w for w in wanted if pick(w) is None]
    if missing:
        raise ProgramMissing(
            f"package(s) not installed: {', '.join(missing)}; install with: sudo apt-get install {' '.join(missing)}"
        )
    chosen: set[str] = set()
    todo = [p for w in wanted if (p := pick(w))]
    while todo:
        name = todo.pop()
        if name in chosen or any(fnmatch.fnmatchcase(name, pat) for pat in patterns):
            continue
        chosen.add(name)
        for alternatives in packages[name].depends:
            found = next((p for a in alternatives if (p := pick(a))), None)
            if found:
                todo.append(found)
    return sorted(chosen)


def installed_packages(dpkg_dir: Path = DPKG_DIR) -> dict[str, InstalledPackage]:
    status = dpkg_dir / "status"
    try:
        text = status.read_text(errors="replace")
    except FileNotFoundError:
        raise ProgramMissing(f"{status} is missing: building from installed packages needs a Debian system") from None
    return parse_status(text, _native_arch())


def _native_arch() -> str:
    from lkctl.arch import debian_arch

    return debian_arch()


def package_files(pkg: InstalledPackage, dpkg_dir: Path = DPKG_DIR) -> tuple[Path, list[str]]:
    """(the `.list` file, the absolute paths it names) for an installed package."""
    info = dpkg_dir / "info"
    for candidate in (info / f"{pkg.name}:{pkg.architecture}.list", info / f"{pkg.name}.list"):
        if candidate.is_file():
            paths = [line for line in candidate.read_text(errors="replace").splitlines() if line.startswith("/")]
            return candidate, [p for p in paths if p != "/."]
    raise BuildError(f"dpkg has no file list for {pkg.name} in {info}")


def alternative_links(dpkg_dir: Path = DPKG_DIR) -> dict[str, str]:
    """Alternative name → the link it manages (`editor` → `/usr/bin/editor`), masters and slaves alike.

    Alternatives are made by maintainer scripts, so no `.list` names `/usr/bin/vi`; this reads
    `alternatives/<name>`: mode, master link, then (slave name, slave link) pairs up to an empty line.
    """
    out: dict[str, str] = {}
    adir = dpkg_dir / "alternatives"
    if not adir.is_dir():
        return out
    for f in sorted(adir.iterdir()):
        lines = f.read_text(errors="replace").splitlines()
        if len(lines) < 2:
            continue
        out[f.name] = lines[1]
        i = 2
        while i + 1 < len(lines) and lines[i]:
            out[lines[i]] = lines[i + 1]
            i += 2
    return out


def alternative_target(name: str, etc: Path = Path("/etc/alternatives")) -> str | None:
    """Where `/etc/alternatives/<name>` points on this machine, or None."""
    try:
        return os.readlink(etc / name)
    except OSError:
        return None


def _skipped(rel: str, patterns: list[str]) -> bool:
    # a pattern names a path and everything below it: `usr/share/doc` skips the docs of every package
    return any(fnmatch.fnmatchcase(rel, p) or fnmatch.fnmatchcase(rel, p.rstrip("/") + "/*") for p in patterns)


def _entry(rel: str, host: Path) -> PackageEntry | None:
    try:
        st = host.lstat()
    except OSError:
        return None  # listed but gone (a path-exclude in dpkg.cfg.d, a file the admin deleted)
    mode = st.st_mode & 0o1777  # no setuid/setgid: everything in a guest image runs as root anyway
    if stat.S_ISLNK(st.st_mode):
        return PackageEntry(rel, "symlink", 0o777, target=os.readlink(host))
    if stat.S_ISDIR(st.st_mode):
        return PackageEntry(rel, "dir", mode)
    if stat.S_ISREG(st.st_mode):
        return PackageEntry(rel, "file", mode, host=host)
    return None  # device nodes and fifos do not belong in an image layer


def _canonical(rel: str, root: Path) -> str:
    """Where `rel` really is under `root`: its parent with symlinks resolved (`bin/bash` → `usr/bin/bash` on a
    merged-/usr host), so an image never puts a path below a symlink and unpacks the same on any root layout."""
    parent, _, name = rel.rpartition("/")
    real = os.path.relpath(os.path.realpath(root / parent), root) if parent else "."
    if real.startswith(".."):
        return rel  # the parent points outside the root: keep the path as the package names it
    return name if real == "." else f"{real}/{name}"


def collect_package_files(
    names: Iterable[str],
    *,
    exclude: Iterable[str] = (),
    skip: Iterable[str] = (),
    alternatives: bool = True,
    dpkg_dir: Path = DPKG_DIR,
    root: Path = Path("/"),
) -> tuple[list[PackageEntry], list[Path]]:
    """The paths of `names` and their dependency closure as installed under `root`, and dpkg's files read.

    Each path is stored where it really is (under /usr on a merged-/usr host), and where the package names
    it elsewhere (`/bin/bash`, `/lib64/ld-linux-x86-64.so.2`) a symlink to it is added there: the tree works
    both alone and laid over a root whose /bin is a real directory (lkctl's busybox init). `skip` (fnmatch on
    paths without the leading /) leaves out docs and man pages; `alternatives` adds `/etc/alternatives` links
    (`editor`, `awk`...) whose target is in the tree.
    """
    packages = installed_packages(dpkg_dir)
    chosen = package_closure(packages, list(names), exclude)
    patterns = list(skip)
    used = [dpkg_dir / "status"]
    entries: list[PackageEntry] = []
    files: set[str] = set()

    def add(rel: str) -> None:
        canon = _canonical(rel, root)
        if _skipped(canon, patterns) or _skipped(rel, patterns):
            return
        entry = _entry(canon, root / rel)
        if entry is None or (entry.kind == "symlink" and rel in _MERGED):
            return  # gone, or a merged-/usr top-level link itself (/bin → usr/bin): never put in an image
        entries.append(entry)
        files.add(canon)
        if canon != rel:  # the name the package uses: a real directory, or a link to the real file
            kind = "dir" if entry.kind == "dir" else "symlink"
            entries.append(PackageEntry(rel, kind, 0o755 if kind == "dir" else 0o777, target="/" + canon))

    for name in chosen:
        listing, paths = package_files(packages[name], dpkg_dir)
        used.append(listing)
        for path in paths:
            if path.strip("/"):
                add(path.strip("/"))
    if alternatives:
        for name, link in sorted(alternative_links(dpkg_dir).items()):
            target = alternative_target(name, root / "etc" / "alternatives")
            if target and _canonical(target.lstrip("/"), root) in files:
                entries.append(PackageEntry(f"etc/alternatives/{name}", "symlink", 0o777, target=target))
                entries.append(PackageEntry(_canonical(link.lstrip("/"), root), "symlink", 0o777,
                                            target=f"/etc/alternatives/{name}"))  # fmt: skip
    return entries, used

"""dpkg's database read without dpkg: status parsing, the dependency closure, file lists on a merged-/usr root."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from lkctl.debpackages import collect_package_files, package_closure, parse_status
from lkctl.proc import ProgramMissing

STATUS = textwrap.dedent(
    """
    Package: app
    Status: install ok installed
    Architecture: amd64
    Pre-Depends: libc6 (>= 2.34)
    Depends: libfoo1 (= 1.0) | libfoo-alt, python3:any, mail-transport-agent, perl, missing-but-optional | libc6
    Description: an app
     with a long description: Depends: not-a-dependency

    Package: libc6
    Status: install ok installed
    Architecture: amd64

    Package: libc6
    Status: install ok installed
    Architecture: i386
    Depends: i386-only

    Package: libfoo1
    Status: install ok installed
    Architecture: amd64
    Depends: libc6

    Package: libfoo-alt
    Status: install ok installed
    Architecture: amd64

    Package: python3
    Status: install ok installed
    Architecture: all

    Package: exim4
    Status: install ok installed
    Architecture: amd64
    Provides: mail-transport-agent

    Package: perl
    Status: install ok installed
    Architecture: amd64
    Depends: perl-modules-5.36

    Package: perl-modules-5.36
    Status: install ok installed
    Architecture: all

    Package: removed
    Status: deinstall ok config-files
    Architecture: amd64
    """
)


def test_status_keeps_installed_packages_with_their_dependencies() -> None:
    pkgs = parse_status(STATUS, "amd64")
    assert "removed" not in pkgs
    assert pkgs["libc6"].architecture == "amd64" and pkgs["libc6"].depends == ()  # the native one wins
    assert pkgs["app"].depends == (
        ("libc6",),
        ("libfoo1", "libfoo-alt"),
        ("python3",),
        ("mail-transport-agent",),
        ("perl",),
        ("missing-but-optional", "libc6"),
    )
    assert pkgs["exim4"].provides == ("mail-transport-agent",)


def test_closure_takes_first_installed_alternative_providers_and_honours_excludes() -> None:
    pkgs = parse_status(STATUS, "amd64")
    assert package_closure(pkgs, ["app"], exclude=["perl*"]) == ["app", "exim4", "libc6", "libfoo1", "python3"]
    assert "perl-modules-5.36" in package_closure(pkgs, ["app"])


def test_a_wanted_package_that_is_not_installed_names_the_fix() -> None:
    with pytest.raises(ProgramMissing, match="install with: sudo apt-get install nope"):
        package_closure(parse_status(STATUS, "amd64"), ["app", "nope"])


@pytest.fixture
def merged_root(tmp_path: Path) -> tuple[Path, Path]:
    """A tiny merged-/usr system: /bin and /lib are links into /usr, dpkg knows two packages."""
    root, dpkg = tmp_path / "root", tmp_path / "dpkg"
    for d in ("usr/bin", "usr/lib/x86_64-linux-gnu", "usr/share/doc/bash", "etc/alternatives"):
        (root / d).mkdir(parents=True)
    os.symlink("usr/bin", root / "bin")
    os.symlink("usr/lib", root / "lib")
    (root / "usr/bin/bash").write_text("#!bash")
    (root / "usr/bin/bash").chmod(0o4755)
    (root / "usr/bin/vim.tiny").write_text("vim")
    (root / "usr/lib/x86_64-linux-gnu/libc.so.6").write_text("libc")
    os.symlink("libc.so.6", root / "usr/lib/x86_64-linux-gnu/libc-link.so")
    (root / "usr/share/doc/bash/README").write_text("doc")
    os.symlink("/usr/bin/vim.tiny", root / "etc/alternatives/editor")
    os.symlink("/usr/bin/vim.basic", root / "etc/alternatives/vi")  # not in the image: no link
    (dpkg / "info").mkdir(parents=True)
    (dpkg / "alternatives").mkdir()
    (dpkg / "status").write_text(
        "Package: bash\nStatus: install ok installed\nArchitecture: amd64\nDepends: libc6\n\n"
        "Package: libc6\nStatus: install ok installed\nArchitecture: amd64\n\n"
        "Package: vim-tiny\nStatus: install ok installed\nArchitecture: amd64\n"
    )
    (dpkg / "info" / "bash.list").write_text("/.\n/bin\n/bin/bash\n/usr/share/doc/bash\n/usr/share/doc/bash/README\n")
    (dpkg / "info" / "libc6:amd64.list").write_text(
        "/.\n/lib/x86_64-linux-gnu\n/lib/x86_64-linux-gnu/libc.so.6\n/lib/x86_64-linux-gnu/libc-link.so\n/gone\n"
    )
    (dpkg / "info" / "vim-tiny.list").write_text("/usr/bin/vim.tiny\n")
    (dpkg / "alternatives" / "editor").write_text(
        "auto\n/usr/bin/editor\neditor.1.gz\n/usr/share/man/man1/editor.1.gz\n\n"
    )
    (dpkg / "alternatives" / "vi").write_text("auto\n/usr/bin/vi\n\n")
    return root, dpkg


def test_files_land_where_they_really_are_with_links_at_the_names_packages_use(merged_root: tuple[Path, Path]) -> None:
    root, dpkg = merged_root
    entries, used = collect_package_files(["bash", "vim-tiny"], skip=["usr/share/doc"], dpkg_dir=dpkg, root=root)
    got = {e.path: (e.kind, e.mode if e.kind != "symlink" else e.target) for e in entries}
    assert got == {
        "usr/bin/bash": ("file", 0o755),  # setuid dropped
        "bin/bash": ("symlink", "/usr/bin/bash"),
        "usr/lib/x86_64-linux-gnu": ("dir", 0o755),
        "lib/x86_64-linux-gnu": ("dir", 0o755),
        "usr/lib/x86_64-linux-gnu/libc.so.6": ("file", 0o644),
        "lib/x86_64-linux-gnu/libc.so.6": ("symlink", "/usr/lib/x86_64-linux-gnu/libc.so.6"),
        "usr/lib/x86_64-linux-gnu/libc-link.so": ("symlink", "libc.so.6"),
        "lib/x86_64-linux-gnu/libc-link.so": ("symlink", "/usr/lib/x86_64-linux-gnu/libc-link.so"),
        "usr/bin/vim.tiny": ("file", 0o644),
        "etc/alternatives/editor": ("symlink", "/usr/bin/vim.tiny"),
        "usr/bin/editor": ("symlink", "/etc/alternatives/editor"),
    }
    assert "bin" not in got  # the merged-/usr link itself never goes in
    assert next(e.host for e in entries if e.path == "usr/bin/bash") == root / "bin/bash"
    assert sorted(p.name for p in used) == ["bash.list", "libc6:amd64.list", "status", "vim-tiny.list"]

"""`vm.cp` through the real CLI against one booted guest: docker cp's rules both ways, links kept as links, errors
in lkctl's words, and a guest whose `tar` answers with hostile streams writing nothing on the host.

The guest is built from a YAML whose `files:` section puts a stand-in over the guest's `/bin/sh` (busybox's sh runs
its own `tar` applet whatever PATH says, so the shell is where a compromised guest answers): a copy of anything
under /hostile/NAME sends the prebuilt stream /etc/hostile/NAME.tar (made here with Python's tarfile) instead of
running tar; every other command runs in busybox sh. So the hostile streams really travel from a booted guest
over SSH into lkctl.
"""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.boot.conftest import BIN, Cli, qemu_pids_for
from tests.conftest import require_qemu

pytestmark = pytest.mark.boot

FAKE_SH = """#!/bin/busybox sh
# lkctl-test: a hostile shell
case "$1 $2" in
"-c "*lkctl-cp*/hostile/*)
    n=${2##*/hostile/}
    n=${n%% *}
    exec /bin/busybox cat "/etc/hostile/$n.tar";;
esac
exec /bin/busybox sh "$@"
"""
ESCAPE = "/tmp/lkctl-test-cp-escape"  # an absolute path a hostile stream names: must never appear on the host


def _stream(*entries: tuple[str, str, str]) -> bytes:
    """A tar of (kind, name, data or link target); kind: dir, file, sym, hard."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for kind, name, data in entries:
            ti = tarfile.TarInfo(name)
            if kind == "dir":
                ti.type, ti.mode = tarfile.DIRTYPE, 0o755
            elif kind in ("sym", "hard"):
                ti.type, ti.linkname = (tarfile.SYMTYPE if kind == "sym" else tarfile.LNKTYPE), data
            else:
                ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data.encode()) if kind == "file" else None)
    return buf.getvalue()


HOSTILE = {
    "dotdot": [("dir", "./dotdot", ""), ("dir", "./dotdot/f", ""), ("file", "./dotdot/f/../../.bashrc", "pwned\n")],
    "parent": [("dir", "./parent", ""), ("file", "../x", "pwned\n")],
    "absolute": [("dir", "./absolute", ""), ("file", f"{ESCAPE}/pwned", "pwned\n")],
    "symlink": [("dir", "./symlink", ""), ("sym", "./symlink/l", "../.."), ("file", "./symlink/l/x", "pwned\n")],
    "symlink_etc": [("dir", "./symlink_etc", ""), ("sym", "./symlink_etc/etc", "/etc")],
    "hardlink": [("dir", "./hardlink", ""), ("hard", "./hardlink/pw", "/etc/passwd")],
    "hardlink_up": [("dir", "./hardlink_up", ""), ("hard", "./hardlink_up/pw", "../x")],
}


@pytest.fixture(scope="module")
def guest(tmp_path_factory: pytest.TempPathFactory, shared_cache: Path) -> Iterator[Cli]:
    """One VM for the whole module (booting is the slow part; each test copies into fresh paths)."""
    require_qemu()
    root = tmp_path_factory.mktemp("cp")
    home = root / "lkhome"
    env = dict(os.environ, LKCTL_HOME=str(home), LKCTL_CACHE_DIR=str(shared_cache))
    env["PATH"] = f"{BIN}:{env.get('PATH', '/usr/bin:/bin')}"
    env.pop("INVOKE_RUNTIME_CONFIG", None)
    work = root / "work"
    work.mkdir()
    (work / "sh").write_text(FAKE_SH)
    files = [f"  - {{path: bin/sh, source: {work / 'sh'}, mode: '0755'}}"]
    for name, entries in HOSTILE.items():
        (work / f"{name}.tar").write_bytes(_stream(*entries))
        files.append(f"  - {{path: etc/hostile/{name}.tar, source: {work / f'{name}.tar'}}}")
        files.append(f"  - {{path: hostile/{name}, contents: 'x'}}")
    (work / "cpguest.yml").write_text(
        "kernel: {image: lkctl.local/kernel:latest, cmdline: console=ttyS0}\n"
        "init: [lkctl.local/init:latest]\n"
        "services: [{name: sshd, image: lkctl.local/sshd:latest}]\n"
        "files:\n" + "\n".join(files) + "\n"
    )
    cli = Cli(env, work)
    try:
        cli("vm.run", "--image", str(work / "cpguest.yml"), "-d", "--name", "cpvm", "--memory", "384", timeout=900)
        yield cli
    finally:
        cli("vm.rm", "--force", "cpvm", check=False)
        left = qemu_pids_for(home)
        for pid in left:
            os.kill(pid, 9)
        assert not left, f"test left QEMU processes running: {left}"


def _sh(cli: Cli, script: str) -> str:
    return cli("vm.exec", "cpvm", "--", "sh", "-c", script).stdout


def _fails_in_one_line(cli: Cli, *args: str) -> str:
    proc = cli("vm.cp", *args, check=False)
    assert proc.returncode != 0, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "tar:" not in lines[0] and "Errno" not in lines[0] and "Traceback" not in proc.stderr
    return lines[0]


def test_the_guests_shell_is_the_hostile_stand_in(guest: Cli) -> None:
    assert "lkctl-test: a hostile shell" in _sh(guest, "head -2 /bin/sh")


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_hostile_guest_tar_writes_nothing_on_the_host(guest: Cli, tmp_path: Path, case: str) -> None:
    host = tmp_path / "host"
    host.mkdir()
    (host / ".bashrc").write_text("mine\n")
    (host / "x").write_text("mine\n")
    passwd = Path("/etc/passwd").read_bytes()
    # a new path; and for two cases an existing directory too (the copy would land inside it)
    for dest in (host / "dest", host) if case in ("dotdot", "symlink") else (host / "dest",):
        line = _fails_in_one_line(guest, f"cpvm:/hostile/{case}", str(dest))
        assert "refusing the copy of VM cpvm:/hostile/" in line
        assert sorted(p.name for p in host.iterdir()) == [".bashrc", "x"]  # no dest, no temp dir
        assert (host / ".bashrc").read_text() == "mine\n" and (host / "x").read_text() == "mine\n"
    assert not os.path.lexists(ESCAPE)
    assert Path("/etc/passwd").read_bytes() == passwd


def test_a_file_into_an_existing_directory_lands_inside_it_both_ways(guest: Cli, tmp_path: Path) -> None:
    f = tmp_path / "note.txt"
    f.write_text("hello\n")
    _sh(guest, "mkdir -p /tmp/t1")
    guest("vm.cp", str(f), "cpvm:/tmp/t1")
    assert _sh(guest, "cat /tmp/t1/note.txt; ls -A /tmp/t1") == "hello\nnote.txt\n"
    back = tmp_path / "back"
    back.mkdir()
    guest("vm.cp", "cpvm:/tmp/t1/note.txt", str(back))
    assert (back / "note.txt").read_text() == "hello\n"
    guest("vm.cp", "cpvm:/tmp/t1/note.txt", str(tmp_path / "renamed.txt"))  # a new name: the file becomes it
    assert (tmp_path / "renamed.txt").read_text() == "hello\n"


def _tree(root: Path) -> Path:
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (root / "sub" / "run.sh").chmod(0o750)
    (root / "top").write_text("top\n")
    (root / "link").symlink_to("sub/run.sh")
    return root


def test_a_directory_to_a_missing_dest_becomes_it_and_to_an_existing_one_goes_inside(
    guest: Cli, tmp_path: Path
) -> None:
    src = _tree(tmp_path / "src")
    guest("vm.cp", str(src), "cpvm:/tmp/t2")  # missing: /tmp/t2 is src
    guest("vm.cp", str(src), "cpvm:/tmp/t2")  # existing: /tmp/t2/src
    listing = _sh(guest, "cd /tmp/t2 && ls -A && ls -A src && readlink link && ./link && stat -c %a sub/run.sh")
    assert listing == "link\nsrc\nsub\ntop\nlink\nsub\ntop\nsub/run.sh\nhi\n750\n"

    back = tmp_path / "back"
    guest("vm.cp", "cpvm:/tmp/t2/src", str(back))  # missing: back is src
    guest("vm.cp", "cpvm:/tmp/t2/src", str(back))  # existing: back/src
    assert sorted(p.name for p in back.iterdir()) == ["link", "src", "sub", "top"]
    for d in (back, back / "src"):
        assert os.readlink(d / "link") == "sub/run.sh"  # copied as a link, not followed
        assert (d / "sub" / "run.sh").stat().st_mode & 0o777 == 0o750
        assert (d / "top").read_text() == "top\n"


def test_src_dot_copies_a_directorys_contents_both_ways(guest: Cli, tmp_path: Path) -> None:
    src = _tree(tmp_path / "src")
    _sh(guest, "mkdir -p /tmp/t3 && echo keep > /tmp/t3/old")
    guest("vm.cp", f"{src}/.", "cpvm:/tmp/t3")
    assert _sh(guest, "ls -A /tmp/t3") == "link\nold\nsub\ntop\n"
    back = tmp_path / "back"
    back.mkdir()
    (back / "mine").write_text("mine\n")
    guest("vm.cp", "cpvm:/tmp/t3/.", str(back))
    assert sorted(p.name for p in back.iterdir()) == ["link", "mine", "old", "sub", "top"]
    guest("vm.cp", "cpvm:/tmp/t3/.", str(tmp_path / "fresh"))  # a missing DEST is made
    assert sorted(p.name for p in (tmp_path / "fresh").iterdir()) == ["link", "old", "sub", "top"]


def test_cp_errors_are_one_line_in_lkctls_words_and_leave_nothing(guest: Cli, tmp_path: Path) -> None:
    f = tmp_path / "f.txt"
    f.write_text("f\n")
    _sh(guest, "mkdir -p /tmp/t4/f.txt && echo g > /tmp/t4/g")
    assert "no such file or directory in the guest" in _fails_in_one_line(guest, "cpvm:/nope", str(tmp_path / "o"))
    assert "parent directory" in _fails_in_one_line(guest, "cpvm:/tmp/t4/g", str(tmp_path / "no" / "o"))
    assert "parent directory does not exist" in _fails_in_one_line(guest, str(f), "cpvm:/nope/dir/f")
    assert "that directory does not exist" in _fails_in_one_line(guest, str(f), "cpvm:/tmp/nodir/")
    assert "is not a directory" in _fails_in_one_line(guest, "cpvm:/tmp/t4/g/.", str(tmp_path / "o"))
    assert "directory of that name is in the way" in _fails_in_one_line(guest, str(f), "cpvm:/tmp/t4")
    assert "no such file" in _fails_in_one_line(guest, str(tmp_path / "missing"), "cpvm:/tmp")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.txt"]
    assert _sh(guest, "ls -A /tmp/t4 /; ls -A /tmp | grep -c lkctl-cp || true").count(".lkctl-cp") == 0

"""lkctl.ssh against a real dropbear (the guest's sshd) on 127.0.0.1.

dropbear authenticates root through the passwd home, /root/.ssh/authorized_keys, and this dropbear version has
no option to point elsewhere. So it runs in a private mount namespace (`unshare --mount`) with a temporary
directory bind-mounted over /root: the real /root is never touched, and the mount vanishes with the process.
Not root? Then a user namespace maps us to root (`--user --map-root-user`), where the kernel allows it.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from lkctl.errors import ConfigError, SshError, VmError
from lkctl.ssh import (
    SshTarget,
    VmKeys,
    copy_from,
    copy_to,
    exec_command,
    fabric_connection,
    generate_keys,
    wait_ready,
    write_known_hosts,
)

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LKCTL_HOME", str(tmp_path / "lkctl-home"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Guest:
    """A dropbear standing in for a VM's sshd, with the key material lkctl would hand to the VM."""

    keys: VmKeys
    home: Path
    host_db: Path
    port: int
    target: SshTarget


def prepare_guest(root: Path, port: int) -> Guest:
    keys = generate_keys(root / "state")
    host_db = root / "state" / "dropbear_ed25519_host_key"  # written by generate_keys, as the VM gets it
    converted = root / "dropbear_key"
    argv = ["dropbearconvert", "openssh", "dropbear", str(keys.host_key), str(converted)]
    subprocess.run(argv, check=True, capture_output=True)
    assert host_db.read_bytes() == converted.read_bytes()  # the same file dropbearconvert makes in the guest
    home = root / "home"
    (home / ".ssh").mkdir(parents=True, mode=0o700)
    home.chmod(0o700)
    shutil.copy(keys.client_pub, home / ".ssh" / "authorized_keys")
    known_hosts = root / "state" / "known_hosts"
    write_known_hosts(known_hosts, "127.0.0.1", port, keys.host_pub)
    target = SshTarget("127.0.0.1", port, "root", keys.client_key, known_hosts, label="t1")
    return Guest(keys, home, host_db, port, target)


def start_dropbear(guest: Guest) -> subprocess.Popen[bytes]:
    if shutil.which("dropbear") is None or shutil.which("unshare") is None:
        skip_or_fail("dropbear (dropbear-bin) and unshare (util-linux) are needed")
    # --pid --fork: dropbear is init of its own PID namespace, so when it dies the kernel kills and reaps the
    # per-connection children it forked instead of leaving them to a possibly non-reaping init.
    ns = ["unshare", "--mount", "--propagation", "private", "--pid", "--fork", "--kill-child"]
    if os.geteuid() != 0:
        ns[1:1] = ["--user", "--map-root-user"]
    script = 'mount --bind "$1" /root && shift && exec "$@"'
    argv = [
        *ns, "sh", "-c", script, "sh", str(guest.home),
        "dropbear", "-F", "-E", "-s", "-P", str(guest.home.parent / "dropbear.pid"),
        "-p", f"127.0.0.1:{guest.port}", "-r", str(guest.host_db),
    ]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            skip_or_fail(f"cannot run dropbear in a private mount namespace: {err.strip()}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", guest.port), timeout=0.2):
            return proc
        time.sleep(0.05)
    stop_dropbear(proc)
    pytest.fail("dropbear did not listen within 10 s")


def stop_dropbear(proc: subprocess.Popen[bytes]) -> None:
    # Its own session: the group holds unshare and dropbear, which is init of its PID namespace.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    if proc.stderr:
        proc.stderr.close()


def skip_or_fail(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def guest(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Guest]:
    g = prepare_guest(tmp_path_factory.mktemp("guest"), free_port())
    proc = start_dropbear(g)
    try:
        yield g
    finally:
        stop_dropbear(proc)


def run(target: SshTarget, argv: list[str] | None = None, **kwargs: object) -> tuple[int, bytes, bytes]:
    out, err = io.BytesIO(), io.BytesIO()
    status = exec_command(target, argv, stdout=out, stderr=err, **kwargs)  # type: ignore[arg-type]
    return status, out.getvalue(), err.getvalue()


# --- exec ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("code", [0, 1, 42, 255])
def test_exit_status_of_the_remote_command_is_returned_unchanged(guest: Guest, code: int) -> None:
    assert run(guest.target, ["sh", "-c", f"exit {code}"])[0] == code


def test_a_command_killed_by_a_signal_returns_128_plus_the_signal(guest: Guest) -> None:
    assert run(guest.target, ["sh", "-c", "kill -TERM $$"])[0] == 128 + signal.SIGTERM


def test_stdout_and_stderr_stay_separate_and_byte_exact(guest: Guest) -> None:
    script = r"printf '\377\376out\000\r\n'; printf '\200err\n' >&2"

    status, out, err = run(guest.target, ["sh", "-c", script])

    assert (status, out, err) == (0, b"\xff\xfeout\x00\r\n", b"\x80err\n")


def test_output_is_streamed_while_the_command_still_runs(guest: Guest) -> None:
    arrivals: list[tuple[float, bytes]] = []

    class Recorder(io.RawIOBase):
        def writable(self) -> bool:
            return True

        def write(self, data: bytes) -> int:  # type: ignore[override]
            arrivals.append((time.monotonic(), bytes(data)))
            return len(data)

    status = exec_command(guest.target, ["sh", "-c", "echo first; sleep 2; echo second"], stdout=Recorder())
    finished = time.monotonic()

    assert status == 0
    assert b"".join(d for _, d in arrivals) == b"first\nsecond\n"
    assert arrivals[0][1] == b"first\n" and finished - arrivals[0][0] > 1.5


def test_stdin_is_streamed_to_the_command_until_eof(guest: Guest) -> None:
    data = os.urandom(3 * 1024 * 1024 + 7)

    status, out, _ = run(guest.target, ["cat"], stdin=io.BytesIO(data))

    assert status == 0 and out == data


def test_without_stdin_the_command_reads_eof_at_once(guest: Guest) -> None:
    assert run(guest.target, ["cat"], timeout=10) == (0, b"", b"")


def test_arguments_are_not_interpreted_by_the_remote_shell(guest: Guest, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    hostile = ["a b", "'q'", '"dq"', f"$(touch {marker})", f"; touch {marker}", f"`touch {marker}`", "*", "$HOME"]

    status, out, _ = run(guest.target, ["printf", "%s\\n", *hostile])

    assert status == 0
    assert out.decode().splitlines() == hostile
    assert not marker.exists()


def test_env_and_workdir_apply_to_the_command(guest: Guest, tmp_path: Path) -> None:
    workdir = tmp_path / "work dir"
    workdir.mkdir()

    status, out, _ = run(
        guest.target,
        ["sh", "-c", 'pwd; printf "%s|%s\\n" "$GREETING" "$QUOTE"'],
        env={"GREETING": "hello world", "QUOTE": "it's $(not) run"},
        workdir=str(workdir),
    )

    assert (status, out) == (0, f"{workdir}\nhello world|it's $(not) run\n".encode())


def test_shell_command_escape_hatch_is_run_by_the_remote_shell(guest: Guest) -> None:
    assert run(guest.target, command="echo a; echo b | tr b c; exit 3") == (3, b"a\nc\n", b"")


def test_pty_gives_the_command_a_terminal(guest: Guest) -> None:
    status, out, _ = run(guest.target, ["sh", "-c", "test -t 0 && test -t 1 && echo tty"], pty=True)
    assert (status, out) == (0, b"tty\r\n")
    assert run(guest.target, ["sh", "-c", "test -t 1"])[0] == 1


def test_pty_puts_a_local_terminal_in_raw_mode_and_restores_it(guest: Guest) -> None:
    import termios

    master, slave = os.openpty()
    before = termios.tcgetattr(slave)
    # Ctrl-C typed once the session runs: a local tty in cooked mode would eat it as a signal; in raw mode it
    # reaches the guest as a byte.
    typist = threading.Timer(1.0, os.write, (master, b"\x03"))
    typist.start()
    try:
        with os.fdopen(slave, "rb", buffering=0, closefd=False) as terminal:
            status, out, _ = run(
                guest.target, command="stty raw -echo; head -c 1 | od -An -tx1", pty=True, stdin=terminal, timeout=20
            )
        assert (status, out.split()) == (0, [b"03"])
        assert termios.tcgetattr(slave) == before
    finally:
        typist.join()
        os.close(master)  # wakes the stdin reader (EIO), then the slave can go
        time.sleep(0.1)
        os.close(slave)


def test_a_command_running_past_its_timeout_is_cut_off(guest: Guest) -> None:
    started = time.monotonic()
    with pytest.raises(SshError, match="VM t1 did not finish in time"):
        run(guest.target, ["sleep", "30"], timeout=1.5)
    assert time.monotonic() - started < 10


# --- trust -----------------------------------------------------------------------------------------------------


def test_a_host_key_other_than_the_pinned_one_is_refused(guest: Guest, tmp_path: Path) -> None:
    impostor = generate_keys(tmp_path / "impostor")
    tampered = tmp_path / "known_hosts"
    write_known_hosts(tampered, "127.0.0.1", guest.port, impostor.host_pub)

    with pytest.raises(SshError) as caught:
        run(replace(guest.target, known_hosts=tampered), ["true"])

    assert str(caught.value) == (
        f"host key of VM t1 at 127.0.0.1:{guest.port} does not match the key lkctl pinned for it; "
        "refusing to connect (someone else may be listening on that port)"
    )


def test_a_host_with_no_pinned_key_is_refused_not_trusted_on_first_use(guest: Guest, tmp_path: Path) -> None:
    other_port = tmp_path / "known_hosts"
    write_known_hosts(other_port, "127.0.0.1", guest.port + 1, guest.keys.host_pub)

    with pytest.raises(SshError, match=rf"^no pinned host key for VM t1 at 127.0.0.1:{guest.port} in .*known_hosts"):
        run(replace(guest.target, known_hosts=other_port), ["true"])
    assert other_port.read_text().count("\n") == 1  # nothing was added


def test_a_missing_known_hosts_file_is_refused(guest: Guest, tmp_path: Path) -> None:
    with pytest.raises(SshError, match="cannot read the pinned host key of VM t1"):
        run(replace(guest.target, known_hosts=tmp_path / "absent"), ["true"])


def test_a_client_key_the_guest_does_not_know_is_rejected(guest: Guest, tmp_path: Path) -> None:
    stranger = generate_keys(tmp_path / "stranger")

    with pytest.raises(SshError, match=rf"^VM t1 at 127.0.0.1:{guest.port} rejected the client key .*stranger"):
        run(replace(guest.target, client_key=stranger.client_key), ["true"])


def test_fabric_connection_runs_commands_with_the_host_key_pinned(guest: Guest, tmp_path: Path) -> None:
    with fabric_connection(guest.target) as cxn:
        assert cxn.run("echo hi", hide=True).stdout == "hi\n"

    write_known_hosts(tmp_path / "kh", "127.0.0.1", guest.port, generate_keys(tmp_path / "x").host_pub)
    with pytest.raises(SshError, match="does not match the key lkctl pinned"):
        with fabric_connection(replace(guest.target, known_hosts=tmp_path / "kh")):
            pass


# --- readiness -------------------------------------------------------------------------------------------------


def test_wait_ready_returns_once_the_guest_runs_commands(guest: Guest) -> None:
    wait_ready(guest.target, timeout=10, alive=lambda: True)


def test_wait_ready_gives_up_with_the_last_error_when_nothing_listens(guest: Guest) -> None:
    target = replace(guest.target, port=free_port())
    started = time.monotonic()

    with pytest.raises(SshError, match=r"^gave up waiting for SSH on VM t1 at .* after 1.5 s: .*connection refused"):
        wait_ready(target, timeout=1.5, alive=lambda: True)
    assert time.monotonic() - started < 5


def test_wait_ready_stops_early_when_the_vm_dies(guest: Guest) -> None:
    target = replace(guest.target, port=free_port())
    answers = iter([True, True, False])
    started = time.monotonic()

    with pytest.raises(SshError, match=r"^VM t1 stopped before SSH was ready \(last error: .*refused"):
        wait_ready(target, timeout=60, alive=lambda: next(answers))
    assert time.monotonic() - started < 5


def test_wait_ready_does_not_retry_a_mismatched_host_key(guest: Guest, tmp_path: Path) -> None:
    tampered = tmp_path / "known_hosts"
    write_known_hosts(tampered, "127.0.0.1", guest.port, generate_keys(tmp_path / "x").host_pub)
    ticks: list[None] = []

    with pytest.raises(SshError, match="does not match the key lkctl pinned"):
        wait_ready(
            replace(guest.target, known_hosts=tampered),
            timeout=30,
            alive=lambda: True,
            on_tick=lambda: ticks.append(None),
        )
    assert len(ticks) == 1


def test_wait_ready_succeeds_once_a_late_server_comes_up(tmp_path: Path) -> None:
    late = prepare_guest(tmp_path, free_port())
    ticks: list[None] = []
    procs: list[subprocess.Popen[bytes]] = []
    timer = threading.Timer(1.5, lambda: procs.append(start_dropbear(late)))
    timer.start()
    try:
        wait_ready(late.target, timeout=20, alive=lambda: True, on_tick=lambda: ticks.append(None))
        assert procs, "wait_ready returned before the server existed"
        assert len(ticks) > 2
    finally:
        timer.join()
        for p in procs:
            stop_dropbear(p)


def test_wait_ready_retries_a_key_the_guest_has_not_installed_yet(tmp_path: Path) -> None:
    booting = prepare_guest(tmp_path, free_port())
    authorized = booting.home / ".ssh" / "authorized_keys"
    authorized.rename(authorized.with_suffix(".later"))
    proc = start_dropbear(booting)
    timer = threading.Timer(1.0, lambda: authorized.with_suffix(".later").rename(authorized))
    timer.start()
    try:
        wait_ready(booting.target, timeout=20, alive=lambda: True)
    finally:
        timer.join()
        stop_dropbear(proc)


@contextlib.contextmanager
def fake_forward(*, hang_up: bool) -> Iterator[int]:
    """A port that accepts TCP and then hangs up or stays silent: QEMU's forward before the guest's sshd is up."""
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            if hang_up:
                conn.close()
            else:
                held.append(conn)

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    try:
        yield int(listener.getsockname()[1])
    finally:
        stop.set()
        server.join()
        listener.close()
        for c in held:
            c.close()


@pytest.mark.parametrize("hang_up", [True, False], ids=["hangs-up", "silent"])
def test_wait_ready_keeps_retrying_a_forward_with_no_sshd_behind_it(guest: Guest, hang_up: bool) -> None:
    ticks: list[None] = []
    with fake_forward(hang_up=hang_up) as port:
        started = time.monotonic()
        with pytest.raises(SshError, match=r"^gave up waiting for SSH on VM t1 at .* after 2 s: "):
            wait_ready(
                replace(guest.target, port=port), timeout=2, alive=lambda: True, on_tick=lambda: ticks.append(None)
            )
        assert time.monotonic() - started < 6
    assert len(ticks) >= 2


# --- copying ---------------------------------------------------------------------------------------------------


def test_copy_to_and_back_preserves_a_tree_byte_for_byte(guest: Guest, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub dir").mkdir(parents=True)
    (src / "blob").write_bytes(bytes(range(256)) * 100)
    (src / "sub dir" / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (src / "sub dir" / "run.sh").chmod(0o755)
    remote = tmp_path / "on the guest" / "copied"  # the "guest" shares this file system
    remote.parent.mkdir()

    copy_to(guest.target, src, str(remote))

    assert (remote / "blob").read_bytes() == (src / "blob").read_bytes()
    assert os.access(remote / "sub dir" / "run.sh", os.X_OK)

    back = tmp_path / "back"
    copy_from(guest.target, str(remote), back)

    assert (back / "blob").read_bytes() == (src / "blob").read_bytes()
    assert (back / "sub dir" / "run.sh").read_text() == "#!/bin/sh\necho hi\n"


def test_copy_to_a_trailing_slash_keeps_the_local_name_and_needs_the_directory(guest: Guest, tmp_path: Path) -> None:
    f = tmp_path / "hello.txt"
    f.write_bytes(b"\xffhi\n")
    with pytest.raises(
        ConfigError, match=r"^cannot copy the file .* to VM t1:.*/dest/: that directory does not exist$"
    ):
        copy_to(guest.target, f, f"{tmp_path}/dest/")
    assert not (tmp_path / "dest").exists()

    (tmp_path / "dest").mkdir()
    copy_to(guest.target, f, f"{tmp_path}/dest/")

    assert (tmp_path / "dest" / "hello.txt").read_bytes() == b"\xffhi\n"
    assert [p.name for p in (tmp_path / "dest").iterdir()] == ["hello.txt"]  # no temp dir left on the "guest"


def test_copy_from_a_missing_remote_path_says_what_failed(guest: Guest, tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"^cannot copy VM t1:/nonexistent/x: no such file or directory in the guest$"
    ):
        copy_from(guest.target, "/nonexistent/x", tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_copy_from_refuses_a_link_that_escapes_the_destination(guest: Guest, tmp_path: Path) -> None:
    remote = tmp_path / "remote"
    remote.mkdir()
    (remote / "big").write_bytes(os.urandom(1024 * 1024))  # after the bad entry: the pipe must keep draining
    (remote / "a-evil").symlink_to("/etc/passwd")

    with pytest.raises(
        VmError, match=r"^refusing the copy of VM t1:.*: the symlink a-evil -> /etc/passwd leaves the copy$"
    ):
        copy_from(guest.target, str(remote), tmp_path / "back", timeout=30)
    assert not (tmp_path / "back").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".lkctl-cp")] == []

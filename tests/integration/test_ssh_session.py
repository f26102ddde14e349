"""lkctl.ssh.session (a held connection) and session_when_listening against a real dropbear on 127.0.0.1."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from lkctl.errors import SshError
from lkctl.ssh import Session, generate_keys, session, session_when_listening, write_known_hosts
from tests.integration.test_ssh import Guest, free_port, prepare_guest, start_dropbear, stop_dropbear

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LKCTL_HOME", str(tmp_path / "lkctl-home"))


@pytest.fixture(scope="module")
def guest(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Guest]:
    g = prepare_guest(tmp_path_factory.mktemp("guest"), free_port())
    proc = start_dropbear(g)
    try:
        yield g
    finally:
        stop_dropbear(proc)


@pytest.fixture(scope="module")
def held(guest: Guest) -> Iterator[Session]:
    with session(guest.target) as s:
        yield s


@pytest.mark.parametrize("code", [0, 1, 42, 255])
def test_session_exec_returns_the_exit_status_unchanged(held: Session, code: int) -> None:
    assert held.exec(["sh", "-c", f"exit {code}"])[0] == code


def test_session_exec_reports_a_signal_as_128_plus_n(held: Session) -> None:
    assert held.exec(["sh", "-c", "kill -TERM $$"])[0] == 128 + signal.SIGTERM


def test_session_exec_keeps_stdout_and_stderr_separate_and_byte_exact(held: Session) -> None:
    script = r"printf '\377\376out\000\r\n'; printf '\200err\n' >&2"

    assert held.exec(["sh", "-c", script]) == (0, b"\xff\xfeout\x00\r\n", b"\x80err\n")


def test_session_exec_feeds_input_and_reads_large_output_on_both_streams(held: Session) -> None:
    data = os.urandom(3 * 1024 * 1024 + 7)

    status, out, err = held.exec(["sh", "-c", "cat; head -c 2000000 /dev/zero >&2"], input=data)

    assert (status, out, err) == (0, data, b"\0" * 2_000_000)


def test_session_exec_applies_env_and_workdir_and_never_reparses_arguments(held: Session, tmp_path: Path) -> None:
    hostile = ["a b", "$(touch x)", "'q'", "*"]

    status, out, _ = held.exec(["sh", "-c", 'echo "$GREETING"; pwd; printf "%s\\n" "$@"', "sh", *hostile],
                               env={"GREETING": "hi there"}, workdir=str(tmp_path))  # fmt: skip

    assert status == 0
    assert out.decode().splitlines() == ["hi there", str(tmp_path), *hostile]


def test_sequential_commands_share_one_connection(held: Session) -> None:
    transports = set()
    for i in range(6):
        channel = held.channel(f"echo {i}")
        transports.add(id(channel.get_transport()))
        assert channel.makefile("rb").read() == f"{i}\n".encode()
        held.finish(channel)
    # one connection for all (a second only if dropbear refused a channel once and it was retried)
    assert len(transports) <= 2


def test_concurrent_commands_all_run_and_all_succeed(held: Session) -> None:
    # dropbear 2022.83 drops a connection whose channels open and close concurrently; each concurrent command
    # gets a connection of its own, so none fails
    results: list[tuple[int, bytes, bytes]] = []
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            results.append(held.exec(["sh", "-c", f"sleep 0.2; echo {i}"]))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert errors == []
    assert sorted(results) == sorted((0, f"{i}\n".encode(), b"") for i in range(8))


def test_session_exec_cuts_off_a_command_past_its_timeout(held: Session) -> None:
    start = time.monotonic()
    with pytest.raises(SshError, match="did not finish in time"):
        held.exec(["sleep", "30"], timeout=1)
    assert time.monotonic() - start < 10


def test_session_refuses_a_host_key_other_than_the_pinned_one(guest: Guest, tmp_path: Path) -> None:
    other = generate_keys(tmp_path / "other")
    known_hosts = tmp_path / "known_hosts"
    write_known_hosts(known_hosts, "127.0.0.1", guest.port, other.host_pub)

    with pytest.raises(SshError, match="does not match the key lkctl pinned"):
        session(replace(guest.target, known_hosts=known_hosts))


def test_session_when_listening_connects_once_the_console_says_so(guest: Guest, tmp_path: Path) -> None:
    console = tmp_path / "console.log"
    console.write_bytes(b"lkctl-init: starting on Linux\n")

    def boot() -> None:
        time.sleep(0.5)
        with open(console, "ab") as f:
            f.write(b"lkctl-init: ready\nlkctl-init: sshd listening\n")

    threading.Thread(target=boot).start()
    start = time.monotonic()
    with session_when_listening(guest.target, console=console, timeout=30, alive=lambda: True) as s:
        took = time.monotonic() - start
        assert s.exec(["echo", "ok"]) == (0, b"ok\n", b"")
    assert 0.4 < took < 10


def test_session_when_listening_does_not_connect_before_the_marker(tmp_path: Path) -> None:
    # a guest whose lkctl init is still booting: no handshake is tried, the wait ends at the deadline
    g = prepare_guest(tmp_path / "g", free_port())  # nothing listens on its port: a probe would say "refused"
    console = tmp_path / "console.log"
    console.write_bytes(b"lkctl-init: starting on Linux\n")

    with pytest.raises(SshError, match="did not say that its sshd listens"):
        session_when_listening(g.target, console=console, timeout=1.5, alive=lambda: True)


def test_session_when_listening_probes_a_guest_without_lkctl_init(guest: Guest, tmp_path: Path) -> None:
    console = tmp_path / "console.log"
    console.write_bytes(b"Welcome to some other init\n")

    with session_when_listening(guest.target, console=console, timeout=30, alive=lambda: True) as s:
        assert s.exec(["true"])[0] == 0


def test_session_when_listening_probes_only_after_init_wait_without_an_init_line(guest: Guest, tmp_path: Path) -> None:
    # a TCG kernel takes seconds to reach init: the holder waits longer there before it takes the guest for one
    # without lkctl's init and probes (a probe slirp holds reaches the guest's sshd later as an extra connection)
    console = tmp_path / "console.log"
    console.write_bytes(b"")
    with pytest.raises(SshError, match="did not say that its sshd listens"):  # sshd is up, but never probed
        session_when_listening(guest.target, console=console, timeout=2, alive=lambda: True, init_wait=60)
    with session_when_listening(guest.target, console=console, timeout=30, alive=lambda: True, init_wait=0.5) as s:
        assert s.exec(["true"])[0] == 0


def test_session_when_listening_stops_at_once_when_the_vm_dies(guest: Guest, tmp_path: Path) -> None:
    start = time.monotonic()
    with pytest.raises(SshError, match="stopped before SSH was ready"):
        session_when_listening(guest.target, console=tmp_path / "none.log", timeout=30, alive=lambda: False)
    assert time.monotonic() - start < 2


def test_a_held_session_refuses_to_run_once_the_pin_no_longer_matches(guest: Guest, tmp_path: Path) -> None:
    known_hosts = tmp_path / "known_hosts"
    write_known_hosts(known_hosts, "127.0.0.1", guest.port, guest.keys.host_pub)
    with session(replace(guest.target, known_hosts=known_hosts)) as s:
        assert s.exec(["true"])[0] == 0
        other = generate_keys(tmp_path / "other")
        write_known_hosts(known_hosts, "127.0.0.1", guest.port, other.host_pub)
        with pytest.raises(SshError, match="does not match the key lkctl pinned"):
            s.exec(["true"])


def test_session_when_listening_is_not_held_up_by_a_probe_slirp_holds(guest: Guest, tmp_path: Path) -> None:
    """QEMU user networking accepts a forwarded connection at once and, while the guest's network is down, holds it
    (resending its SYN with backoff). A probe stuck in such a connection must not delay the handshake once the
    console says sshd listens: here a held connection is only passed on 6 s after the guest came up."""
    port = free_port()
    up = threading.Event()
    listener = socket.create_server(("127.0.0.1", port))
    stop = threading.Event()

    def pipe(a: socket.socket, b: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := a.recv(65536):
                b.sendall(data)
        with contextlib.suppress(OSError):
            b.shutdown(socket.SHUT_WR)

    def forward(conn: socket.socket, held: bool) -> None:
        if held:  # slirp's next SYN resend: long after the guest's sshd started listening
            up.wait()
            time.sleep(6)
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", guest.target.port)) as upstream:
            t = threading.Thread(target=pipe, args=(upstream, conn), daemon=True)
            t.start()
            pipe(conn, upstream)
            t.join()
        conn.close()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:  # closed at the end of the test
                return
            threading.Thread(target=forward, args=(conn, not up.is_set()), daemon=True).start()

    console = tmp_path / "console.log"
    console.write_bytes(b"")  # a TCG kernel still booting: no init line yet, so probing starts after 5 s

    def boot() -> None:
        time.sleep(6.5)
        up.set()
        with open(console, "ab") as f:
            f.write(b"lkctl-init: starting on Linux\nlkctl-init: ready\nlkctl-init: sshd listening\n")

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    threading.Thread(target=boot, daemon=True).start()
    start = time.monotonic()
    try:
        known_hosts = tmp_path / "known_hosts"
        write_known_hosts(known_hosts, "127.0.0.1", port, guest.keys.host_pub)
        target = replace(guest.target, port=port, known_hosts=known_hosts)
        with session_when_listening(target, console=console, timeout=60, alive=lambda: True) as s:
            took = time.monotonic() - start
            assert s.exec(["true"])[0] == 0
    finally:
        stop.set()
        acceptor.join()
        listener.close()
    assert took < 10.5  # a probe held to the full timeout connected at the resend: 12.5 s

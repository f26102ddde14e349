import json
import os
import socket
import threading
from pathlib import Path

import pytest

from lkctl.fsutil import unix_address
from lkctl.runtime import holder
from lkctl.runtime.state import VmRecord, process_identity, save_record


def test_frames_round_trip_byte_exact_including_empty_and_large_payloads() -> None:
    a, b = socket.socketpair()
    big = os.urandom(700_000)
    with a, b:

        def send() -> None:
            for kind, payload in ((b"O", b"\0\xff"), (b"E", b""), (b"X", big)):
                holder.send_frame(a, kind, payload)

        sender = threading.Thread(target=send)
        sender.start()
        got = [holder.read_frame(b) for _ in range(3)]
        sender.join()
        a.close()
        with pytest.raises(EOFError):
            holder.read_frame(b)
    assert got == [(b"O", b"\0\xff"), (b"E", b""), (b"X", big)]


def test_request_carries_argv_env_workdir_exactly() -> None:
    req = json.loads(holder.request_json(["printf", "%s", "a b", "$(x)"], {"K": "v w"}, "/tmp", True))
    assert req == {"argv": ["printf", "%s", "a b", "$(x)"], "env": {"K": "v w"}, "workdir": "/tmp", "stdin": True}


def _record(tmp_path: Path, helpers: list[list[str]]) -> VmRecord:
    r = VmRecord(id="0badc0de", name="w", image="minimal", image_format="kernel+initrd", created="2026-01-01",
                 memory=1024, cpus=1, ssh_port=2222, helpers=helpers)  # fmt: skip
    save_record(r)
    return r


def test_a_socket_not_served_by_the_recorded_holder_is_not_used(tmp_path: Path) -> None:
    record = _record(tmp_path, helpers=[["1", "0"]])  # some other process is recorded as the holder
    with socket.socket(socket.AF_UNIX) as stranger:
        with unix_address(holder.socket_path(record.dir)) as address:
            stranger.bind(address)
        stranger.listen(1)
        with pytest.raises(holder.HolderUnavailable, match="not served by VM w's recorded holder"):
            holder.exec_via_holder(record, ["true"], stdin_fd=None)


def test_the_recorded_holder_is_recognised_by_pid_and_start_time(tmp_path: Path) -> None:
    me = process_identity(os.getpid())
    assert me is not None
    record = _record(tmp_path, helpers=[[str(me.pid), me.start]])
    with socket.socket(socket.AF_UNIX) as server:
        with unix_address(holder.socket_path(record.dir)) as address:
            server.bind(address)
        server.listen(1)

        def answer() -> None:
            conn, _ = server.accept()
            with conn:
                kind, payload = holder.read_frame(conn)
                assert kind == b"R" and json.loads(payload)["argv"] == ["true"]
                holder.send_frame(conn, b"S", (7).to_bytes(4, "big", signed=True))

        t = threading.Thread(target=answer)
        t.start()
        assert holder.exec_via_holder(record, ["true"], stdin_fd=None) == 7
        t.join()


def test_no_socket_means_no_holder(tmp_path: Path) -> None:
    record = _record(tmp_path, helpers=[])
    with pytest.raises(holder.HolderUnavailable):
        holder.exec_via_holder(record, ["true"], stdin_fd=None)

"""fsutil.connect_unix: the one way lkctl connects to QMP, console and holder sockets, however deep their dir."""

from __future__ import annotations

import errno
import os
import socket
from pathlib import Path

import pytest

from lkctl.fsutil import connect_unix, unix_address


def _deep_dir(tmp_path: Path) -> Path:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    return deep


def test_connect_unix_reaches_a_socket_deeper_than_sun_path_holds(tmp_path: Path) -> None:
    path = _deep_dir(tmp_path) / "qmp.sock"
    assert len(os.fsencode(path)) > 108
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with server, unix_address(path) as address:
        server.bind(address)
        server.listen(1)
        with connect_unix(path, timeout=5) as client:
            peer, _ = server.accept()
            with peer:
                client.sendall(b"ping")
                assert peer.recv(4) == b"ping"
                assert client.gettimeout() == 5


def test_connect_unix_raises_oserror_when_nobody_listens(tmp_path: Path) -> None:
    with pytest.raises(OSError) as failed:
        connect_unix(_deep_dir(tmp_path) / "gone.sock")
    assert failed.value.errno == errno.ENOENT

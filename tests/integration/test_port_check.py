"""vm.run's host-port check against real sockets on 127.0.0.1: it agrees with what QEMU can bind."""

from __future__ import annotations

import socket
import time

import pytest

from lkctl.errors import ConfigError
from lkctl.runtime.ports import check_ports
from lkctl.runtime.vm import RunOptions

pytestmark = pytest.mark.integration


def _listener() -> tuple[socket.socket, int]:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as QEMU's slirp binds a hostfwd port
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s, int(s.getsockname()[1])


def test_a_port_with_a_listener_is_refused() -> None:
    listener, port = _listener()
    with listener, pytest.raises(ConfigError, match=f"127.0.0.1:{port}/tcp is already in use"):
        check_ports(port, RunOptions().ports)


def test_a_port_whose_last_connection_is_in_time_wait_is_free_again() -> None:
    # a VM's connection holder keeps a connection open; when QEMU goes, QEMU's end lingers in TIME_WAIT on the
    # VM's SSH port, and vm.restart must still be able to reuse that port
    listener, port = _listener()
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = listener.accept()
    listener.close()
    accepted.close()  # the QEMU side closes first
    time.sleep(0.1)
    client.close()
    time.sleep(0.1)
    check_ports(port, RunOptions().ports)

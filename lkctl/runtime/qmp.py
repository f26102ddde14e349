"""A minimal QMP client: enough to ask a guest to power down and to check QEMU is alive and ours."""

from __future__ import annotations

import contextlib
import json
import socket
import time
from pathlib import Path
from typing import Any

from lkctl.errors import VmError
from lkctl.fsutil import connect_unix

__all__ = ["hmp_command", "qmp_command"]


def _connect(path: Path, timeout: float) -> socket.socket:
    try:
        sock = connect_unix(path, timeout)
    except OSError as e:
        raise VmError(f"cannot reach QEMU's control socket {path}: {e.strerror or e}") from None
    return sock


def _read_message(f: Any) -> dict[str, Any]:
    line = f.readline()
    if not line:
        raise VmError("QEMU closed its control socket")
    msg = json.loads(line)
    if not isinstance(msg, dict):
        raise VmError("unexpected QMP message")
    return msg


def qmp_command(path: Path, command: str, arguments: dict[str, Any] | None = None, *, timeout: float = 5.0) -> Any:
    """Run one QMP command and return its `return` value (events arriving meanwhile are skipped)."""
    deadline = time.monotonic() + timeout
    sock = _connect(path, timeout)
    with contextlib.closing(sock), sock.makefile("rwb") as f:
        _read_message(f)  # greeting
        for cmd, args in (("qmp_capabilities", None), (command, arguments)):
            req: dict[str, Any] = {"execute": cmd}
            if args:
                req["arguments"] = args
            f.write(json.dumps(req).encode() + b"\n")
            f.flush()
            while True:
                if time.monotonic() > deadline:
                    raise VmError(f"QEMU did not answer {command} within {timeout:.0f}s")
                msg = _read_message(f)
                if "event" in msg:
                    continue
                if "error" in msg:
                    raise VmError(f"QEMU refused {cmd}: {msg['error'].get('desc', msg['error'])}")
                result = msg.get("return")
                break
        return result


def hmp_command(path: Path, line: str, *, timeout: float = 5.0) -> str:
    """Run a human-monitor command (e.g. `hostfwd_add ...`, `info usernet`) and return its text output.

    HMP reports most failures as text rather than as a QMP error; callers check what it printed."""
    result = qmp_command(path, "human-monitor-command", {"command-line": line}, timeout=timeout)
    return result if isinstance(result, str) else ""

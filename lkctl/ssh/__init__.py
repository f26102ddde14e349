"""SSH to a guest: per-VM keys made before boot, a pinned host key, byte-exact remote commands.

This is the only module that imports paramiko/fabric/cryptography, and it does so inside functions so that
`import lkctl.ssh` (and so `invoke --list` in a user's repo) stays cheap.

Trust model: lkctl generates the guest's host key on the host before the VM boots and writes a known_hosts line
for it. A connection is only made when the server proves it holds that key; there is no trust on first use and
no ~/.ssh/config, agent or default identity can leak into these loopback connections.
"""

from __future__ import annotations

from lkctl.ssh._connect import CONNECT_TIMEOUT, JumpHost, SshTarget, fabric_connection, vm_target, wait_ready
from lkctl.ssh._copy import copy_from, copy_to
from lkctl.ssh._exec import ByteSink, exec_command, remote_command
from lkctl.ssh._keys import VmKeys, generate_keys, known_hosts_line, write_known_hosts
from lkctl.ssh._session import Session, prewarm, session, session_when_listening

__all__ = [
    "CONNECT_TIMEOUT",
    "ByteSink",
    "JumpHost",
    "Session",
    "SshTarget",
    "VmKeys",
    "copy_from",
    "copy_to",
    "exec_command",
    "fabric_connection",
    "generate_keys",
    "known_hosts_line",
    "prewarm",
    "remote_command",
    "session",
    "session_when_listening",
    "vm_target",
    "wait_ready",
    "write_known_hosts",
]

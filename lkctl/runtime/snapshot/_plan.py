"""The pure parts of warm starts: which argv parts key a snapshot, the devices every snapshot boot has, the
identity message, and what `--snapshot` refuses. See lkctl.runtime.snapshot."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lkctl.errors import ConfigError
from lkctl.runtime.model import BootImage, ImageFormat

if TYPE_CHECKING:
    from lkctl.runtime.vm import RunOptions

__all__ = [
    "BINARY_FILES",
    "FORMAT",
    "IDENTITY_FILES",
    "IDENTITY_PORT",
    "IDENTITY_SOCKET",
    "TEMPLATE_HOSTNAME",
    "SnapshotKey",
    "check_supported",
    "clock_line",
    "guest_file_entries",
    "identity_message",
    "key_argv",
    "key_inputs",
    "snapshot_argv",
    "template_argv",
]

IDENTITY_PORT = "org.lkctl.identity"  # the guest's /sys/class/virtio-ports/*/name
IDENTITY_SOCKET = "identity.sock"  # the host side of the port, in the VM's state dir
FORMAT = 2  # bumped when what a snapshot holds or the identity protocol changes: older snapshots are not used
# The host key again in dropbear's format: binary, sent as octal escapes like the random bytes, so neither a cold
# boot nor a restore runs dropbearconvert (the guest writes it after the OpenSSH key, which lkctl-sshd checks).
BINARY_FILES = frozenset({"ssh/dropbear_ed25519_host_key"})
IDENTITY_FILES = frozenset({"ssh/ssh_host_ed25519_key", "ssh/authorized_keys", "hostname", "vm-hostname", "env"})
_OCTETS_PER_LINE = 64  # a `bytes` line of at most 256 characters
TEMPLATE_HOSTNAME = "lkctl-snapshot"


def check_supported(boot: BootImage, opts: RunOptions, hypervisor: str, *, keys_from: Path | None = None) -> None:
    """Refuse `--snapshot` (one line, before anything is made) where a restored VM could not be this VM;
    `keys_from`: the VM adopts keys an image was built with."""
    why = ""
    if not opts.detach:
        why = "a warm start is for detached VMs; add -d"
    elif opts.connect or opts.host:
        why = "snapshots are restored by QEMU on this machine, not through libvirt; drop --connect/--host"
    elif hypervisor != "qemu":
        why = f"{hypervisor} has no memory snapshots here; use --hypervisor qemu"
    elif boot.format is not ImageFormat.KERNEL_INITRD or boot.rootdisk is not None:
        kind = "kernel+initrd with a root disk" if boot.rootdisk is not None else boot.format.value
        why = f"only kernel+initrd images without disks can be restored (this is {kind}: its disk would not match)"
    elif opts.volumes:
        why = "QEMU cannot snapshot a VM with a mounted 9p/virtiofs share, and a restored VM cannot mount new ones"
    elif opts.data_disk is not None:
        why = "a data disk made for this VM would not match the snapshot's memory; drop --disk"
    elif keys_from is not None:
        why = "this image is built with this VM's own keys (its template uses SSH_KEY/SSH_HOST_KEY): no VM can share it"
    if why:
        raise ConfigError(f"--snapshot: {why}")


def _option_parts(value: str) -> list[str]:
    """A QEMU option value split at its commas (a doubled comma is a literal one and does not split)."""
    parts, cur, i = [], "", 0
    while i < len(value):
        if value[i] == ",":
            if value[i + 1 : i + 2] == ",":
                cur += ",,"
                i += 2
                continue
            parts.append(cur)
            cur = ""
        else:
            cur += value[i]
        i += 1
    return [*parts, cur]


def key_argv(argv: Sequence[str]) -> list[str]:
    """`argv` without what differs between VMs of one image and size and does not reach the snapshot: the VM's
    name, `-daemonize`, the host side of port forwards, the NIC's MAC (the guest keeps the snapshot's) and fw_cfg
    file paths (the names stay: which files the guest was given is part of its state). Pure."""
    return _without_vm_parts(argv, keep_files=False)


def _without_vm_parts(argv: Sequence[str], *, keep_files: bool) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(argv):
        opt = argv[i]
        value = argv[i + 1] if i + 1 < len(argv) else None
        if opt == "-daemonize":
            i += 1
            continue
        if value is None:
            out.append(opt)
            break
        if opt == "-name":
            value = TEMPLATE_HOSTNAME
        elif opt == "-netdev":
            value = ",".join(p for p in _option_parts(value) if not p.startswith("hostfwd="))
        elif opt == "-device" and value.startswith("virtio-net"):
            value = ",".join(p for p in _option_parts(value) if not p.startswith("mac="))
        elif opt == "-fw_cfg" and not keep_files:
            value = _option_parts(value)[0]
        if opt.startswith("-"):
            out += [opt, value]
            i += 2
        else:
            out.append(opt)  # the binary
            i += 1
    return out


def snapshot_argv(argv: Sequence[str], *, incoming: Path | None = None) -> list[str]:
    """`argv` plus the devices every snapshot boot has (the identity port and vmgenid), and with `incoming` the
    snapshot file QEMU loads instead of booting. Template and restored VM must agree on these. Pure."""
    out = [a for a in argv if a != "-daemonize"]
    out += [
        "-device", "virtio-serial-pci,id=lkser0",
        "-chardev", f"socket,id=lkident,path={IDENTITY_SOCKET},server=on,wait=off",
        "-device", f"virtserialport,bus=lkser0.0,chardev=lkident,name={IDENTITY_PORT}",
        "-device", "vmgenid,guid=auto",  # a new generation ID per QEMU start: the guest kernel reseeds its RNG
    ]  # fmt: skip
    if incoming is not None:
        out += ["-incoming", "exec:cat " + shlex.quote(os.fspath(incoming))]
    if "-daemonize" in argv:
        out.append("-daemonize")
    return out


def template_argv(argv: Sequence[str]) -> list[str]:
    """What the template boot runs (in its own work dir, not daemonized): the VM's argv without its per-VM parts,
    as a snapshot boot. Pure."""
    return snapshot_argv(_without_vm_parts(argv, keep_files=True))


def guest_file_entries(argv: Sequence[str]) -> list[tuple[str, str]]:
    """(name under opt/lkctl/, file relative to the VM dir) of each fw_cfg file in `argv`. A file the identity
    message cannot carry (a volume list) means the VM cannot be restored: ConfigError. Pure."""
    entries = []
    for opt, value in itertools.pairwise(argv):
        if opt != "-fw_cfg":
            continue
        parts = dict(p.split("=", 1) for p in _option_parts(value) if "=" in p)
        name = parts.get("name", "").removeprefix("opt/lkctl/")
        if name not in IDENTITY_FILES | BINARY_FILES or "file" not in parts:
            raise ConfigError(f"fw_cfg {parts.get('name', value)} cannot be given to a restored VM")
        entries.append((name, parts["file"].replace(",,", ",")))
    return entries


def _octal(data: bytes) -> bytes:
    return "".join(f"\\{b:03o}" for b in data).encode()


def clock_line(now: float) -> bytes:
    """`time SECONDS USEC`: busybox's `date -s` sets whole seconds, so the guest sets SECONDS (the host clock rounded
    down) at once and steps it to SECONDS + 1 when USEC microseconds have passed, as the host clock reaches it: the
    guest clock ends within the restore's latency of the host's (milliseconds) and only ever steps forward. Pure."""
    seconds = int(now // 1)
    return f"time {seconds} {min(max(round((seconds + 1 - now) * 1e6), 1), 1_000_000)}".encode()


def identity_message(files: Sequence[tuple[str, bytes]], *, now: float, rng: bytes) -> bytes:
    """The message the guest's identity agent reads (see images/init/rootfs/usr/lib/lkctl/identity): the clock
    (`clock_line`), random bytes as octal escapes (the guest's shell printf writes them without a fork), then each
    file as `file NAME` and one `line TEXT` per line (text files; a missing final newline is added) or, for
    BINARY_FILES, `bytes OCTAL` lines. Pure."""
    lines = [clock_line(now), b"rng " + _octal(rng)]
    # binary files last: the guest then writes the dropbear-format key after the OpenSSH one (lkctl-sshd uses it
    # only if it is not older)
    for name, data in sorted(files, key=lambda f: f[0] in BINARY_FILES):
        if name in BINARY_FILES:
            lines.append(f"file {name}".encode())
            lines += [b"bytes " + _octal(data[i : i + _OCTETS_PER_LINE]) for i in range(0, len(data), _OCTETS_PER_LINE)]
            continue
        if name not in IDENTITY_FILES:
            raise ConfigError(f"{name} is not a file a restored VM takes")
        if b"\0" in data or b"\r" in data:
            raise ConfigError(f"{name} for a restored VM must be text (no NUL or CR)")
        lines.append(f"file {name}".encode())
        lines += [b"line " + line for line in data.removesuffix(b"\n").split(b"\n")] if data else []
    return b"\n".join([*lines, b"end"]) + b"\n"


def key_inputs(
    argv: Sequence[str], *, files: Mapping[str, Sequence[int]], qemu: Mapping[str, Any], env_digest: str
) -> dict[str, Any]:
    """Everything a snapshot depends on, as JSON-able data (its digest names the snapshot). Pure."""
    return {
        "format": FORMAT,
        "argv": key_argv(argv),
        "files": {p: list(ident) for p, ident in sorted(files.items())},
        "qemu": dict(qemu),
        "env": env_digest,
    }


@dataclass(frozen=True)
class SnapshotKey:
    """A snapshot's name (`digest`) and what it covers (`inputs`, kept beside it in its .json)."""

    digest: str
    inputs: dict[str, Any] = field(hash=False, compare=False)

    @classmethod
    def of(cls, inputs: dict[str, Any]) -> SnapshotKey:
        text = json.dumps(inputs, sort_keys=True, separators=(",", ":"))
        return cls(hashlib.sha256(text.encode()).hexdigest()[:32], inputs)

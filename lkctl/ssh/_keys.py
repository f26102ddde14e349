"""Per-VM SSH keys made on the host before boot, and the pinned known_hosts line."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from lkctl.errors import ConfigError, StateError
from lkctl.fsutil import atomic_write, file_lock, private_dir


@dataclass(frozen=True)
class VmKeys:
    """The key files of one VM: the client identity lkctl logs in with, and the guest's own host key."""

    client_key: Path
    client_pub: Path
    host_key: Path
    host_pub: Path


def generate_keys(directory: Path) -> VmKeys:
    """Make (or keep) a VM's ed25519 client and host keys in OpenSSH format; private files are 0600.

    Idempotent: a private key that exists is kept and its `.pub` is re-derived from it, so a VM that is restarted
    keeps the identity its known_hosts line pins.
    """
    private_dir(directory)
    keys = VmKeys(
        client_key=directory / "id_ed25519",
        client_pub=directory / "id_ed25519.pub",
        host_key=directory / "ssh_host_ed25519_key",
        host_pub=directory / "ssh_host_ed25519_key.pub",
    )
    with file_lock(directory / ".ssh-keys.lock"):
        _ensure_key(keys.client_key, keys.client_pub, f"lkctl-client@{directory.name}")
        _ensure_key(keys.host_key, keys.host_pub, f"lkctl-host@{directory.name}")
        _ensure_dropbear_key(keys.host_key, directory / DROPBEAR_HOST_KEY)
    return keys


DROPBEAR_HOST_KEY = "dropbear_ed25519_host_key"
"""The host key in dropbear's format, beside the OpenSSH one: the guest's sshd uses it as is (no dropbearconvert
run in the guest at boot) unless the OpenSSH key is newer."""


def dropbear_ed25519_key(openssh_private: bytes) -> bytes:
    """An OpenSSH-format ed25519 private key in dropbear's key-file format (what `dropbearconvert openssh
    dropbear` writes): string "ssh-ed25519", then a string of the 32-byte seed followed by the 32-byte public key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = serialization.load_ssh_private_key(openssh_private, password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError("not an ed25519 key")
    raw = serialization.Encoding.Raw
    seed = key.private_bytes(raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    pub = key.public_key().public_bytes(raw, serialization.PublicFormat.Raw)
    name = b"ssh-ed25519"
    return len(name).to_bytes(4, "big") + name + (64).to_bytes(4, "big") + seed + pub


def _ensure_dropbear_key(host_key: Path, dest: Path) -> None:
    wanted = dropbear_ed25519_key(host_key.read_bytes())  # derived each time: never a stale copy of another key
    try:
        if dest.read_bytes() == wanted:
            return
    except FileNotFoundError:
        pass
    atomic_write(dest, wanted, 0o600)


def _ensure_key(private: Path, public: Path, comment: str) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    if private.exists():
        try:
            key = serialization.load_ssh_private_key(private.read_bytes(), password=None)
        except (ValueError, TypeError, OSError) as e:
            raise StateError(f"cannot read SSH key {private}: {e}; delete it to make a new one") from e
        if not isinstance(key, Ed25519PrivateKey):
            raise StateError(f"SSH key {private} is not an ed25519 key; delete it to make a new one")
        if private.stat().st_mode & 0o077:
            private.chmod(0o600)
    else:
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
        )
        atomic_write(private, pem, 0o600)
    pub = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    line = pub + b" " + comment.encode() + b"\n"
    if not public.exists() or public.read_bytes().split()[:2] != line.split()[:2]:
        atomic_write(public, line, 0o644)


def known_hosts_line(host: str, port: int, host_pub: Path) -> str:
    """The known_hosts line pinning `host_pub` for host:port (`[host]:port` unless port is 22, as OpenSSH does)."""
    if not host or any(c.isspace() or c in ",#[]" for c in host) or not 0 < port < 65536:
        raise ConfigError(f"cannot pin a host key for {host!r} port {port}")
    try:
        fields = host_pub.read_text(encoding="utf-8").split()
    except (OSError, UnicodeDecodeError) as e:
        raise StateError(f"cannot read host public key {host_pub}: {e}") from e
    if len(fields) < 2 or not re.fullmatch(r"(ssh|ecdsa|sk)-[A-Za-z0-9@.-]+", fields[0]):
        raise StateError(f"{host_pub} is not an OpenSSH public key")
    pattern = host if port == 22 else f"[{host}]:{port}"
    return f"{pattern} {fields[0]} {fields[1]}"


def write_known_hosts(path: Path, host: str, port: int, host_pub: Path) -> None:
    """Write a known_hosts file (0600) holding exactly the pinned line for host:port."""
    atomic_write(path, known_hosts_line(host, port, host_pub) + "\n", 0o600)

"""Per-VM SSH key material and the known_hosts line that pins the guest's host key."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import paramiko
import pytest

from lkctl.errors import ConfigError, StateError
from lkctl.ssh import generate_keys, known_hosts_line, write_known_hosts


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LKCTL_HOME", str(tmp_path / "lkctl-home"))


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_generate_keys_writes_ed25519_openssh_pairs_that_match(tmp_path: Path) -> None:
    keys = generate_keys(tmp_path / "vm1")

    for private, public, comment in (
        (keys.client_key, keys.client_pub, "lkctl-client@vm1"),
        (keys.host_key, keys.host_pub, "lkctl-host@vm1"),
    ):
        assert private.read_text().startswith("-----BEGIN OPENSSH PRIVATE KEY-----\n")
        kind, b64, note = public.read_text().rstrip("\n").split(" ")
        loaded = paramiko.PKey.from_path(private)
        assert (kind, b64, note) == ("ssh-ed25519", loaded.get_base64(), comment)
    assert keys.client_key.name == "id_ed25519"
    assert keys.host_key.name == "ssh_host_ed25519_key"
    assert keys.client_pub.read_text().split()[1] != keys.host_pub.read_text().split()[1]


def test_generate_keys_makes_private_files_0600_in_a_0700_directory(tmp_path: Path) -> None:
    keys = generate_keys(tmp_path / "vm1")

    assert mode(keys.client_key) == 0o600
    assert mode(keys.host_key) == 0o600
    assert mode(keys.client_pub) == 0o644
    assert mode(tmp_path / "vm1") == 0o700


def test_generate_keys_keeps_existing_keys(tmp_path: Path) -> None:
    first = generate_keys(tmp_path / "vm1")
    before = {p: p.read_bytes() for p in (first.client_key, first.client_pub, first.host_key, first.host_pub)}

    second = generate_keys(tmp_path / "vm1")

    assert second == first
    assert {p: p.read_bytes() for p in before} == before


def test_generate_keys_rederives_a_missing_public_key_from_the_kept_private_key(tmp_path: Path) -> None:
    keys = generate_keys(tmp_path / "vm1")
    host_pub = keys.host_pub.read_bytes()
    keys.host_pub.unlink()

    generate_keys(tmp_path / "vm1")

    assert keys.host_pub.read_bytes() == host_pub


def test_generate_keys_tightens_a_private_key_left_world_readable(tmp_path: Path) -> None:
    keys = generate_keys(tmp_path / "vm1")
    keys.client_key.chmod(0o644)

    generate_keys(tmp_path / "vm1")

    assert mode(keys.client_key) == 0o600


def test_generate_keys_refuses_a_corrupt_private_key(tmp_path: Path) -> None:
    keys = generate_keys(tmp_path / "vm1")
    keys.host_key.write_text("not a key\n")

    with pytest.raises(StateError, match=r"cannot read SSH key .*ssh_host_ed25519_key.*delete it"):
        generate_keys(tmp_path / "vm1")


def test_known_hosts_line_brackets_non_default_ports_like_paramiko_looks_them_up(tmp_path: Path) -> None:
    keys = generate_keys(tmp_path / "vm1")
    b64 = keys.host_pub.read_text().split()[1]

    assert known_hosts_line("127.0.0.1", 2222, keys.host_pub) == f"[127.0.0.1]:2222 ssh-ed25519 {b64}"
    assert known_hosts_line("127.0.0.1", 22, keys.host_pub) == f"127.0.0.1 ssh-ed25519 {b64}"
    assert known_hosts_line("::1", 2222, keys.host_pub) == f"[::1]:2222 ssh-ed25519 {b64}"


def test_write_known_hosts_is_0600_and_paramiko_finds_the_pinned_key(tmp_path: Path) -> None:
    keys = generate_keys(tmp_path / "vm1")
    path = tmp_path / "vm1" / "known_hosts"

    write_known_hosts(path, "127.0.0.1", 2222, keys.host_pub)

    assert mode(path) == 0o600
    assert path.read_text().endswith("\n") and path.read_text().count("\n") == 1
    pins = paramiko.HostKeys(str(path))
    pinned = pins.lookup("[127.0.0.1]:2222")
    assert pinned is not None and pinned["ssh-ed25519"] == paramiko.PKey.from_path(keys.host_key)
    assert pins.lookup("127.0.0.1") is None


@pytest.mark.parametrize(("host", "port"), [("", 2222), ("bad host", 2222), ("a,b", 2222), ("h", 0), ("h", 65536)])
def test_known_hosts_line_rejects_unpinnable_addresses(tmp_path: Path, host: str, port: int) -> None:
    keys = generate_keys(tmp_path / "vm1")

    with pytest.raises(ConfigError, match="cannot pin"):
        known_hosts_line(host, port, keys.host_pub)


def test_known_hosts_line_refuses_a_file_that_is_not_a_public_key(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pub"
    junk.write_text("hello world\n")

    with pytest.raises(StateError, match="not an OpenSSH public key"):
        known_hosts_line("127.0.0.1", 2222, junk)


def test_importing_lkctl_ssh_does_not_import_paramiko_fabric_or_cryptography() -> None:
    code = (
        "import sys, lkctl.ssh; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('paramiko', 'fabric', 'cryptography')))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "[]"

"""The warm-start snapshot's pure parts: which argv parts key a snapshot, the snapshot boot's devices, the identity
message and what `--snapshot` refuses."""

from __future__ import annotations

from pathlib import Path

import pytest

from lkctl.errors import ConfigError
from lkctl.runtime.host import Accel, HostCaps
from lkctl.runtime.model import BootImage, DataDisk, ImageFormat, PortForward, VmSpec, Volume
from lkctl.runtime.qemu import qemu_argv
from lkctl.runtime.snapshot import (
    IDENTITY_PORT,
    SnapshotKey,
    check_supported,
    clock_line,
    guest_file_entries,
    identity_message,
    key_argv,
    key_inputs,
    snapshot_argv,
    template_argv,
)
from lkctl.runtime.vm import RunOptions

HOST = HostCaps(arch="x86_64", os="linux", accel=Accel.TCG, qemu="qemu-system-x86_64")
BOOT = BootImage(ImageFormat.KERNEL_INITRD, Path("/img/m"), kernel=Path("/img/m-kernel"), initrd=Path("/img/m-initrd"))
DISK_ROOT = BootImage(ImageFormat.KERNEL_INITRD, Path("/d"), rootdisk=Path("/d.qcow2"))
FILES = (
    ("ssh/authorized_keys", Path("id_ed25519.pub")),
    ("ssh/ssh_host_ed25519_key", Path("ssh_host_ed25519_key")),
    ("vm-hostname", Path("vm-hostname")),
)


def _argv(vm_id: str = "0a1b2c3d", ssh_port: int = 40022, memory: int = 1024, **kw: object) -> list[str]:
    mac = "52:54:" + ":".join(vm_id[i : i + 2] for i in range(0, 8, 2))
    kw.setdefault("guest_files", FILES)
    spec = VmSpec(vm_id=vm_id, boot=BOOT, memory=memory, ssh_port=ssh_port, mac=mac, **kw)  # type: ignore[arg-type]
    return qemu_argv(spec, HOST)


def test_two_vms_of_one_image_and_size_have_the_same_key_argv() -> None:
    a = _argv("0a1b2c3d", 40022, ports=(PortForward(8080, 80),))
    b = _argv("ffeeddcc", 41022)
    assert a != b
    assert key_argv(a) == key_argv(b)
    text = " ".join(key_argv(a))
    for per_vm in ("0a1b2c3d", "40022", "8080", "52:54:0a", "-daemonize", ",file="):
        assert per_vm not in text
    assert "-netdev user,id=net0 " in text and "name=opt/lkctl/vm-hostname" in text


def test_vm_size_machine_and_kernel_command_line_change_the_key_argv() -> None:
    base = key_argv(_argv())
    assert key_argv(_argv(memory=768)) != base
    assert key_argv(_argv(cpus=2)) != base
    assert key_argv(_argv(cmdline_extra="quiet")) != base
    explicit = (*FILES[:2], ("hostname", Path("hostname")))
    assert key_argv(_argv(guest_files=explicit)) != base  # which files the guest was given is part of its state


def test_snapshot_argv_adds_the_identity_port_and_vmgenid_and_loads_a_quoted_file() -> None:
    argv = _argv()
    out = snapshot_argv(argv, incoming=Path("/cache/it's here/k.vmstate"))
    assert out[: len(argv) - 1] == argv[:-1]  # the VM's own argv first, unchanged
    assert out[-1] == "-daemonize" and out.count("-daemonize") == 1
    assert f"virtserialport,bus=lkser0.0,chardev=lkident,name={IDENTITY_PORT}" in out
    assert "vmgenid,guid=auto" in out
    incoming = out[out.index("-incoming") + 1]
    assert incoming == "exec:cat '/cache/it'\"'\"'s here/k.vmstate'"
    assert "-incoming" not in snapshot_argv(argv)


def test_template_argv_keeps_the_fw_cfg_files_and_drops_per_vm_parts() -> None:
    out = template_argv(_argv())
    assert "name=opt/lkctl/ssh/ssh_host_ed25519_key,file=ssh_host_ed25519_key" in out
    assert "-daemonize" not in out and "-incoming" not in out
    assert out[out.index("-name") + 1] == "lkctl-snapshot"
    assert out[out.index("-netdev") + 1] == "user,id=net0"
    assert "vmgenid,guid=auto" in out


def test_guest_file_entries_refuse_what_a_restore_cannot_deliver() -> None:
    assert guest_file_entries(_argv()) == [
        ("ssh/authorized_keys", "id_ed25519.pub"),
        ("ssh/ssh_host_ed25519_key", "ssh_host_ed25519_key"),
        ("vm-hostname", "vm-hostname"),
    ]
    with_volume = _argv(volumes=(Volume(Path("/src"), "/src"),))
    with pytest.raises(ConfigError, match="opt/lkctl/volumes"):
        guest_file_entries(with_volume)


def test_the_dropbear_format_host_key_goes_to_a_restored_vm_as_octal_bytes_after_the_openssh_key() -> None:
    dropbear = ["-fw_cfg", "name=opt/lkctl/ssh/dropbear_ed25519_host_key,file=dropbear_ed25519_host_key"]
    entries = guest_file_entries([*dropbear, *_argv()])
    assert ("ssh/dropbear_ed25519_host_key", "dropbear_ed25519_host_key") in entries
    key = bytes(range(70))  # binary: NUL, CR and LF bytes too, more than one `bytes` line
    files = [("ssh/dropbear_ed25519_host_key", key), ("ssh/ssh_host_ed25519_key", b"-----BEGIN\nK\n")]
    lines = identity_message(files, now=0, rng=b"").split(b"\n")
    # sent last whatever the argv order: the guest then writes it after the OpenSSH key (lkctl-sshd checks)
    assert lines.index(b"file ssh/dropbear_ed25519_host_key") > lines.index(b"line K")
    chunks = [line.removeprefix(b"bytes ") for line in lines if line.startswith(b"bytes ")]
    assert len(chunks) == 2 and all(len(c) <= 256 for c in chunks)
    octal = b"".join(chunks).decode()
    assert bytes(int(octal[i + 1 : i + 4], 8) for i in range(0, len(octal), 4)) == key


def test_identity_message_is_lines_the_guest_shell_reads_without_evaluating() -> None:
    files = [("vm-hostname", b"web\n"), ("env", b"A=1 2\nB=$(x) \\n\n"), ("ssh/authorized_keys", b"ssh-ed25519 K")]
    msg = identity_message(files, now=1700000000.6, rng=b"\x00\xff\x08")
    assert msg.split(b"\n") == [
        b"time 1700000000 400000",
        b"rng \\000\\377\\010",  # octal escapes for the guest's builtin printf
        b"file vm-hostname",
        b"line web",
        b"file env",
        b"line A=1 2",
        b"line B=$(x) \\n",
        b"file ssh/authorized_keys",
        b"line ssh-ed25519 K",  # the final newline is the agent's
        b"end",
        b"",
    ]
    with pytest.raises(ConfigError, match="not a file"):
        identity_message([("volumes", b"x")], now=0, rng=b"")
    with pytest.raises(ConfigError, match="must be text"):
        identity_message([("env", b"A=\r")], now=0, rng=b"")


def test_snapshot_key_changes_with_kernel_qemu_and_environment() -> None:
    argv = _argv()
    qemu = {"path": "/usr/bin/qemu-system-x86_64", "identity": [1, 2, 3], "version": "QEMU emulator version 7.2.0"}
    files = {"/img/m-kernel": [10, 20, 30], "/img/m-initrd": [11, 21, 31]}
    base = SnapshotKey.of(key_inputs(argv, files=files, qemu=qemu, env_digest=""))
    assert base == SnapshotKey.of(key_inputs(_argv("ffeeddcc", 1234), files=files, qemu=qemu, env_digest=""))
    rebuilt = {**files, "/img/m-initrd": [11, 22, 31]}
    upgraded = {**qemu, "version": "QEMU emulator version 8.0.0"}
    for other in (
        key_inputs(argv, files=rebuilt, qemu=qemu, env_digest=""),
        key_inputs(argv, files=files, qemu=upgraded, env_digest=""),
        key_inputs(argv, files=files, qemu=qemu, env_digest="ab12"),
        key_inputs(_argv(memory=2048), files=files, qemu=qemu, env_digest=""),
    ):
        assert SnapshotKey.of(other).digest != base.digest


@pytest.mark.parametrize(
    ("opts", "boot", "hypervisor", "why"),
    [
        (RunOptions(detach=False, snapshot=True), BOOT, "qemu", "add -d"),
        (RunOptions(detach=True, snapshot=True, host="auto"), BOOT, "qemu", "libvirt"),
        (RunOptions(detach=True, snapshot=True), BOOT, "hyperkit", "hyperkit"),
        (RunOptions(detach=True, snapshot=True), BootImage(ImageFormat.ISO, Path("/x.iso")), "qemu", "this is iso"),
        (RunOptions(detach=True, snapshot=True), DISK_ROOT, "qemu", "root disk"),
        (RunOptions(detach=True, snapshot=True, volumes=(Volume(Path("/s"), "/s"),)), BOOT, "qemu", "9p"),
        (RunOptions(detach=True, snapshot=True, data_disk=DataDisk(1 << 30)), BOOT, "qemu", "--disk"),
    ],
)
def test_snapshot_refuses_what_a_restored_vm_could_not_be(
    opts: RunOptions, boot: BootImage, hypervisor: str, why: str
) -> None:
    with pytest.raises(ConfigError, match="^--snapshot: .*" + why) as e:
        check_supported(boot, opts, hypervisor)
    assert "\n" not in e.value.message


def test_snapshot_refuses_an_image_built_with_the_vms_own_keys() -> None:
    with pytest.raises(ConfigError, match=r"^--snapshot: .*own keys"):
        check_supported(BOOT, RunOptions(detach=True, snapshot=True), "qemu", keys_from=Path("/staging/keys"))


def test_snapshot_allows_a_plain_detached_kernel_initrd_vm() -> None:
    check_supported(BOOT, RunOptions(detach=True, snapshot=True, ports=(PortForward(8080, 80),)), "qemu")


@pytest.mark.parametrize(
    ("now", "line"),
    [
        (1700000000.25, b"time 1700000000 750000"),  # set 1700000000 now, 1700000001 in 0.75 s
        (1700000000.9999996, b"time 1700000000 1"),  # never 0: the step is always to the next second
        (1700000000.0, b"time 1700000000 1000000"),
        (1700000000.1234567, b"time 1700000000 876543"),
    ],
)
def test_clock_line_rounds_down_and_says_when_the_next_whole_second_comes(now: float, line: bytes) -> None:
    assert clock_line(now) == line
    seconds, usec = (int(x) for x in line.split()[1:])
    assert seconds <= now < seconds + 1 and abs(seconds + 1 - usec / 1e6 - now) < 1e-6

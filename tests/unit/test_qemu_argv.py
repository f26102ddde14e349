from pathlib import Path

import pytest

from lkctl.errors import ConfigError
from lkctl.runtime.host import Accel, HostCaps
from lkctl.runtime.qemu import BootImage, ImageFormat, PortForward, VmSpec, parse_port, qemu_argv

LINUX_TCG = HostCaps(os="linux", arch="x86_64", accel=Accel.TCG, qemu="/usr/bin/qemu-system-x86_64")
LINUX_KVM = HostCaps(os="linux", arch="x86_64", accel=Accel.KVM, qemu="/usr/bin/qemu-system-x86_64")
MAC_ARM = HostCaps(os="darwin", arch="aarch64", accel=Accel.HVF, qemu="/opt/homebrew/bin/qemu-system-aarch64")

KI = BootImage(
    ImageFormat.KERNEL_INITRD,
    Path("/img/minimal"),
    kernel=Path("/img/minimal-kernel"),
    initrd=Path("/img/minimal-initrd.img"),
    cmdline="console=ttyS0 quiet",
)


def spec(**kw: object) -> VmSpec:
    base: dict[str, object] = {"vm_id": "0a1b2c3d", "boot": KI, "ssh_port": 40022, "mac": "52:54:0a:1b:2c:3d"}
    base.update(kw)
    return VmSpec(**base)  # type: ignore[arg-type]


def test_kernel_initrd_golden_argv_under_tcg() -> None:
    assert qemu_argv(spec(), LINUX_TCG) == [
        "/usr/bin/qemu-system-x86_64",
        "-name", "lkctl-0a1b2c3d,process=lkctl-0a1b2c3d",
        "-machine", "q35,accel=tcg", "-cpu", "max",
        "-smp", "1", "-m", "1024",
        "-nodefaults", "-no-user-config", "-display", "none",
        "-pidfile", "qemu.pid",
        "-qmp", "unix:qmp.sock,server=on,wait=off",
        "-chardev", "file,id=console0,path=console.log",
        "-serial", "chardev:console0",
        "-object", "rng-random,id=rng0,filename=/dev/urandom",
        "-device", "virtio-rng-pci,rng=rng0",
        "-netdev", "user,id=net0,hostfwd=tcp:127.0.0.1:40022-:22",
        "-device", "virtio-net-pci,netdev=net0,mac=52:54:0a:1b:2c:3d",
        "-kernel", "/img/minimal-kernel",
        "-initrd", "/img/minimal-initrd.img",
        "-append", "console=ttyS0 quiet",
        "-daemonize",
    ]  # fmt: skip


def test_kvm_uses_host_cpu_and_resources_are_passed() -> None:
    argv = qemu_argv(spec(memory=2048, cpus=4), LINUX_KVM)
    assert argv[argv.index("-machine") + 1] == "q35,accel=kvm"
    assert argv[argv.index("-cpu") + 1] == "host"
    assert argv[argv.index("-smp") + 1] == "4"
    assert argv[argv.index("-m") + 1] == "2048"


def test_every_forward_binds_loopback_unless_an_address_is_given() -> None:
    ports = (PortForward(8080, 80), PortForward(5353, 53, proto="udp"), PortForward(9000, 90, host_ip="0.0.0.0"))
    argv = qemu_argv(spec(ports=ports), LINUX_TCG)
    assert argv[argv.index("-netdev") + 1] == (
        "user,id=net0,hostfwd=tcp:127.0.0.1:40022-:22,hostfwd=tcp:127.0.0.1:8080-:80,"
        "hostfwd=udp:127.0.0.1:5353-:53,hostfwd=tcp:0.0.0.0:9000-:90"
    )


def test_guest_files_go_through_fw_cfg_and_commas_are_escaped() -> None:
    argv = qemu_argv(spec(guest_files=(("ssh/authorized_keys", Path("/a,b/key.pub")),)), LINUX_TCG)
    assert argv[argv.index("-fw_cfg") + 1] == "name=opt/lkctl/ssh/authorized_keys,file=/a,,b/key.pub"


def test_console_is_added_when_the_image_cmdline_has_none() -> None:
    boot = BootImage(ImageFormat.KERNEL_INITRD, Path("/i/x"), kernel=Path("/k"), initrd=Path("/i"), cmdline="quiet")
    argv = qemu_argv(spec(boot=boot, cmdline_extra="lkctl.debug"), LINUX_TCG)
    assert argv[argv.index("-append") + 1] == "quiet console=ttyS0 lkctl.debug"


def test_foreground_does_not_daemonize() -> None:
    assert "-daemonize" not in qemu_argv(spec(daemonize=False), LINUX_TCG)


def test_apple_silicon_uses_virt_highmem_off_hvf_and_ttyama0() -> None:
    boot = BootImage(ImageFormat.KERNEL_INITRD, Path("/i/x"), kernel=Path("/k"), initrd=Path("/i"), cmdline="")
    argv = qemu_argv(spec(boot=boot), MAC_ARM)
    assert argv[argv.index("-machine") + 1] == "virt,highmem=off,accel=hvf"
    assert argv[argv.index("-cpu") + 1] == "host"
    assert argv[argv.index("-append") + 1] == "console=ttyAMA0"


def test_no_ssh_forward_when_ssh_port_is_zero() -> None:
    argv = qemu_argv(spec(ssh_port=0), LINUX_TCG)
    assert argv[argv.index("-netdev") + 1] == "user,id=net0"


@pytest.mark.parametrize("fmt", [ImageFormat.ISO, ImageFormat.QCOW2, ImageFormat.RAW, ImageFormat.VMDK])
def test_disk_formats_are_refused_clearly_until_supported(fmt: ImageFormat) -> None:
    with pytest.raises(ConfigError, match="not supported yet"):
        qemu_argv(spec(boot=BootImage(fmt, Path("/i/disk"))), LINUX_TCG)


def test_too_little_memory_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="too small"):
        qemu_argv(spec(memory=16), LINUX_TCG)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("8080:80", PortForward(8080, 80)),
        ("127.0.0.1:8080:80", PortForward(8080, 80)),
        ("0.0.0.0:8080:80/tcp", PortForward(8080, 80, host_ip="0.0.0.0")),
        ("5353:53/udp", PortForward(5353, 53, proto="udp")),
    ],
)
def test_parse_port(text: str, expected: PortForward) -> None:
    assert parse_port(text) == expected


@pytest.mark.parametrize("text", ["8080", "a:b", "1:2:3:4", "70000:80", "80:80/sctp", "0:22"])
def test_parse_port_rejects_bad_specs(text: str) -> None:
    with pytest.raises(ConfigError, match="--port"):
        parse_port(text)

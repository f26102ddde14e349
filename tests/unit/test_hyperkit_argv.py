from pathlib import Path

import pytest

from lkctl.errors import ConfigError
from lkctl.runtime.host import Accel, HostCaps
from lkctl.runtime.hyperkit import (
    Hypervisor,
    choose_hypervisor,
    hyperkit_argv,
    hypervisor_argv,
    read_console_ring,
)
from lkctl.runtime.qemu import BootImage, DataDisk, ImageFormat, Network, UefiFirmware, VmSpec, Volume, qemu_argv

MAC_INTEL = HostCaps(os="darwin", arch="x86_64", accel=Accel.HVF, qemu="/usr/local/bin/qemu-system-x86_64")
MAC_ARM = HostCaps(os="darwin", arch="aarch64", accel=Accel.HVF, qemu="/opt/homebrew/bin/qemu-system-aarch64")
LINUX = HostCaps(os="linux", arch="x86_64", accel=Accel.KVM, qemu="/usr/bin/qemu-system-x86_64")
VPNKIT = Path("/Users/me/Library/Containers/com.docker.docker/Data/vpnkit.eth.sock")
BOOTROM = UefiFirmware(Path("/Applications/Docker.app/Contents/Resources/uefi/UEFI.fd"))
UUID = "fc9acd0c-ca5f-504f-a000-271ef4ccedb5"  # uuid5 of the VM id: stable, so vpnkit keeps the guest's MAC

KI = BootImage(
    ImageFormat.KERNEL_INITRD,
    Path("/img/minimal"),
    kernel=Path("/img/minimal-kernel"),
    initrd=Path("/img/minimal-initrd.img"),
    cmdline="quiet",
)
COMMON_HEAD = [
    "hyperkit", "-A", "-u", "-F", "qemu.pid", "-c", "1", "-m", "1024M", "-U", UUID,
    "-s", "0:0,hostbridge", "-s", "31,lpc",
    "-s", f"1:0,virtio-vpnkit,path={VPNKIT},uuid={UUID}",
]  # fmt: skip
COMMON_TAIL = [
    "-s", "4,virtio-sock,guest_cid=3,path=.",
    "-s", "5,virtio-rnd",
]  # fmt: skip
CONSOLE = ["-l", "com1,autopty=tty,log=console-ring"]


def spec(**kw: object) -> VmSpec:
    base: dict[str, object] = {"vm_id": "0a1b2c3d", "boot": KI, "ssh_port": 40022, "vpnkit_socket": VPNKIT}
    base.update(kw)
    return VmSpec(**base)  # type: ignore[arg-type]


def test_kernel_initrd_golden_argv_boots_through_kexec() -> None:
    assert hyperkit_argv(spec(), MAC_INTEL) == [
        *COMMON_HEAD, *COMMON_TAIL, *CONSOLE,
        "-f", "kexec,/img/minimal-kernel,/img/minimal-initrd.img,earlyprintk=serial console=ttyS0 quiet",
    ]  # fmt: skip


def test_each_vm_gets_its_own_stable_uuid() -> None:
    assert hyperkit_argv(spec(), MAC_INTEL)[10] == UUID
    assert hyperkit_argv(spec(vm_id="ffffffff"), MAC_INTEL)[10] != UUID


def test_guest_files_ride_on_an_ahci_cd_since_hyperkit_has_no_fw_cfg() -> None:
    argv = hyperkit_argv(spec(guest_files=(("ssh/authorized_keys", Path("id_ed25519.pub")),)), MAC_INTEL)
    assert argv[-6:-4] == ["-s", "6,ahci-cd,guest-files.iso"]


def test_iso_golden_argv_boots_through_the_uefi_bootrom() -> None:
    iso = BootImage(ImageFormat.ISO, Path("/Users/me/linuxkit-efi.iso"), uefi=True)
    assert hyperkit_argv(spec(boot=iso, firmware=BOOTROM, cpus=2, memory=2048), MAC_INTEL) == [
        "hyperkit", "-A", "-u", "-F", "qemu.pid", "-c", "2", "-m", "2048M", "-U", UUID,
        *COMMON_HEAD[11:],
        "-s", "2:0,ahci-cd,/Users/me/linuxkit-efi.iso",
        *COMMON_TAIL, *CONSOLE,
        "-f", "bootrom,/Applications/Docker.app/Contents/Resources/uefi/UEFI.fd,,",
    ]  # fmt: skip


def test_raw_disk_boots_the_per_vm_clone_never_the_image() -> None:
    disk = BootImage(ImageFormat.RAW, Path("/Users/me/linuxkit-efi.img"), uefi=True)
    argv = hyperkit_argv(spec(boot=disk, firmware=BOOTROM), MAC_INTEL)
    assert argv[len(COMMON_HEAD) : len(COMMON_HEAD) + 2] == ["-s", "2:0,virtio-blk,boot.img"]
    assert not any("linuxkit-efi.img" in a for a in argv)
    assert argv[-2:] == ["-f", "bootrom,/Applications/Docker.app/Contents/Resources/uefi/UEFI.fd,,"]


def test_iso_and_disk_without_a_bootrom_say_what_firmware_is_needed() -> None:
    with pytest.raises(ConfigError, match="UEFI boot ROM"):
        hyperkit_argv(spec(boot=BootImage(ImageFormat.ISO, Path("/i/x.iso"))), MAC_INTEL)


@pytest.mark.parametrize("fmt", [ImageFormat.QCOW2, ImageFormat.VMDK])
def test_qcow2_and_vmdk_are_refused_with_the_conversion_to_run(fmt: ImageFormat) -> None:
    boot = BootImage(fmt, Path(f"/i/lk.{fmt}"))
    with pytest.raises(ConfigError, match=rf"qemu-img convert -O raw /i/lk.{fmt} /i/lk.img"):
        hyperkit_argv(spec(boot=boot, firmware=BOOTROM), MAC_INTEL)


def test_kernel_squashfs_is_a_read_only_virtio_disk_with_root_vda() -> None:
    boot = BootImage(
        ImageFormat.KERNEL_SQUASHFS, Path("/i/lk"), kernel=Path("/i/lk-kernel"), squashfs=Path("/i/lk-squashfs.img")
    )
    argv = hyperkit_argv(spec(boot=boot), MAC_INTEL)
    assert argv[len(COMMON_HEAD) : len(COMMON_HEAD) + 2] == ["-s", "2:0,virtio-blk,/i/lk-squashfs.img,ro"]
    assert argv[-2:] == ["-f", "kexec,/i/lk-kernel,,earlyprintk=serial console=ttyS0 root=/dev/vda"]


def test_raw_data_disk_gets_its_own_slot_and_qcow2_is_refused() -> None:
    argv = hyperkit_argv(spec(data_disk=DataDisk(1 << 30, "raw")), MAC_INTEL)
    assert argv[len(COMMON_HEAD) : len(COMMON_HEAD) + 2] == ["-s", "3:0,virtio-blk,data.img"]
    with pytest.raises(ConfigError, match="format=raw"):
        hyperkit_argv(spec(data_disk=DataDisk(1 << 30)), MAC_INTEL)


def test_without_vpnkit_user_networking_is_refused_and_says_why() -> None:
    with pytest.raises(ConfigError, match="needs vpnkit"):
        hyperkit_argv(spec(vpnkit_socket=None), MAC_INTEL)


def test_vmnet_uses_virtio_net_and_cannot_forward_ports() -> None:
    argv = hyperkit_argv(spec(network=Network.VMNET, ssh_port=0, vpnkit_socket=None), MAC_INTEL)
    assert argv[15:17] == ["-s", "1:0,virtio-net"]
    with pytest.raises(ConfigError, match="need vpnkit"):
        hyperkit_argv(spec(network=Network.VMNET), MAC_INTEL)


def test_network_none_has_no_nic() -> None:
    argv = hyperkit_argv(spec(network=Network.NONE, ssh_port=0), MAC_INTEL)
    assert not any("virtio-net" in a or "vpnkit" in a for a in argv)


@pytest.mark.parametrize("host", [LINUX, MAC_ARM])
def test_hyperkit_requires_an_intel_mac(host: HostCaps) -> None:
    with pytest.raises(ConfigError, match="hyperkit requires macOS on Intel"):
        hyperkit_argv(spec(), host)


def test_volumes_need_qemu() -> None:
    with pytest.raises(ConfigError, match="--hypervisor qemu"):
        hyperkit_argv(spec(volumes=(Volume(Path("/src"), "/src"),)), MAC_INTEL)


def test_paths_with_commas_are_refused_since_hyperkit_cannot_escape_them() -> None:
    boot = BootImage(ImageFormat.KERNEL_INITRD, Path("/i/x"), kernel=Path("/i/a,b-kernel"), initrd=Path("/i/r"))
    with pytest.raises(ConfigError, match="comma"):
        hyperkit_argv(spec(boot=boot), MAC_INTEL)


def test_commas_in_the_cmdline_are_kept_since_hyperkit_takes_the_rest_of_the_option() -> None:
    boot = BootImage(ImageFormat.KERNEL_INITRD, Path("/i/x"), kernel=Path("/k"), initrd=Path("/r"),
                     cmdline="console=ttyS0 a=1,2")  # fmt: skip
    assert hyperkit_argv(spec(boot=boot), MAC_INTEL)[-1] == "kexec,/k,/r,console=ttyS0 a=1,2"


def test_hypervisor_argv_dispatches() -> None:
    s = spec()
    assert hypervisor_argv(s, MAC_INTEL, "hyperkit", hyperkit="/usr/local/bin/hyperkit")[0] == "/usr/local/bin/hyperkit"
    assert hypervisor_argv(s, MAC_INTEL, "qemu") == qemu_argv(s, MAC_INTEL)
    with pytest.raises(ConfigError, match="unknown hypervisor"):
        hypervisor_argv(s, MAC_INTEL, "xhyve")


@pytest.mark.parametrize(
    ("requested", "os", "arch", "qemu", "hyperkit", "expected"),
    [
        ("auto", "linux", "x86_64", True, False, Hypervisor.QEMU),
        ("auto", "darwin", "x86_64", True, True, Hypervisor.QEMU),  # QEMU wins where both exist
        ("auto", "darwin", "x86_64", False, True, Hypervisor.HYPERKIT),
        ("hyperkit", "darwin", "x86_64", True, True, Hypervisor.HYPERKIT),
        ("qemu", "darwin", "aarch64", True, False, Hypervisor.QEMU),
    ],
)
def test_choose_hypervisor(requested: str, os: str, arch: str, qemu: bool, hyperkit: bool, expected: str) -> None:
    assert choose_hypervisor(requested, os, arch, have_qemu=qemu, have_hyperkit=hyperkit) == expected


@pytest.mark.parametrize(
    ("requested", "os", "arch", "qemu", "hyperkit", "message"),
    [
        ("hyperkit", "linux", "x86_64", True, False, "hyperkit requires macOS on Intel"),
        ("hyperkit", "darwin", "aarch64", True, True, "hyperkit requires macOS on Intel"),
        ("hyperkit", "darwin", "x86_64", True, False, "brew install hyperkit"),
        ("qemu", "linux", "x86_64", False, False, "apt-get install qemu-system-x86"),
        ("auto", "darwin", "aarch64", False, True, "brew install qemu"),
        ("firecracker", "linux", "x86_64", True, False, "unknown hypervisor"),
    ],
)
def test_choose_hypervisor_errors(requested: str, os: str, arch: str, qemu: bool, hyperkit: bool, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        choose_hypervisor(requested, os, arch, have_qemu=qemu, have_hyperkit=hyperkit)


def test_console_ring_reads_what_was_written_without_the_unwritten_zeros(tmp_path: Path) -> None:
    ring = tmp_path / "console-ring"
    ring.write_bytes(b"Linux version 6.1\nlkctl-init: ready\n".ljust(65536, b"\0"))
    assert read_console_ring(ring) == b"Linux version 6.1\nlkctl-init: ready\n"
    assert read_console_ring(tmp_path / "missing") == b""

"""hyperkit argv golden tests: each expected argv is written by hand from what LinuxKit builds for the same inputs.

Sources (read, not copied): linuxkit/linuxkit@3bf33c3a11fc20b459195294a7d8980cbca4195b
src/cmd/linuxkit/run_hyperkit.go (`linuxkit run hyperkit`), and the moby/hyperkit Go bindings it vendors
(go.mod: github.com/moby/hyperkit v0.0.0-20180416161519-d65b09c1c28a), src/cmd/linuxkit/vendor/github.com/moby/
hyperkit/go/hyperkit.go `buildArgs` and disk.go `diskDriver`/`AsArgument`; the legacy console arguments are unchanged
in moby/hyperkit@3cb0d5475244761c61e6fd4a562702c26b46f846 go/hyperkit.go `legacyConsoleArgs`.

Every LinuxKit invocation below runs with `--state .` (hyperkit runs in the VM's state dir) and `--console-file`
(lkctl always detaches). lkctl's deliberate differences are applied by `lkctl_from_linuxkit` and nowhere else: the
pidfile name (lkctl's state layout reads qemu.pid) and the read-only squashfs root. NEVER RUN on a Mac here.
"""

import uuid
from pathlib import Path

import pytest

from lkctl.errors import ConfigError
from lkctl.runtime.host import Accel, HostCaps
from lkctl.runtime.hyperkit import (
    GUEST_FILES_ISO,
    Hypervisor,
    choose_hypervisor,
    console_file,
    hyperkit_argv,
    read_console,
    read_console_ring,
    vm_uuid,
)
from lkctl.runtime.model import BootImage, DataDisk, ImageFormat, Network, UefiFirmware, VmSpec, Volume
from lkctl.runtime.vpnkit import vpnkit_uuid

MAC_INTEL = HostCaps(os="darwin", arch="x86_64", accel=Accel.HVF, qemu="")
MAC_ARM = HostCaps(os="darwin", arch="aarch64", accel=Accel.HVF, qemu="/opt/homebrew/bin/qemu-system-aarch64")
LINUX = HostCaps(os="linux", arch="x86_64", accel=Accel.KVM, qemu="/usr/bin/qemu-system-x86_64")
DOCKER_VPNKIT = Path("/Users/me/Library/Containers/com.docker.docker/Data/vpnkit.eth.sock")
BOOTROM = UefiFirmware(Path("/Applications/Docker.app/Contents/Resources/uefi/UEFI.fd"))
VM_ID = "0a1b2c3d"
VM_UUID = vm_uuid(VM_ID)  # LinuxKit: a random uuid.New() per run; lkctl: derived from the VM id
VPNKIT_UUID = vpnkit_uuid(VM_ID)  # LinuxKit: --vpnkit-uuid (else a random one kept in <state>/vpnkit.uuid)

KI = BootImage(
    ImageFormat.KERNEL_INITRD,
    Path("/img/minimal"),
    kernel=Path("/img/minimal-kernel"),
    initrd=Path("/img/minimal-initrd.img"),
    cmdline="console=ttyS0 quiet",  # LinuxKit reads it from /img/minimal-cmdline
)


def spec(**kw: object) -> VmSpec:
    base: dict[str, object] = {"vm_id": VM_ID, "boot": KI, "ssh_port": 40022}
    base.update(kw)
    return VmSpec(**base)  # type: ignore[arg-type]


def lkctl_from_linuxkit(argv: list[str]) -> list[str]:
    """LinuxKit's argv with lkctl's deliberate differences (see the module docstring)."""
    out = ["qemu.pid" if a == "hyperkit.pid" else a for a in argv]
    return [a + ",ro" if a.endswith("-squashfs.img") and "virtio-blk" in a else a for a in out]


# `linuxkit run hyperkit --state . --console-file --networking vpnkit --vpnkit-uuid VPNKIT_UUID
#  --ip 192.168.65.3 ...`: vpnkit mode without socket paths starts a vpnkit in the state dir
# (vpnkit_eth.sock, vpnkit_port.sock), adds the 9P `port` socket and vsock guest forward 62373.
OWN_VPNKIT_NIC = f"1:0,virtio-vpnkit,path=vpnkit_eth.sock,uuid={VPNKIT_UUID},preferred_ipv4=192.168.65.3"


def test_kernel_initrd_matches_linuxkit_run_hyperkit_with_its_own_vpnkit() -> None:
    # linuxkit run hyperkit --state . --console-file --networking vpnkit --vpnkit-uuid U --ip 192.168.65.3
    #   --cpus 1 --mem 1024 /img/minimal
    linuxkit = [
        "hyperkit", "-A", "-u", "-F", "hyperkit.pid", "-c", "1", "-m", "1024M",
        "-s", "0:0,hostbridge", "-s", "31,lpc",
        "-s", OWN_VPNKIT_NIC,
        "-U", VM_UUID,
        "-s", "2,virtio-sock,guest_cid=3,path=.,guest_forwards=62373",
        "-s", "3,virtio-rnd",
        "-s", "4,virtio-9p,path=vpnkit_port.sock,tag=port",
        "-l", "com1,autopty=./tty,log=./console-ring",
        "-f", "kexec,/img/minimal-kernel,/img/minimal-initrd.img,earlyprintk=serial console=ttyS0 quiet",
    ]  # fmt: skip
    assert hyperkit_argv(spec(), MAC_INTEL) == lkctl_from_linuxkit(linuxkit)


def test_guest_files_iso_takes_the_slot_of_linuxkits_metadata_iso() -> None:
    # ... --data-file keys /img/minimal: CreateMetadataISO adds ./data.iso as an ahci-cd after virtio-sock
    linuxkit = [
        "hyperkit", "-A", "-u", "-F", "hyperkit.pid", "-c", "2", "-m", "2048M",
        "-s", "0:0,hostbridge", "-s", "31,lpc",
        "-s", OWN_VPNKIT_NIC,
        "-U", VM_UUID,
        "-s", "2,virtio-sock,guest_cid=3,path=.,guest_forwards=62373",
        "-s", "3,ahci-cd,data.iso",
        "-s", "4,virtio-rnd",
        "-s", "5,virtio-9p,path=vpnkit_port.sock,tag=port",
        "-l", "com1,autopty=./tty,log=./console-ring",
        "-f", "kexec,/img/minimal-kernel,/img/minimal-initrd.img,earlyprintk=serial console=ttyS0 quiet",
    ]  # fmt: skip
    files = (("ssh/authorized_keys", Path("id_ed25519.pub")),)
    expected = [GUEST_FILES_ISO.join(a.rsplit("data.iso", 1)) for a in lkctl_from_linuxkit(linuxkit)]
    assert hyperkit_argv(spec(guest_files=files, cpus=2, memory=2048), MAC_INTEL) == expected


def test_uefi_iso_matches_linuxkit_iso_boot_through_the_bootrom() -> None:
    # linuxkit run hyperkit --state . --console-file --networking vpnkit --vpnkit-uuid U --ip 192.168.65.3
    #   --iso --uefi --fw /Applications/Docker.app/Contents/Resources/uefi/UEFI.fd /Users/me/linuxkit-efi.iso
    linuxkit = [
        "hyperkit", "-A", "-u", "-F", "hyperkit.pid", "-c", "1", "-m", "1024M",
        "-s", "0:0,hostbridge", "-s", "31,lpc",
        "-s", OWN_VPNKIT_NIC,
        "-U", VM_UUID,
        "-s", "2,virtio-sock,guest_cid=3,path=.,guest_forwards=62373",
        "-s", "3,ahci-cd,/Users/me/linuxkit-efi.iso",
        "-s", "4,virtio-rnd",
        "-s", "5,virtio-9p,path=vpnkit_port.sock,tag=port",
        "-l", "com1,autopty=./tty,log=./console-ring",
        "-f", "bootrom,/Applications/Docker.app/Contents/Resources/uefi/UEFI.fd,,",
    ]  # fmt: skip
    iso = BootImage(ImageFormat.ISO, Path("/Users/me/linuxkit-efi.iso"), uefi=True)
    assert hyperkit_argv(spec(boot=iso, firmware=BOOTROM), MAC_INTEL) == lkctl_from_linuxkit(linuxkit)


def test_kernel_squashfs_matches_linuxkit_with_a_read_only_root() -> None:
    # linuxkit run hyperkit --state . --console-file --networking vpnkit --vpnkit-uuid U --ip 192.168.65.3
    #   --squashfs /i/lk   (RawDisk{Trim: false} -> virtio-blk; cmdline + " root=/dev/vda"; no initrd)
    linuxkit = [
        "hyperkit", "-A", "-u", "-F", "hyperkit.pid", "-c", "1", "-m", "1024M",
        "-s", "0:0,hostbridge", "-s", "31,lpc",
        "-s", OWN_VPNKIT_NIC,
        "-U", VM_UUID,
        "-s", "2:0,virtio-blk,/i/lk-squashfs.img",
        "-s", "3,virtio-sock,guest_cid=3,path=.,guest_forwards=62373",
        "-s", "4,virtio-rnd",
        "-s", "5,virtio-9p,path=vpnkit_port.sock,tag=port",
        "-l", "com1,autopty=./tty,log=./console-ring",
        "-f", "kexec,/i/lk-kernel,,earlyprintk=serial console=ttyS0 root=/dev/vda",
    ]  # fmt: skip
    boot = BootImage(ImageFormat.KERNEL_SQUASHFS, Path("/i/lk"), kernel=Path("/i/lk-kernel"),
                     squashfs=Path("/i/lk-squashfs.img"), cmdline="console=ttyS0")  # fmt: skip
    argv = hyperkit_argv(spec(boot=boot), MAC_INTEL)
    assert argv == lkctl_from_linuxkit(linuxkit)
    assert "2:0,virtio-blk,/i/lk-squashfs.img,ro" in argv


def test_raw_data_disk_is_an_ahci_disk_after_the_boot_disks_as_in_linuxkit() -> None:
    # ... --squashfs --disk file=data.img,size=1G /i/lk: NewDisk("data.img") is a RawDisk{Trim: true} -> ahci-hd
    boot = BootImage(ImageFormat.KERNEL_SQUASHFS, Path("/i/lk"), kernel=Path("/i/lk-kernel"),
                     squashfs=Path("/i/lk-squashfs.img"), cmdline="console=ttyS0")  # fmt: skip
    argv = hyperkit_argv(spec(boot=boot, data_disk=DataDisk(1 << 30, "raw")), MAC_INTEL)
    i = argv.index("-U") + 2
    assert argv[i : i + 6] == [
        "-s", "2:0,virtio-blk,/i/lk-squashfs.img,ro",
        "-s", "3:0,ahci-hd,data.img",
        "-s", "4,virtio-sock,guest_cid=3,path=.,guest_forwards=62373",
    ]  # fmt: skip
    with pytest.raises(ConfigError, match="format=raw"):
        hyperkit_argv(spec(data_disk=DataDisk(1 << 30)), MAC_INTEL)


def test_vmnet_matches_linuxkit_and_has_no_vpnkit_devices() -> None:
    # linuxkit run hyperkit --state . --console-file --networking vmnet /img/minimal
    linuxkit = [
        "hyperkit", "-A", "-u", "-F", "hyperkit.pid", "-c", "1", "-m", "1024M",
        "-s", "0:0,hostbridge", "-s", "31,lpc",
        "-s", "1:0,virtio-net",
        "-U", VM_UUID,
        "-s", "2,virtio-sock,guest_cid=3,path=.",
        "-s", "3,virtio-rnd",
        "-l", "com1,autopty=./tty,log=./console-ring",
        "-f", "kexec,/img/minimal-kernel,/img/minimal-initrd.img,earlyprintk=serial console=ttyS0 quiet",
    ]  # fmt: skip
    argv = hyperkit_argv(spec(network=Network.VMNET, ssh_port=0), MAC_INTEL)
    assert argv == lkctl_from_linuxkit(linuxkit)
    with pytest.raises(ConfigError, match="need vpnkit"):
        hyperkit_argv(spec(network=Network.VMNET), MAC_INTEL)


def test_network_none_matches_linuxkit_and_refuses_port_forwards() -> None:
    # linuxkit run hyperkit --state . --console-file --networking none /img/minimal
    linuxkit = [
        "hyperkit", "-A", "-u", "-F", "hyperkit.pid", "-c", "1", "-m", "1024M",
        "-s", "0:0,hostbridge", "-s", "31,lpc",
        "-U", VM_UUID,
        "-s", "1,virtio-sock,guest_cid=3,path=.",
        "-s", "2,virtio-rnd",
        "-l", "com1,autopty=./tty,log=./console-ring",
        "-f", "kexec,/img/minimal-kernel,/img/minimal-initrd.img,earlyprintk=serial console=ttyS0 quiet",
    ]  # fmt: skip
    assert hyperkit_argv(spec(network=Network.NONE, ssh_port=0), MAC_INTEL) == lkctl_from_linuxkit(linuxkit)
    with pytest.raises(ConfigError, match="without a network cannot have port forwards"):
        hyperkit_argv(spec(network=Network.NONE), MAC_INTEL)


def test_an_existing_vpnkit_without_its_port_socket_cannot_carry_ssh() -> None:
    argv = hyperkit_argv(spec(vpnkit_socket=DOCKER_VPNKIT, ssh_port=0), MAC_INTEL)
    assert argv[argv.index("31,lpc") + 2] == f"1:0,virtio-vpnkit,path={DOCKER_VPNKIT},uuid={VPNKIT_UUID}"
    assert not any("virtio-9p" in a or "guest_forwards" in a for a in argv)
    with pytest.raises(ConfigError, match="without its port socket"):
        hyperkit_argv(spec(vpnkit_socket=DOCKER_VPNKIT), MAC_INTEL)


def test_each_vm_gets_its_own_stable_uuids() -> None:
    assert vm_uuid(VM_ID) == vm_uuid(VM_ID) != vm_uuid("ffffffff")
    assert vpnkit_uuid(VM_ID) != vm_uuid(VM_ID)
    assert str(uuid.UUID(VM_UUID)) == VM_UUID


def test_cmdline_gets_a_serial_console_when_the_image_names_none_and_the_extras_last() -> None:
    boot = BootImage(ImageFormat.KERNEL_INITRD, Path("/i/x"), kernel=Path("/k"), initrd=Path("/r"), cmdline="quiet")
    argv = hyperkit_argv(spec(boot=boot, cmdline_extra="lkctl.debug"), MAC_INTEL)
    assert argv[-1] == "kexec,/k,/r,earlyprintk=serial quiet console=ttyS0 lkctl.debug"


def test_raw_disk_boots_the_per_vm_clone_never_the_image() -> None:
    disk = BootImage(ImageFormat.RAW, Path("/Users/me/linuxkit-efi.img"), uefi=True)
    argv = hyperkit_argv(spec(boot=disk, firmware=BOOTROM), MAC_INTEL)
    assert argv[argv.index("-U") + 2 : argv.index("-U") + 4] == ["-s", "2:0,virtio-blk,boot.img"]
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
    assert hyperkit_argv(spec(boot=boot), MAC_INTEL)[-1] == "kexec,/k,/r,earlyprintk=serial console=ttyS0 a=1,2"


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


def test_a_wrapped_console_ring_keeps_all_its_bytes(tmp_path: Path) -> None:
    ring = tmp_path / "console-ring"
    ring.write_bytes(b"new output" + b"x" * (65536 - 20) + b"old output")  # hyperkit wrapped: no NUL left
    assert read_console_ring(ring) == ring.read_bytes()


def test_console_file_is_the_ring_when_hyperkit_made_one_else_qemus_log(tmp_path: Path) -> None:
    assert console_file(tmp_path) == tmp_path / "console.log"
    assert read_console(tmp_path) == b""
    (tmp_path / "console.log").write_bytes(b"qemu says")
    assert read_console(tmp_path) == b"qemu says"
    (tmp_path / "console-ring").write_bytes(b"hyperkit says".ljust(65536, b"\0"))
    assert console_file(tmp_path) == tmp_path / "console-ring"
    assert read_console(tmp_path) == b"hyperkit says"

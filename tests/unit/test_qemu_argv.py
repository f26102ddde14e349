from pathlib import Path

import pytest

from lkctl.errors import ConfigError
from lkctl.runtime.host import Accel, HostCaps
from lkctl.runtime.model import (
    BootImage,
    DataDisk,
    ImageFormat,
    Network,
    PortForward,
    UefiFirmware,
    VmSpec,
    Volume,
    needs_uefi,
    parse_port,
    parse_volume,
    volume_mounts,
    volumes_manifest,
)
from lkctl.runtime.qemu import qemu_argv

LINUX_TCG = HostCaps(os="linux", arch="x86_64", accel=Accel.TCG, qemu="/usr/bin/qemu-system-x86_64")
LINUX_KVM = HostCaps(os="linux", arch="x86_64", accel=Accel.KVM, qemu="/usr/bin/qemu-system-x86_64")
MAC_INTEL = HostCaps(os="darwin", arch="x86_64", accel=Accel.HVF, qemu="/usr/local/bin/qemu-system-x86_64")
MAC_ARM = HostCaps(os="darwin", arch="aarch64", accel=Accel.HVF, qemu="/opt/homebrew/bin/qemu-system-aarch64")
ARM_TCG = HostCaps(os="linux", arch="aarch64", accel=Accel.TCG, qemu="/usr/bin/qemu-system-aarch64")
ARM_KVM = HostCaps(os="linux", arch="aarch64", accel=Accel.KVM, qemu="/usr/bin/qemu-system-aarch64")

OVMF = UefiFirmware(Path("/usr/share/OVMF/OVMF_CODE_4M.fd"), Path("/usr/share/OVMF/OVMF_VARS_4M.fd"))
AAVMF = UefiFirmware(Path("/usr/share/AAVMF/AAVMF_CODE.fd"), Path("/usr/share/AAVMF/AAVMF_VARS.fd"))
BREW_X86 = UefiFirmware(
    Path("/usr/local/share/qemu/edk2-x86_64-code.fd"), Path("/usr/local/share/qemu/edk2-i386-vars.fd")
)
BREW_ARM = UefiFirmware(
    Path("/opt/homebrew/share/qemu/edk2-aarch64-code.fd"), Path("/opt/homebrew/share/qemu/edk2-arm-vars.fd")
)

KI = BootImage(
    ImageFormat.KERNEL_INITRD,
    Path("/img/minimal"),
    kernel=Path("/img/minimal-kernel"),
    initrd=Path("/img/minimal-initrd.img"),
    cmdline="console=ttyS0 quiet",
)
SQUASH = BootImage(
    ImageFormat.KERNEL_SQUASHFS,
    Path("/img/lk"),
    kernel=Path("/img/lk-kernel"),
    squashfs=Path("/img/lk-squashfs.img"),
    cmdline="quiet",
)

# What every VM gets before its boot media: identity, machine, resources, control sockets, console.
HEAD_TCG = [
    "/usr/bin/qemu-system-x86_64",
    "-name", "lkctl-0a1b2c3d,process=lkctl-0a1b2c3d",
    "-machine", "q35,accel=tcg", "-cpu", "max",
    "-smp", "1", "-m", "1024",
    "-nodefaults", "-no-user-config", "-display", "none",
    "-pidfile", "qemu.pid",
    "-qmp", "unix:qmp.sock,server=on,wait=off",
    "-chardev", "socket,id=console0,path=console.sock,server=on,wait=off,logfile=console.log",
    "-serial", "chardev:console0",
]  # fmt: skip
RNG = ["-object", "rng-random,id=rng0,filename=/dev/urandom", "-device", "virtio-rng-pci,rng=rng0"]
NET = [
    "-netdev", "user,id=net0,hostfwd=tcp:127.0.0.1:40022-:22",
    "-device", "virtio-net-pci,netdev=net0,mac=52:54:0a:1b:2c:3d",
]  # fmt: skip
OVERLAY_AHCI = [
    "-drive", "file=boot.qcow2,format=qcow2,if=none,id=boot0,discard=unmap",
    "-device", "ide-hd,drive=boot0,bootindex=0",
]  # fmt: skip
OVERLAY_VIRTIO = [
    "-drive", "file=boot.qcow2,format=qcow2,if=none,id=boot0,discard=unmap",
    "-device", "virtio-blk-pci,drive=boot0,bootindex=0",
]  # fmt: skip


def spec(**kw: object) -> VmSpec:
    base: dict[str, object] = {"vm_id": "0a1b2c3d", "boot": KI, "ssh_port": 40022, "mac": "52:54:0a:1b:2c:3d"}
    base.update(kw)
    return VmSpec(**base)  # type: ignore[arg-type]


def after(argv: list[str], flag: str) -> list[str]:
    """Every value that follows `flag` in argv."""
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


def test_kernel_initrd_golden_argv_under_tcg() -> None:
    assert qemu_argv(spec(), LINUX_TCG) == [
        *HEAD_TCG, *RNG, *NET,
        "-kernel", "/img/minimal-kernel",
        "-initrd", "/img/minimal-initrd.img",
        "-append", "console=ttyS0 quiet",
        "-daemonize",
    ]  # fmt: skip


def test_bios_iso_golden_argv_under_kvm_boots_the_cdrom_read_only() -> None:
    iso = BootImage(ImageFormat.ISO, Path("/img/linuxkit.iso"))
    assert qemu_argv(spec(boot=iso), LINUX_KVM) == [
        "/usr/bin/qemu-system-x86_64",
        "-name", "lkctl-0a1b2c3d,process=lkctl-0a1b2c3d",
        "-machine", "q35,accel=kvm", "-cpu", "host",
        *HEAD_TCG[7:], *RNG, *NET,
        "-cdrom", "/img/linuxkit.iso", "-boot", "d",
        "-daemonize",
    ]  # fmt: skip


def test_efi_iso_golden_argv_maps_firmware_code_read_only_and_a_per_vm_vars_copy() -> None:
    iso = BootImage(ImageFormat.ISO, Path("/img/linuxkit-efi.iso"), uefi=True)
    assert qemu_argv(spec(boot=iso, firmware=OVMF), LINUX_TCG) == [
        *HEAD_TCG,
        "-drive", "if=pflash,format=raw,unit=0,file=/usr/share/OVMF/OVMF_CODE_4M.fd,readonly=on",
        "-drive", "if=pflash,format=raw,unit=1,file=efivars.fd",
        *RNG, *NET,
        "-cdrom", "/img/linuxkit-efi.iso", "-boot", "d",
        "-daemonize",
    ]  # fmt: skip


def test_qcow2_golden_argv_boots_the_per_vm_overlay_never_the_image() -> None:
    disk = BootImage(ImageFormat.QCOW2, Path("/img/linuxkit.qcow2"))
    argv = qemu_argv(spec(boot=disk), LINUX_TCG)
    assert argv == [*HEAD_TCG, *RNG, *NET, *OVERLAY_AHCI, "-daemonize"]
    assert not any("/img/linuxkit.qcow2" in a for a in argv)


@pytest.mark.parametrize("fmt", [ImageFormat.QCOW2, ImageFormat.RAW, ImageFormat.VMDK])
def test_every_disk_format_boots_through_the_same_overlay(fmt: ImageFormat) -> None:
    argv = qemu_argv(spec(boot=BootImage(fmt, Path(f"/img/disk.{fmt}"))), LINUX_KVM)
    assert argv[-5:] == [*OVERLAY_AHCI, "-daemonize"]
    assert "-kernel" not in argv
    assert "-bios" not in argv
    assert "if=pflash" not in " ".join(argv)


def test_disk_base_format_is_what_the_overlay_is_created_with() -> None:
    assert BootImage(ImageFormat.VMDK, Path("/i/d.vmdk")).overlay_base == (Path("/i/d.vmdk"), "vmdk")
    assert BootImage(ImageFormat.RAW, Path("/i/d.img")).overlay_base == (Path("/i/d.img"), "raw")
    assert SQUASH.overlay_base == (Path("/img/lk-squashfs.img"), "raw")
    assert KI.overlay_base is None
    assert BootImage(ImageFormat.ISO, Path("/i/x.iso")).overlay_base is None


def test_raw_efi_on_intel_mac_uses_hvf_and_homebrew_edk2() -> None:
    disk = BootImage(ImageFormat.RAW, Path("/Users/me/linuxkit-efi.img"), uefi=True)
    assert qemu_argv(spec(boot=disk, firmware=BREW_X86, daemonize=False), MAC_INTEL) == [
        "/usr/local/bin/qemu-system-x86_64",
        "-name", "lkctl-0a1b2c3d,process=lkctl-0a1b2c3d",
        "-machine", "q35,accel=hvf", "-cpu", "host",
        *HEAD_TCG[7:],
        "-drive", "if=pflash,format=raw,unit=0,file=/usr/local/share/qemu/edk2-x86_64-code.fd,readonly=on",
        "-drive", "if=pflash,format=raw,unit=1,file=efivars.fd",
        *RNG, *NET, *OVERLAY_AHCI,
    ]  # fmt: skip


def test_combined_firmware_image_is_loaded_as_bios_rom() -> None:
    disk = BootImage(ImageFormat.QCOW2, Path("/i/x-efi.qcow2"), uefi=True)
    argv = qemu_argv(spec(boot=disk, firmware=UefiFirmware(Path("/usr/share/ovmf/OVMF.fd"))), LINUX_TCG)
    assert after(argv, "-bios") == ["/usr/share/ovmf/OVMF.fd"]
    assert "if=pflash" not in " ".join(argv)


def test_uefi_image_without_firmware_names_the_package_to_install() -> None:
    iso = BootImage(ImageFormat.ISO, Path("/i/x.iso"), uefi=True)
    with pytest.raises(ConfigError, match="apt-get install ovmf"):
        qemu_argv(spec(boot=iso), LINUX_TCG)
    with pytest.raises(ConfigError, match="qemu-efi-aarch64"):
        qemu_argv(spec(boot=BootImage(ImageFormat.QCOW2, Path("/i/x.qcow2"))), ARM_TCG)


def test_kernel_squashfs_on_x86_boots_the_overlay_as_sda() -> None:
    argv = qemu_argv(spec(boot=SQUASH), LINUX_TCG)
    assert argv[-9:] == [
        *OVERLAY_AHCI,
        "-kernel", "/img/lk-kernel",
        "-append", "quiet console=ttyS0 root=/dev/sda",
        "-daemonize",
    ]  # fmt: skip
    assert "-initrd" not in argv


def test_kernel_squashfs_on_aarch64_is_virtio_vda_and_keeps_an_explicit_root() -> None:
    argv = qemu_argv(spec(boot=SQUASH), ARM_TCG)
    assert argv[-9:-5] == OVERLAY_VIRTIO
    assert after(argv, "-append") == ["quiet console=ttyAMA0 root=/dev/vda"]
    own_root = BootImage(ImageFormat.KERNEL_SQUASHFS, Path("/i/l"), kernel=Path("/k"), squashfs=Path("/s"),
                         cmdline="root=/dev/vdb")  # fmt: skip
    assert after(qemu_argv(spec(boot=own_root), ARM_TCG), "-append") == ["root=/dev/vdb console=ttyAMA0"]


def test_aarch64_tcg_kernel_initrd_golden_argv() -> None:
    boot = BootImage(ImageFormat.KERNEL_INITRD, Path("/i/x"), kernel=Path("/i/k"), initrd=Path("/i/r"), cmdline="")
    assert qemu_argv(spec(boot=boot, daemonize=False), ARM_TCG) == [
        "/usr/bin/qemu-system-aarch64",
        "-name", "lkctl-0a1b2c3d,process=lkctl-0a1b2c3d",
        "-machine", "virt,gic-version=max,accel=tcg", "-cpu", "max,pauth-impdef=on",
        *HEAD_TCG[7:], *RNG, *NET,
        "-kernel", "/i/k", "-initrd", "/i/r", "-append", "console=ttyAMA0",
    ]  # fmt: skip


def test_aarch64_kvm_on_linux_uses_the_host_gic_and_cpu() -> None:
    argv = qemu_argv(spec(boot=KI), ARM_KVM)
    assert after(argv, "-machine") == ["virt,gic-version=host,accel=kvm"]
    assert after(argv, "-cpu") == ["host"]


def test_apple_silicon_efi_iso_golden_argv() -> None:
    iso = BootImage(ImageFormat.ISO, Path("/Users/me/linuxkit-efi.iso"), uefi=True)
    assert qemu_argv(spec(boot=iso, firmware=BREW_ARM), MAC_ARM) == [
        "/opt/homebrew/bin/qemu-system-aarch64",
        "-name", "lkctl-0a1b2c3d,process=lkctl-0a1b2c3d",
        "-machine", "virt,highmem=off,accel=hvf", "-cpu", "host",
        *HEAD_TCG[7:],
        "-drive", "if=pflash,format=raw,unit=0,file=/opt/homebrew/share/qemu/edk2-aarch64-code.fd,readonly=on",
        "-drive", "if=pflash,format=raw,unit=1,file=efivars.fd",
        *RNG, *NET,
        "-cdrom", "/Users/me/linuxkit-efi.iso",  # virt has no BIOS boot order: no -boot d
        "-daemonize",
    ]  # fmt: skip


def test_apple_silicon_kernel_initrd_uses_virt_highmem_off_hvf_and_ttyama0() -> None:
    boot = BootImage(ImageFormat.KERNEL_INITRD, Path("/i/x"), kernel=Path("/k"), initrd=Path("/i"), cmdline="")
    argv = qemu_argv(spec(boot=boot), MAC_ARM)
    assert after(argv, "-machine") == ["virt,highmem=off,accel=hvf"]
    assert after(argv, "-cpu") == ["host"]
    assert after(argv, "-append") == ["console=ttyAMA0"]
    assert "-drive" not in argv  # a kernel boot needs no firmware


def test_aarch64_disks_always_boot_through_uefi_and_as_virtio() -> None:
    argv = qemu_argv(spec(boot=BootImage(ImageFormat.RAW, Path("/i/d.img")), firmware=AAVMF), ARM_TCG)
    assert after(argv, "-drive")[:2] == [
        "if=pflash,format=raw,unit=0,file=/usr/share/AAVMF/AAVMF_CODE.fd,readonly=on",
        "if=pflash,format=raw,unit=1,file=efivars.fd",
    ]
    assert argv[-5:] == [*OVERLAY_VIRTIO, "-daemonize"]


@pytest.mark.parametrize(
    ("fmt", "uefi", "arch", "expected"),
    [
        (ImageFormat.KERNEL_INITRD, True, "x86_64", False),
        (ImageFormat.KERNEL_SQUASHFS, False, "aarch64", False),
        (ImageFormat.ISO, False, "x86_64", False),
        (ImageFormat.ISO, True, "x86_64", True),
        (ImageFormat.QCOW2, False, "aarch64", True),
        (ImageFormat.VMDK, False, "x86_64", False),
    ],
)
def test_needs_uefi(fmt: ImageFormat, uefi: bool, arch: str, expected: bool) -> None:
    assert needs_uefi(spec(boot=BootImage(fmt, Path("/i/x"), uefi=uefi)), arch) is expected


def test_firmware_is_ignored_for_bios_boots() -> None:
    argv = qemu_argv(spec(boot=BootImage(ImageFormat.ISO, Path("/i/x.iso")), firmware=OVMF), LINUX_TCG)
    assert "-bios" not in argv
    assert "if=pflash" not in " ".join(argv)


def test_data_disk_is_virtio_with_a_stable_serial_in_the_state_dir() -> None:
    argv = qemu_argv(spec(data_disk=DataDisk(10 << 30), daemonize=False), LINUX_TCG)
    assert argv[-4:] == [
        "-drive", "file=data.qcow2,format=qcow2,if=none,id=data0,discard=unmap",
        "-device", "virtio-blk-pci,drive=data0,serial=lkctl-data",
    ]  # fmt: skip
    raw = DataDisk(1 << 30, "raw", Path("/srv/disks/a,b.img"))
    argv = qemu_argv(spec(data_disk=raw, daemonize=False), LINUX_TCG)
    assert argv[-3] == "file=/srv/disks/a,,b.img,format=raw,if=none,id=data0,discard=unmap"


def test_data_disk_with_an_unknown_format_is_refused() -> None:
    with pytest.raises(ConfigError, match="qcow2 or raw"):
        qemu_argv(spec(data_disk=DataDisk(1 << 30, "vmdk")), LINUX_TCG)


VOLS = (Volume(Path("/home/me/src,v2"), "/src"), Volume(Path("/srv/data"), "/mnt/my data", readonly=True))


def test_9p_volumes_golden_args_with_unique_tags_escaped_commas_and_readonly() -> None:
    argv = qemu_argv(spec(volumes=VOLS, daemonize=False), LINUX_TCG)
    assert argv[-10:] == [
        "-fsdev",
        "local,id=fsdev0,path=/home/me/src,,v2,security_model=mapped-xattr,fmode=0644,dmode=0755,multidevs=remap",
        "-device", "virtio-9p-pci,fsdev=fsdev0,mount_tag=lkvol0",
        "-fsdev", "local,id=fsdev1,path=/srv/data,security_model=none,readonly=on,multidevs=remap",
        "-device", "virtio-9p-pci,fsdev=fsdev1,mount_tag=lkvol1",
        "-fw_cfg", "name=opt/lkctl/volumes,file=volumes",
    ]  # fmt: skip
    assert "-numa" not in argv


def test_volume_manifest_lists_tag_type_mode_and_guest_path() -> None:
    assert volumes_manifest(spec(volumes=VOLS)) == "lkvol0\t9p\trw\t/src\nlkvol1\t9p\tro\t/mnt/my data\n"
    assert volumes_manifest(spec()) == ""


def test_virtiofs_shares_read_write_volumes_and_keeps_read_only_ones_on_9p() -> None:
    argv = qemu_argv(spec(volumes=VOLS, virtiofs=True, memory=2048, daemonize=False), LINUX_TCG)
    i = argv.index("-nodefaults")
    assert argv[i - 4 : i] == ["-object", "memory-backend-memfd,id=mem,size=2048M,share=on", "-numa", "node,memdev=mem"]
    assert argv[-10:] == [
        "-chardev", "socket,id=vfs0,path=virtiofs-lkvol0.sock",
        "-device", "vhost-user-fs-pci,chardev=vfs0,tag=lkvol0",
        "-fsdev", "local,id=fsdev1,path=/srv/data,security_model=none,readonly=on,multidevs=remap",
        "-device", "virtio-9p-pci,fsdev=fsdev1,mount_tag=lkvol1",
        "-fw_cfg", "name=opt/lkctl/volumes,file=volumes",
    ]  # fmt: skip
    assert [m.fstype for m in volume_mounts(spec(volumes=VOLS, virtiofs=True))] == ["virtiofs", "9p"]


def test_virtiofs_on_macos_is_refused() -> None:
    with pytest.raises(ConfigError, match="Linux host"):
        qemu_argv(spec(volumes=VOLS, virtiofs=True), MAC_ARM)


def test_two_volumes_at_one_guest_path_are_refused() -> None:
    vols = (Volume(Path("/a"), "/data"), Volume(Path("/b"), "/data/"))
    with pytest.raises(ConfigError, match="two volumes"):
        qemu_argv(spec(volumes=(vols[0], Volume(Path("/b"), "/data"))), LINUX_TCG)
    with pytest.raises(ConfigError, match="absolute"):
        qemu_argv(spec(volumes=(Volume(Path("/a"), "data"),)), LINUX_TCG)


def test_parse_volume_resolves_the_host_dir_and_reads_the_mode(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    assert parse_volume("src:/src", cwd=tmp_path) == Volume(tmp_path / "src", "/src")
    assert parse_volume(f"{tmp_path}/src:/mnt/x/:ro") == Volume(tmp_path / "src", "/mnt/x", True)
    assert parse_volume(f"{tmp_path}/src:/mnt/rw:rw") == Volume(tmp_path / "src", "/mnt/rw", False)


@pytest.mark.parametrize("text", ["src", "src:", ":/x", "missing:/x", "src:relative", "src:/", "src:/a/../b"])
def test_parse_volume_rejects_bad_specs(text: str, tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    with pytest.raises(ConfigError, match="--volume"):
        parse_volume(text, cwd=tmp_path)


def test_kvm_uses_host_cpu_and_resources_are_passed() -> None:
    argv = qemu_argv(spec(memory=2048, cpus=4), LINUX_KVM)
    assert after(argv, "-machine") == ["q35,accel=kvm"]
    assert after(argv, "-cpu") == ["host"]
    assert after(argv, "-smp") == ["4"]
    assert after(argv, "-m") == ["2048"]


def test_every_forward_binds_loopback_unless_an_address_is_given() -> None:
    ports = (PortForward(8080, 80), PortForward(5353, 53, proto="udp"), PortForward(9000, 90, host_ip="0.0.0.0"))
    argv = qemu_argv(spec(ports=ports), LINUX_TCG)
    assert after(argv, "-netdev") == [
        "user,id=net0,hostfwd=tcp:127.0.0.1:40022-:22,hostfwd=tcp:127.0.0.1:8080-:80,"
        "hostfwd=udp:127.0.0.1:5353-:53,hostfwd=tcp:0.0.0.0:9000-:90"
    ]


def test_network_none_has_no_nic_and_refuses_forwards() -> None:
    argv = qemu_argv(spec(network=Network.NONE, ssh_port=0), LINUX_TCG)
    assert "-netdev" not in argv
    assert not any(a.startswith("virtio-net") for a in argv)
    with pytest.raises(ConfigError, match="port forwards need a network"):
        qemu_argv(spec(network=Network.NONE), LINUX_TCG)


def test_vmnet_is_macos_only_and_forwards_nothing() -> None:
    argv = qemu_argv(spec(network=Network.VMNET, ssh_port=0), MAC_ARM)
    assert after(argv, "-netdev") == ["vmnet-shared,id=net0"]
    with pytest.raises(ConfigError, match="macOS only"):
        qemu_argv(spec(network=Network.VMNET, ssh_port=0), LINUX_TCG)
    with pytest.raises(ConfigError, match="--network user"):
        qemu_argv(spec(network=Network.VMNET), MAC_ARM)


def test_guest_files_go_through_fw_cfg_and_commas_are_escaped() -> None:
    argv = qemu_argv(spec(guest_files=(("ssh/authorized_keys", Path("/a,b/key.pub")),)), LINUX_TCG)
    assert after(argv, "-fw_cfg") == ["name=opt/lkctl/ssh/authorized_keys,file=/a,,b/key.pub"]


def test_guest_files_reach_iso_and_disk_boots_too() -> None:
    files = (("ssh/authorized_keys", Path("id_ed25519.pub")),)
    for boot in (BootImage(ImageFormat.ISO, Path("/i/x.iso")), BootImage(ImageFormat.RAW, Path("/i/x.img"))):
        argv = qemu_argv(spec(boot=boot, guest_files=files), LINUX_TCG)
        assert after(argv, "-fw_cfg") == ["name=opt/lkctl/ssh/authorized_keys,file=id_ed25519.pub"]


def test_console_is_added_when_the_image_cmdline_has_none() -> None:
    boot = BootImage(ImageFormat.KERNEL_INITRD, Path("/i/x"), kernel=Path("/k"), initrd=Path("/i"), cmdline="quiet")
    argv = qemu_argv(spec(boot=boot, cmdline_extra="lkctl.debug"), LINUX_TCG)
    assert after(argv, "-append") == ["quiet console=ttyS0 lkctl.debug"]


def test_image_paths_with_commas_are_escaped() -> None:
    iso = BootImage(ImageFormat.ISO, Path("/i/a,b.iso"))
    assert after(qemu_argv(spec(boot=iso), LINUX_TCG), "-cdrom") == ["/i/a,,b.iso"]
    fw = UefiFirmware(Path("/fw/c,ode.fd"), Path("/fw/vars.fd"))
    argv = qemu_argv(spec(boot=BootImage(ImageFormat.ISO, Path("/i/x.iso"), uefi=True), firmware=fw), LINUX_TCG)
    assert after(argv, "-drive")[0] == "if=pflash,format=raw,unit=0,file=/fw/c,,ode.fd,readonly=on"


def test_foreground_does_not_daemonize() -> None:
    assert "-daemonize" not in qemu_argv(spec(daemonize=False), LINUX_TCG)


def test_no_ssh_forward_when_ssh_port_is_zero() -> None:
    argv = qemu_argv(spec(ssh_port=0), LINUX_TCG)
    assert after(argv, "-netdev") == ["user,id=net0"]


def test_kernel_formats_without_their_files_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="kernel and an initrd"):
        qemu_argv(spec(boot=BootImage(ImageFormat.KERNEL_INITRD, Path("/i/x"), kernel=Path("/k"))), LINUX_TCG)
    with pytest.raises(ConfigError, match="squashfs"):
        qemu_argv(spec(boot=BootImage(ImageFormat.KERNEL_SQUASHFS, Path("/i/x"), kernel=Path("/k"))), LINUX_TCG)


def test_unsupported_architecture_is_a_config_error() -> None:
    riscv = HostCaps(os="linux", arch="riscv64", accel=Accel.TCG, qemu="/usr/bin/qemu-system-riscv64")
    with pytest.raises(ConfigError, match="x86_64 and aarch64"):
        qemu_argv(spec(), riscv)


def test_too_little_memory_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="too small"):
        qemu_argv(spec(memory=16), LINUX_TCG)


def test_argv_is_deterministic() -> None:
    s = spec(volumes=VOLS, ports=(PortForward(2, 3), PortForward(1, 4)), data_disk=DataDisk(1 << 30))
    assert qemu_argv(s, LINUX_TCG) == qemu_argv(s, LINUX_TCG)


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

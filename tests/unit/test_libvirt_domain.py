import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from lkctl.errors import ConfigError, StateError
from lkctl.runtime.libvirt.domain import (
    DomainFiles,
    FwCfgEntry,
    LibvirtHostCaps,
    domain_name,
    domain_xml,
    metadata_from_xml,
    metadata_xml,
)
from lkctl.runtime.model import BootImage, DataDisk, ImageFormat, Network, PortForward, VmSpec, Volume

TCG = LibvirtHostCaps(uri="qemu:///system", domain_type="qemu", pool_path="/var/lib/libvirt/lkctl")
KVM = LibvirtHostCaps(uri="qemu+ssh://root@hv1/system", domain_type="kvm", pool_path="/var/lib/libvirt/lkctl")
ARM = LibvirtHostCaps(uri="qemu:///system", arch="aarch64", domain_type="qemu")
POOL = "/var/lib/libvirt/lkctl"
KI = BootImage(
    ImageFormat.KERNEL_INITRD, Path("/img/minimal"), kernel=Path("/img/minimal-kernel"),
    initrd=Path("/img/minimal-initrd.img"), cmdline="console=ttyS0 quiet",
)  # fmt: skip
KEYS = (
    FwCfgEntry("ssh/authorized_keys", value="ssh-ed25519 AAAA client\n"),
    FwCfgEntry("ssh/ssh_host_ed25519_key", file=f"{POOL}/lkctl-0a1b2c3d-hostkey"),
)
KI_FILES = DomainFiles(
    kernel=f"{POOL}/sha256-aa", initrd=f"{POOL}/sha256-bb", console=f"{POOL}/lkctl-0a1b2c3d.console.log", fw_cfg=KEYS
)
RECORD = {"id": "0a1b2c3d", "name": "web", "image": "minimal", "ssh_port": 40022}


def spec(**kw: object) -> VmSpec:
    base: dict[str, object] = {"vm_id": "0a1b2c3d", "boot": KI, "ssh_port": 40022, "mac": "52:54:0a:1b:2c:3d"}
    base.update(kw)
    return VmSpec(**base)  # type: ignore[arg-type]


GOLDEN_KERNEL_INITRD_TCG = """\
<domain xmlns:lkctl="https://lkctl.dev/xmlns/vm/1" xmlns:qemu="http://libvirt.org/schemas/domain/qemu/1.0" type="qemu">
  <name>lkctl-0a1b2c3d</name>
  <title>web</title>
  <description>lkctl VM web (minimal)</description>
  <metadata>
    <lkctl:vm>{"id": "0a1b2c3d", "image": "minimal", "name": "web", "ssh_port": 40022}</lkctl:vm>
  </metadata>
  <memory unit="MiB">1024</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch="x86_64" machine="q35">hvm</type>
    <kernel>/var/lib/libvirt/lkctl/sha256-aa</kernel>
    <initrd>/var/lib/libvirt/lkctl/sha256-bb</initrd>
    <cmdline>console=ttyS0 quiet</cmdline>
  </os>
  <features>
    <acpi />
    <apic />
  </features>
  <cpu mode="maximum" />
  <clock offset="utc" />
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <serial type="file">
      <source path="/var/lib/libvirt/lkctl/lkctl-0a1b2c3d.console.log" />
      <target port="0" />
    </serial>
    <rng model="virtio">
      <backend model="random">/dev/urandom</backend>
    </rng>
    <memballoon model="none" />
  </devices>
  <sysinfo type="fwcfg">
    <entry name="opt/lkctl/ssh/authorized_keys">ssh-ed25519 AAAA client
</entry>
    <entry name="opt/lkctl/ssh/ssh_host_ed25519_key" file="/var/lib/libvirt/lkctl/lkctl-0a1b2c3d-hostkey" />
  </sysinfo>
  <qemu:commandline>
    <qemu:arg value="-netdev" />
    <qemu:arg value="user,id=lknet0,hostfwd=tcp:127.0.0.1:40022-:22" />
    <qemu:arg value="-device" />
    <qemu:arg value="virtio-net-pci,netdev=lknet0,mac=52:54:0a:1b:2c:3d,bus=pcie.0,addr=0x10" />
  </qemu:commandline>
</domain>
"""


def test_kernel_initrd_golden_domain_under_tcg() -> None:
    assert domain_xml(spec(), TCG, KI_FILES, RECORD) == GOLDEN_KERNEL_INITRD_TCG


def parse(text: str) -> ET.Element:
    return ET.fromstring(text)


def disks(root: ET.Element) -> list[tuple[str, str, str, str, bool]]:
    """(device, format, source, target dev/bus, read-only) per disk."""
    return [
        (
            d.get("device", ""),
            d.find("driver").get("type", ""),  # type: ignore[union-attr]
            d.find("source").get("file", ""),  # type: ignore[union-attr]
            f"{d.find('target').get('dev')}/{d.find('target').get('bus')}",  # type: ignore[union-attr]
            d.find("readonly") is not None,
        )
        for d in root.iter("disk")
    ]


def test_kvm_host_gets_a_kvm_domain_with_the_host_cpu() -> None:
    root = parse(domain_xml(spec(), KVM, KI_FILES, RECORD))
    assert root.get("type") == "kvm"
    assert root.find("cpu").get("mode") == "host-passthrough"  # type: ignore[union-attr]


def test_memory_and_cpus_come_from_the_spec() -> None:
    root = parse(domain_xml(spec(memory=256, cpus=3), TCG, KI_FILES, RECORD))
    assert root.findtext("memory") == "256" and root.find("memory").get("unit") == "MiB"  # type: ignore[union-attr]
    assert root.findtext("vcpu") == "3"


def test_iso_is_a_read_only_sata_cdrom_booted_first() -> None:
    iso = BootImage(ImageFormat.ISO, Path("/img/lk.iso"))
    files = DomainFiles(image=f"{POOL}/sha256-cc", console=f"{POOL}/c.log")
    root = parse(domain_xml(spec(boot=iso), TCG, files, RECORD))
    assert disks(root) == [("cdrom", "raw", f"{POOL}/sha256-cc", "sda/sata", True)]
    assert root.find("os/boot").get("dev") == "cdrom"  # type: ignore[union-attr]
    assert root.find("os/kernel") is None


@pytest.mark.parametrize("fmt", [ImageFormat.QCOW2, ImageFormat.RAW, ImageFormat.VMDK])
def test_every_disk_format_boots_its_per_vm_qcow2_overlay_never_the_image(fmt: ImageFormat) -> None:
    files = DomainFiles(image=f"{POOL}/sha256-dd", overlay=f"{POOL}/lkctl-0a1b2c3d-boot.qcow2", console="/c")
    text = domain_xml(spec(boot=BootImage(fmt, Path(f"/img/d.{fmt}"))), TCG, files, RECORD)
    assert disks(parse(text)) == [("disk", "qcow2", f"{POOL}/lkctl-0a1b2c3d-boot.qcow2", "sda/sata", False)]
    assert "sha256-dd" not in text


def test_uefi_disk_asks_libvirt_for_efi_firmware_without_secure_boot() -> None:
    disk = BootImage(ImageFormat.QCOW2, Path("/img/lk-efi.qcow2"), uefi=True)
    files = DomainFiles(overlay="/p/o.qcow2", console="/c")
    root = parse(domain_xml(spec(boot=disk), TCG, files, RECORD))
    os_el = root.find("os")
    assert os_el is not None and os_el.get("firmware") == "efi"
    assert os_el.find("firmware/feature").attrib == {"enabled": "no", "name": "secure-boot"}  # type: ignore[union-attr]
    bios = parse(domain_xml(spec(boot=BootImage(ImageFormat.QCOW2, Path("/i/x.qcow2"))), TCG, files, RECORD))
    assert bios.find("os").get("firmware") is None  # type: ignore[union-attr]


def test_aarch64_disk_is_virtio_and_always_uefi() -> None:
    files = DomainFiles(overlay="/p/o.qcow2", console="/c")
    root = parse(domain_xml(spec(boot=BootImage(ImageFormat.RAW, Path("/i/x.img"))), ARM, files, RECORD))
    assert root.find("os/type").get("machine") == "virt"  # type: ignore[union-attr]
    assert root.find("os").get("firmware") == "efi"  # type: ignore[union-attr]
    assert disks(root)[0][3] == "vda/virtio"


def test_kernel_squashfs_boots_the_kernel_with_the_overlay_as_root() -> None:
    squash = BootImage(ImageFormat.KERNEL_SQUASHFS, Path("/i/lk"), kernel=Path("/i/k"), squashfs=Path("/i/s"))
    files = DomainFiles(kernel="/p/k", overlay="/p/o.qcow2", console="/c")
    root = parse(domain_xml(spec(boot=squash), TCG, files, RECORD))
    assert root.findtext("os/cmdline") == "console=ttyS0 root=/dev/sda"
    assert root.find("os/initrd") is None
    assert disks(root) == [("disk", "qcow2", "/p/o.qcow2", "sda/sata", False)]


def test_data_disk_is_virtio_with_the_serial_init_looks_for() -> None:
    files = DomainFiles(kernel="/k", initrd="/i", console="/c", data_disk="/p/lkctl-0a1b2c3d-data.img")
    root = parse(domain_xml(spec(data_disk=DataDisk(1 << 30, "raw")), TCG, files, RECORD))
    [disk] = [d for d in root.iter("disk")]
    assert disks(root) == [("disk", "raw", "/p/lkctl-0a1b2c3d-data.img", "vdb/virtio", False)]
    assert disk.findtext("serial") == "lkctl-data"


def test_volumes_are_9p_mapped_or_read_only_squash_and_virtiofs_shares_memory(tmp_path: Path) -> None:
    vols = (Volume(Path("/srv/src"), "/src", readonly=True), Volume(Path("/srv/out"), "/out"))
    root = parse(domain_xml(spec(volumes=vols), TCG, KI_FILES, RECORD))
    fs = [(f.get("accessmode"), f.find("source").get("dir"), f.find("target").get("dir"),  # type: ignore[union-attr]
           f.find("readonly") is not None) for f in root.iter("filesystem")]  # fmt: skip
    assert fs == [("squash", "/srv/src", "lkvol0", True), ("mapped", "/srv/out", "lkvol1", False)]
    assert root.find("memoryBacking") is None
    entries = {e.get("name"): e.text for e in root.iter("entry")}
    assert entries["opt/lkctl/volumes"] == "lkvol0\t9p\tro\t/src\nlkvol1\t9p\trw\t/out\n"
    vfs = parse(domain_xml(spec(volumes=vols, virtiofs=True), TCG, KI_FILES, RECORD))
    drivers = [f.find("driver").get("type") for f in vfs.iter("filesystem")]  # type: ignore[union-attr]
    assert drivers == ["path", "virtiofs"]  # read-only stays 9p: virtiofsd does not enforce it
    assert vfs.find("memoryBacking/access").get("mode") == "shared"  # type: ignore[union-attr]
    assert [c.tag for c in vfs][[c.tag for c in vfs].index("vcpu") + 1] == "memoryBacking"


def test_port_forwards_bind_loopback_on_the_target_host() -> None:
    ports = (PortForward(8080, 80), PortForward(5353, 53, proto="udp"))
    root = parse(domain_xml(spec(ports=ports), TCG, KI_FILES, RECORD))
    args = [a.get("value") for a in root.iter("{http://libvirt.org/schemas/domain/qemu/1.0}arg")]
    assert args[1] == (
        "user,id=lknet0,hostfwd=tcp:127.0.0.1:40022-:22,hostfwd=tcp:127.0.0.1:8080-:80,hostfwd=udp:127.0.0.1:5353-:53"
    )


def test_no_network_means_no_netdev_and_forwards_are_refused() -> None:
    root = parse(domain_xml(spec(network=Network.NONE, ssh_port=0), TCG, KI_FILES, RECORD))
    assert root.find("{http://libvirt.org/schemas/domain/qemu/1.0}commandline") is None
    with pytest.raises(ConfigError, match="port forwards need a network"):
        domain_xml(spec(network=Network.NONE), TCG, KI_FILES, RECORD)


@pytest.mark.parametrize(
    ("kw", "files", "message"),
    [
        ({"memory": 32}, KI_FILES, "too small"),
        ({"cpus": 0}, KI_FILES, "at least 1"),
        ({}, DomainFiles(kernel="/k", console="/c"), "both a kernel and an initrd"),
        ({}, DomainFiles(kernel="/k", initrd="/i"), "console"),
        ({"boot": BootImage(ImageFormat.QCOW2, Path("/i/x.qcow2"))}, DomainFiles(console="/c"), "overlay"),
        ({"network": Network.VMNET}, KI_FILES, "not available through libvirt"),
    ],
)
def test_impossible_specs_are_refused_in_one_line(kw: dict[str, object], files: DomainFiles, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as e:
        domain_xml(spec(**kw), TCG, files, RECORD)
    assert "\n" not in str(e.value)


def test_user_text_is_escaped_not_interpreted() -> None:
    record = {**RECORD, "name": "<b>&'\"", "image": "]]></lkctl:vm><x/>"}
    text = domain_xml(spec(), TCG, KI_FILES, record)
    root = parse(text)
    assert root.findtext("title") == "<b>&'\""
    assert metadata_from_xml(text) == record


def test_metadata_round_trips_with_or_without_its_namespace() -> None:
    record = {"id": "0a1b2c3d", "ports": ["127.0.0.1:8080->80/tcp"], "memory": 512}
    assert metadata_from_xml(metadata_xml(record)) == record
    # what virDomainGetMetadata returns: the element with its namespace dropped
    assert metadata_from_xml('<vm>{"id": "0a1b2c3d"}</vm>') == {"id": "0a1b2c3d"}
    with pytest.raises(StateError):
        metadata_from_xml("<domain><name>other</name></domain>")
    with pytest.raises(StateError):
        metadata_from_xml("<vm>[1, 2]</vm>")


def test_domain_names_say_lkctl_made_them() -> None:
    assert domain_name("0a1b2c3d") == "lkctl-0a1b2c3d"

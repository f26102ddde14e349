"""The dev image's pure parts: its boot argv (kernel+initrd + a root disk through the overlay), recipe, fingerprint."""

from pathlib import Path

import pytest

from lkctl.debpackages import InstalledPackage
from lkctl.dev.rootdisk import (
    chosen_packages,
    disk_fingerprint,
    load_disk_recipe,
    owner_script,
    parse_disk_recipe,
    parse_size_text,
)
from lkctl.errors import BuildError
from lkctl.proc import ProgramMissing
from lkctl.runtime.host import Accel, HostCaps
from lkctl.runtime.model import BootImage, ImageFormat, VmSpec
from lkctl.runtime.qemu import qemu_argv

LINUX_TCG = HostCaps(os="linux", arch="x86_64", accel=Accel.TCG, qemu="/usr/bin/qemu-system-x86_64")
ARM_KVM = HostCaps(os="linux", arch="aarch64", accel=Accel.KVM, qemu="/usr/bin/qemu-system-aarch64")

DEV = BootImage(
    ImageFormat.KERNEL_INITRD,
    Path("/d/lkctl-dev"),
    kernel=Path("/d/lkctl-dev-kernel"),
    initrd=Path("/d/lkctl-dev-initrd.img"),
    cmdline="console=ttyS0 quiet",
    rootdisk=Path("/d/lkctl-dev-root.qcow2"),
)
ROOT_DRIVE = [
    "-drive", "file=boot.qcow2,format=qcow2,if=none,id=root0,discard=unmap",
    "-device", "virtio-blk-pci,drive=root0,serial=lkctl-root",
]  # fmt: skip


def _spec(boot: BootImage) -> VmSpec:
    return VmSpec(vm_id="0a1b2c3d", boot=boot, ssh_port=40022, mac="52:54:0a:1b:2c:3d", memory=4096, cpus=2)


def test_dev_boot_golden_argv_boots_kernel_and_initrd_with_the_root_disk_through_the_overlay() -> None:
    assert qemu_argv(_spec(DEV), LINUX_TCG) == [
        "/usr/bin/qemu-system-x86_64",
        "-name", "lkctl-0a1b2c3d,process=lkctl-0a1b2c3d",
        "-machine", "q35,accel=tcg", "-cpu", "max",
        "-smp", "2", "-m", "4096",
        "-nodefaults", "-no-user-config", "-display", "none",
        "-pidfile", "qemu.pid",
        "-qmp", "unix:qmp.sock,server=on,wait=off",
        "-chardev", "socket,id=console0,path=console.sock,server=on,wait=off,logfile=console.log",
        "-serial", "chardev:console0",
        "-object", "rng-random,id=rng0,filename=/dev/urandom", "-device", "virtio-rng-pci,rng=rng0",
        "-netdev", "user,id=net0,hostfwd=tcp:127.0.0.1:40022-:22",
        "-device", "virtio-net-pci,netdev=net0,mac=52:54:0a:1b:2c:3d",
        "-kernel", "/d/lkctl-dev-kernel",
        "-initrd", "/d/lkctl-dev-initrd.img",
        "-append", "console=ttyS0 quiet",
        *ROOT_DRIVE,
        "-daemonize",
    ]  # fmt: skip


def test_dev_boot_on_aarch64_uses_the_same_virtio_root_disk_and_no_firmware() -> None:
    argv = qemu_argv(_spec(DEV), ARM_KVM)
    i = argv.index("-kernel")
    assert argv[i:] == [
        "-kernel", "/d/lkctl-dev-kernel", "-initrd", "/d/lkctl-dev-initrd.img",
        "-append", "console=ttyS0 quiet", *ROOT_DRIVE, "-daemonize",
    ]  # fmt: skip
    assert "pflash" not in " ".join(argv) and "-bios" not in argv


def test_the_root_disk_is_what_the_per_vm_overlay_is_made_over() -> None:
    assert DEV.overlay_base == (Path("/d/lkctl-dev-root.qcow2"), "qcow2")
    raw = BootImage(ImageFormat.KERNEL_INITRD, Path("/d/x"), kernel=Path("/k"), initrd=Path("/i"),
                    rootdisk=Path("/d/x-root.img"), rootdisk_format="raw")  # fmt: skip
    assert raw.overlay_base == (Path("/d/x-root.img"), "raw")
    plain = BootImage(ImageFormat.KERNEL_INITRD, Path("/d/x"), kernel=Path("/k"), initrd=Path("/i"))
    assert plain.overlay_base is None
    assert "boot.qcow2" not in " ".join(qemu_argv(_spec(plain), LINUX_TCG))


RECIPE = """
name: t
packages:
  names: [a]
  optional: [c, missing]
  exclude: ["x*"]
  skip: [usr/share/doc]
host: [etc/php/*/cli/conf.d]
symlinks: {usr/bin/vi: vim.tiny}
files: {etc/shadow: "root:*:1:0:::::\\n"}
modes: {etc/shadow: "0600"}
dirs: [app, tmp]
free: 1G
"""


def _pkg(name: str, version: str, depends: tuple[tuple[str, ...], ...] = ()) -> InstalledPackage:
    return InstalledPackage(name, "amd64", depends, (), version)


PACKAGES = {
    "a": _pkg("a", "1.0", (("b",), ("xdep",))),
    "b": _pkg("b", "2.0"),
    "c": _pkg("c", "3.0"),
    "xdep": _pkg("xdep", "9"),
}


def test_recipe_parses_into_typed_fields() -> None:
    r = parse_disk_recipe(RECIPE, "recipe.yml")
    assert (r.name, r.packages, r.optional, r.exclude) == ("t", ("a",), ("c", "missing"), ("x*",))
    assert r.symlinks == (("usr/bin/vi", "vim.tiny"),)
    assert r.modes == (("etc/shadow", 0o600),)
    assert (r.dirs, r.free) == (("app", "tmp"), 1 << 30)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("packages: {names: [a]}\nbogus: 1\n", "unknown key(s) bogus"),
        ("name: x\n", "packages.names"),
        ("packages: {names: [a], extra: [b]}\n", "unknown key(s) extra"),
        ("packages: {names: [a]}\nmodes: {x: '9z'}\n", "octal"),
        ("packages: {names: [a]}\nfiles: {'/': y}\n", "bad path"),
        ("packages: {names: [a]}\nfree: lots\n", "is not a size"),
        ("packages: [a\n", "not valid YAML"),
    ],
)
def test_a_bad_recipe_is_one_error_naming_what_is_wrong(text: str, needle: str) -> None:
    with pytest.raises(BuildError, match=r"recipe\.yml") as e:
        parse_disk_recipe(text, "recipe.yml")
    assert needle in e.value.message


def test_closure_takes_installed_optional_packages_and_leaves_out_excluded_ones() -> None:
    assert chosen_packages(parse_disk_recipe(RECIPE, "r"), PACKAGES) == ["a", "b", "c"]


def test_a_wanted_package_that_is_not_installed_names_the_apt_command() -> None:
    with pytest.raises(ProgramMissing, match="apt-get install a"):
        chosen_packages(parse_disk_recipe(RECIPE, "r"), {"b": PACKAGES["b"]})


def test_fingerprint_follows_package_versions_recipe_and_host_facts_only() -> None:
    r = parse_disk_recipe(RECIPE, "r")
    fp = disk_fingerprint(r, PACKAGES, ["etc/x abc"])
    assert fp == disk_fingerprint(r, dict(reversed(PACKAGES.items())), ["etc/x abc"])
    assert fp != disk_fingerprint(r, {**PACKAGES, "b": _pkg("b", "2.1")}, ["etc/x abc"])
    assert fp != disk_fingerprint(parse_disk_recipe(RECIPE + "# edited\n", "r"), PACKAGES, ["etc/x abc"])
    assert fp != disk_fingerprint(r, PACKAGES, ["etc/x def"])
    # an excluded package's version is not part of the disk
    assert fp == disk_fingerprint(r, {**PACKAGES, "xdep": _pkg("xdep", "10")}, ["etc/x abc"])


def test_the_shipped_recipe_parses_and_names_every_toolchain() -> None:
    r = load_disk_recipe()
    for name in ("python3-pip", "python3-venv", "python3-pytest", "nodejs", "php-cli", "composer", "golang-go",
                 "git", "make", "curl", "vim-tiny", "bash"):  # fmt: skip
        assert name in r.packages


@pytest.mark.parametrize(("text", "size"), [("8G", 8 << 30), ("512M", 512 << 20), ("100", 100), ("1.5K", 1536)])
def test_sizes(text: str, size: int) -> None:
    assert parse_size_text(text) == size


def test_ownership_script_gives_every_path_to_root_and_skips_unquotable_names() -> None:
    assert owner_script(["/usr", "/a b", '/we"ird']) == (
        'sif "/usr" uid 0\nsif "/usr" gid 0\nsif "/a b" uid 0\nsif "/a b" gid 0\n'
    )


def test_hyperkit_refuses_a_root_disk_image_instead_of_booting_without_it() -> None:
    from lkctl.errors import ConfigError
    from lkctl.runtime.hyperkit import hyperkit_argv

    mac = HostCaps(os="darwin", arch="x86_64", accel=Accel.HVF, qemu="")
    with pytest.raises(ConfigError, match="needs --hypervisor qemu"):
        hyperkit_argv(_spec(DEV), mac)

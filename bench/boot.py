"""Boot benchmark: raw QEMU to the guest's init marker vs `lkctl vm.run -d` to the first `vm.exec true`.

Both sides boot the same kernel+initrd (the built-in `minimal` template, built first and not timed) with the same
accelerator, in one run. (a) is raw QEMU given the bzImage as a user would; (a') is raw QEMU given the PVH vmlinux
lkctl boots (so b/a' is lkctl's own overhead: SSH readiness, key exchange, two Python CLIs). Prints the times and
the ratios. Usage: python bench/boot.py [--rounds N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent
MARKER = b"lkctl-init: ready"


def raw_qemu(kernel: Path, initrd: Path, cmdline: str, accel: str, keys: Path) -> float:
    """(a): QEMU started by hand; seconds until the console shows the init's ready marker."""
    argv = [
        "qemu-system-x86_64", "-machine", f"q35,accel={accel}", "-cpu", "max" if accel == "tcg" else "host",
        "-m", "1024", "-smp", "1", "-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio",
        "-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0",
        "-object", "rng-random,id=rng0,filename=/dev/urandom", "-device", "virtio-rng-pci,rng=rng0",
        "-fw_cfg", f"name=opt/lkctl/ssh/authorized_keys,file={keys / 'id_ed25519.pub'}",
        "-fw_cfg", f"name=opt/lkctl/ssh/ssh_host_ed25519_key,file={keys / 'ssh_host_ed25519_key'}",
        "-kernel", str(kernel), "-initrd", str(initrd), "-append", cmdline,
    ]  # fmt: skip
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seen = b""
    try:
        assert proc.stdout is not None
        while MARKER not in seen:
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                raise SystemExit("raw QEMU exited before the init marker")
            seen += chunk
        return time.monotonic() - start
    finally:
        proc.kill()
        proc.wait()


def lkctl(*args: str, env: dict[str, str]) -> str:
    return subprocess.run([str(BIN / "lkctl"), *args], env=env, check=True, capture_output=True, text=True).stdout


def via_lkctl(env: dict[str, str], n: int) -> float:
    """(b): `lkctl vm.run -d` + the first `lkctl vm.exec true`, as a user types them."""
    name = f"bench{n}"
    start = time.monotonic()
    lkctl("vm.run", "--image=minimal", "-d", "--name", name, env=env)
    lkctl("vm.exec", name, "--", "true", env=env)
    elapsed = time.monotonic() - start
    lkctl("vm.rm", "--force", name, env=env)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="lkbench-") as home:
        env = dict(os.environ, LKCTL_HOME=home)
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        os.environ["LKCTL_HOME"] = home
        from lkctl.images import resolve_image
        from lkctl.runtime.host import probe_host
        from lkctl.ssh import generate_keys

        boot = resolve_image("minimal").boot  # build once, untimed
        assert boot.kernel and boot.initrd
        accel = probe_host(kernel=boot.kernel).accel.value
        keys = generate_keys(Path(home) / "keys")
        cmdline = boot.cmdline if "console=" in boot.cmdline else f"{boot.cmdline} console=ttyS0"
        from lkctl.runtime.pvh import pvh_kernel

        vmlinux = pvh_kernel(boot.kernel) or boot.kernel
        a, a2, b = [], [], []
        for i in range(args.rounds):
            a.append(raw_qemu(boot.kernel, boot.initrd, cmdline, accel, keys.client_pub.parent))
            a2.append(raw_qemu(vmlinux, boot.initrd, cmdline, accel, keys.client_pub.parent))
            b.append(via_lkctl(env, i))
            print(
                f"round {i + 1}: raw qemu (bzImage) {a[-1]:.2f}s, raw qemu (PVH vmlinux) {a2[-1]:.2f}s, "
                f"lkctl run -d + first exec {b[-1]:.2f}s"
            )
        ma, ma2, mb = statistics.median(a), statistics.median(a2), statistics.median(b)
        print(f"accel={accel} rounds={args.rounds}")
        print(f"(a)  raw QEMU, bzImage, boot to '{MARKER.decode()}': median {ma:.2f}s")
        print(f"(a') raw QEMU, PVH vmlinux, boot to '{MARKER.decode()}': median {ma2:.2f}s")
        print(f"(b)  lkctl vm.run -d until first vm.exec true returns: median {mb:.2f}s")
        print(f"ratio b/a = {mb / ma:.2f}   ratio b/a' = {mb / ma2:.2f}")


if __name__ == "__main__":
    main()

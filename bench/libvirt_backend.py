"""libvirt benchmark: uploading the minimal image into a storage pool, and run→exec through libvirt vs direct QEMU.

(u) streams the `minimal` template's PVH kernel and initrd into a scratch pool through libvirt's volume upload
(first time, then again: the second is only a lookup); with --ssh-uri also through qemu+ssh://. (a) is
`lkctl vm.run -d` then `vm.exec -- true` under QEMU directly; (b) is the same with `--connect qemu:///system`,
(c) through the qemu+ssh URI (image already in the pool; exec through that host's sshd as a jump).
Needs root and a running libvirtd; otherwise it says so and exits 0.
Usage: python bench/libvirt_backend.py [--ssh-uri URI --known-hosts FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def timed_upload(uri: str, pin: str, pool_name: str, files: list[Path]) -> tuple[float, float]:
    from lkctl.runtime.digest import file_digest
    from lkctl.runtime.libvirt import backend

    with backend.connection(uri, pin) as conn:
        pool = backend.ensure_pool(conn, pool_name, f"/var/lib/libvirt/{pool_name}")
        times = []
        for _ in range(2):
            start = time.monotonic()
            for f in files:
                backend.upload_image(conn, pool, f, file_digest([f]))
            times.append(time.monotonic() - start)
    return times[0], times[1]


def drop_pool(pool_name: str) -> None:
    from lkctl.runtime.libvirt import backend

    with backend.connection("qemu:///system") as conn:
        pool = conn.storagePoolLookupByName(pool_name)
        for vol in pool.listAllVolumes(0):
            vol.delete(0)
        pool.destroy()
        pool.delete(0)
        pool.undefine()


def run_exec(env: dict[str, str], extra: list[str]) -> tuple[float, float]:
    """Seconds from `vm.run -d` to the first `vm.exec true` returning, and for a second `vm.exec true` alone."""
    name = f"bench-{secrets.token_hex(3)}"
    lk = str(BIN / "lkctl")
    start = time.monotonic()
    try:
        subprocess.run([lk, "vm.run", "--image=minimal", "-d", "--name", name, "--memory", "256", *extra],
                       env=env, check=True, capture_output=True, timeout=900)  # fmt: skip
        subprocess.run([lk, "vm.exec", name, "--", "true"], env=env, check=True, capture_output=True, timeout=120)
        total = time.monotonic() - start
        start = time.monotonic()
        subprocess.run([lk, "vm.exec", name, "--", "true"], env=env, check=True, capture_output=True, timeout=120)
        return total, time.monotonic() - start
    finally:
        subprocess.run([lk, "vm.rm", "--force", name], env=env, capture_output=True, timeout=300, check=False)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ssh-uri", default="")
    ap.add_argument("--known-hosts", default="")
    args = ap.parse_args()
    try:
        import libvirt  # noqa: F401
    except ImportError:
        print("bench/libvirt_backend.py: skipped (libvirt-python is not installed)")
        return
    if os.geteuid() != 0 or subprocess.run(["virsh", "-c", "qemu:///system", "version"], capture_output=True,
                                           check=False).returncode:  # fmt: skip
        print("bench/libvirt_backend.py: skipped (needs root and a running libvirtd; see README 'Scaling out')")
        return
    from lkctl.images import resolve_image
    from lkctl.runtime.pvh import pvh_kernel
    from lkctl.settings import load_settings
    from lkctl.templates import inputs_from_settings

    boot = resolve_image("minimal", inputs_from_settings(load_settings({}).templates, None)).boot
    assert boot.kernel is not None and boot.initrd is not None
    files = [pvh_kernel(boot.kernel) or boot.kernel, boot.initrd]
    size = sum(f.stat().st_size for f in files) / (1 << 20)
    pool_name = f"lkctl-bench-{secrets.token_hex(3)}"
    try:
        first, again = timed_upload("qemu:///system", "", pool_name, files)
        print(f"(u) upload of minimal ({size:.0f} MiB) via qemu:///system: {first:.2f} s; already there: {again:.2f} s")
        if args.ssh_uri:
            drop_pool(pool_name)
            first, again = timed_upload(args.ssh_uri, args.known_hosts, pool_name, files)
            print(f"(u) upload via {args.ssh_uri.split('?')[0]}: {first:.2f} s; already there: {again:.2f} s")
    finally:
        drop_pool(pool_name)
    with tempfile.TemporaryDirectory(prefix="lkctl-bench-") as home:
        env = {**os.environ, "LKCTL_HOME": home}
        env.setdefault("LKCTL_CACHE_DIR", str(Path(__file__).resolve().parent.parent / ".lkctl-test" / "cache"))
        direct, direct_exec = run_exec(env, [])
        print(
            f"(a) vm.run -d → vm.exec true, QEMU directly:        {direct:5.1f} s; "
            f"one more vm.exec: {direct_exec:.2f} s"
        )
        env.update(LKCTL_LIBVIRT_POOL=pool_name, LKCTL_LIBVIRT_POOL_PATH=f"/var/lib/libvirt/{pool_name}")
        remote = {"name": "remote", "uri": args.ssh_uri, "known_hosts": args.known_hosts, "accel": "tcg"}
        env["LKCTL_HOSTS"] = json.dumps([remote] if args.ssh_uri else [])
        try:
            through, through_exec = run_exec(env, ["--connect", "qemu:///system"])
            print(
                f"(b) the same through libvirt (qemu:///system):      {through:5.1f} s; one more vm.exec: "
                f"{through_exec:.2f} s   b/a = {through / direct:.2f}"
            )
            if args.ssh_uri:
                far, far_exec = run_exec(env, ["--host", "remote"])
                print(
                    f"(c) the same through qemu+ssh (exec via the jump): {far:5.1f} s; one more vm.exec: "
                    f"{far_exec:.2f} s   c/a = {far / direct:.2f}"
                )
        finally:
            drop_pool(pool_name)


if __name__ == "__main__":
    main()

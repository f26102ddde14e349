"""Boot benchmark: raw QEMU to the guest's init marker vs `lkctl vm.run -d` to the first `vm.exec true`.

Both sides boot the same kernel+initrd (the built-in `minimal` template, built first and not timed) with the same
accelerator, in one run. (a) is raw QEMU given the bzImage as a user would; (a') is raw QEMU given the PVH vmlinux
lkctl boots (so b/a' is lkctl's own overhead: SSH readiness, key exchange, two Python CLIs). Prints the times and
the ratios. Usage: python bench/boot.py [--rounds N]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

BIN = Path(sys.executable).parent
MARKER = b"lkctl-init: ready"
INIT = b"lkctl-init: starting"


def raw_qemu(kernel: Path, initrd: Path, cmdline: str, accel: str, keys: Path) -> tuple[float, float]:
    """(a): QEMU started by hand; seconds until the console shows init's first line, and its ready marker."""
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
    init = 0.0
    try:
        assert proc.stdout is not None
        while MARKER not in seen:
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                raise SystemExit("raw QEMU exited before the init marker")
            seen += chunk
            if not init and INIT in seen:
                init = time.monotonic() - start
        return init, time.monotonic() - start
    finally:
        proc.kill()
        proc.wait()


def lkctl(*args: str, env: dict[str, str]) -> str:
    return subprocess.run([str(BIN / "lkctl"), *args], env=env, check=True, capture_output=True, text=True).stdout


PHASES = (
    ("qemu started", None),
    ("kernel -> init", INIT),
    ("init ready", MARKER),
    ("sshd started", b"[sshd] "),  # dropbear's first line: its container is set up, it has started
    ("sshd listening", b"lkctl-init: sshd listening"),
    ("first handshake", None),  # the holder's log line once its one handshake succeeded
)


ORDER = [p for p, _ in PHASES] + ["vm.run returned", "first exec returned"]


class Watch:
    """Timestamps (since `start`) of the new VM's pidfile and console markers, polled every 5 ms in a thread."""

    def __init__(self, vms: Path, start: float) -> None:
        self.vms, self.start = vms, start
        self.seen: dict[str, float] = {}
        self.before = set(vms.iterdir()) if vms.is_dir() else set()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        vm_dir = None
        while not self.stop.is_set():
            now = time.monotonic() - self.start
            if vm_dir is None and self.vms.is_dir():
                fresh = set(self.vms.iterdir()) - self.before
                vm_dir = next((d for d in fresh if d.is_dir()), None)
            if vm_dir is not None:
                if "qemu started" not in self.seen and (vm_dir / "qemu.pid").exists():
                    self.seen["qemu started"] = now
                try:
                    console = (vm_dir / "console.log").read_bytes()
                except OSError:
                    console = b""
                log = vm_dir / "holder.log"
                if "first handshake" not in self.seen and log.exists() and b"connected" in log.read_bytes():
                    self.seen["first handshake"] = now
                for name, marker in PHASES[1:]:
                    if name not in self.seen and marker is not None and marker in console:
                        self.seen[name] = now
            time.sleep(0.005)

    def done(self) -> dict[str, float]:
        self.stop.set()
        self.thread.join()
        return self.seen


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _process_cpu(pid: int) -> float:
    """CPU seconds (user + system) a live process has used so far; 0 when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8").rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _host_cpu(vm_dir: Path) -> tuple[float, float]:
    """CPU seconds of the VM's connection holder and of its QEMU so far (read from /proc before the VM goes)."""
    record = json.loads((vm_dir / "vm.json").read_text())
    holder = sum(_process_cpu(int(h[0])) for h in record.get("helpers", []) if "holderd" in h[-1])
    return holder, _process_cpu(int(record.get("pid") or 0))


CPU: dict[str, list[float]] = {}  # host CPU seconds of lkctl's side per round: the CLIs, the holder, QEMU


def via_lkctl(env: dict[str, str], n: int) -> tuple[float, dict[str, float]]:
    """(b): `lkctl vm.run -d` + the first `lkctl vm.exec true`, as a user types them; with a phase breakdown."""
    name = f"bench{n}"
    start = time.monotonic()
    watch = Watch(Path(env["LKCTL_HOME"]) / "state" / "vms", start)
    cpu_before = _children_cpu()
    lkctl("vm.run", "--image=minimal", "-d", "--name", name, env=env)
    returned = time.monotonic() - start
    cpu_run = _children_cpu()
    lkctl("vm.exec", name, "--", "true", env=env)
    elapsed = time.monotonic() - start
    cpu_exec = _children_cpu()
    phases = watch.done()
    phases["vm.run returned"] = returned
    phases["first exec returned"] = elapsed
    holder, qemu = _host_cpu(next(d for d in (Path(env["LKCTL_HOME"]) / "state" / "vms").iterdir() if d.is_dir()))
    for key, value in (("vm.run CLI*", cpu_run - cpu_before), ("vm.exec CLI", cpu_exec - cpu_run),
                       ("holder daemon", holder), ("QEMU", qemu)):  # fmt: skip
        CPU.setdefault(key, []).append(value)
    lkctl("vm.rm", "--force", name, env=env)
    return elapsed, phases


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import precompile

    precompile()
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
        phases: dict[str, list[float]] = {}
        steps: dict[str, list[float]] = {}  # each phase minus the one before it, per round
        raw_init: list[float] = []
        for i in range(args.rounds):
            a.append(raw_qemu(boot.kernel, boot.initrd, cmdline, accel, keys.client_pub.parent)[1])
            init, ready = raw_qemu(vmlinux, boot.initrd, cmdline, accel, keys.client_pub.parent)
            a2.append(ready)
            raw_init.append(init)
            took, marks = via_lkctl(env, i)
            b.append(took)
            for k, v in marks.items():
                phases.setdefault(k, []).append(v)
            seen = [(k, marks[k]) for k in ORDER if k in marks]
            for (_, before), (k, v) in itertools.pairwise(seen):
                steps.setdefault(k, []).append(v - before)
            print(
                f"round {i + 1}: raw qemu (bzImage) {a[-1]:.2f}s, raw qemu (PVH vmlinux) {a2[-1]:.2f}s, "
                f"lkctl run -d + first exec {b[-1]:.2f}s (steps: "
                + ", ".join(f"{k} +{steps[k][-1]:.2f}" for k in ORDER if k in marks and steps.get(k))
                + f"; load {os.getloadavg()[0]:.1f})",
                flush=True,
            )
        ma, ma2, mb = statistics.median(a), statistics.median(a2), statistics.median(b)
        print(f"accel={accel} rounds={args.rounds}")
        print(f"(a)  raw QEMU, bzImage, boot to '{MARKER.decode()}': median {ma:.2f}s")
        print(f"(a') raw QEMU, PVH vmlinux, boot to '{MARKER.decode()}': median {ma2:.2f}s")
        mi = statistics.median(raw_init)
        print(f"     phases: kernel -> init {mi:.2f}s, init -> ready {ma2 - mi:.2f}s")
        print(f"(b)  lkctl vm.run -d until first vm.exec true returns: median {mb:.2f}s")
        print("(b) phases, median seconds since `lkctl vm.run` started (console markers seen by polling every 5 ms),")
        print("    and the median step from the phase before:")
        for k in ORDER:
            if phases.get(k):
                step = f"+{statistics.median(steps[k]):.2f}s" if steps.get(k) else ""
                print(f"     {k:22} {statistics.median(phases[k]):6.2f}s {step:>8}  (n={len(phases[k])})")
        print("(b) host CPU seconds of lkctl's side, median per round (QEMU's for comparison). *with the processes it")
        print("    reaps: QEMU's start-up until it daemonized and the holder's until it forked. The holder runs while")
        print("    the guest boots, so on a busy machine its CPU competes with QEMU's:")
        for k, spent in CPU.items():
            print(f"     {k:22} {statistics.median(spent):6.2f}s  (per round: {', '.join(f'{x:.2f}' for x in spent)})")
        print(f"ratio b/a = {mb / ma:.2f}   ratio b/a' = {mb / ma2:.2f}  (target b/a' <= 1.3; machine shared)")


if __name__ == "__main__":
    main()

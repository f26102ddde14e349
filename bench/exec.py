"""Warm exec benchmark: `true` in a running VM through lkctl vs OpenSSH, all against the same VM, interleaved.

(a) `lkctl vm.exec VM -- true` (the CLI; its VM's connection holder answers) vs (b) a fresh OpenSSH `ssh true`
with the same key and pinned known_hosts; (c) `lkctl.ssh.session(target).exec(["true"])` on a held connection in
this process, and (e) the Python API's `Vm.session().exec(["true"])` over it, vs (d) `ssh true` through an OpenSSH
ControlMaster socket. Prints medians and the ratios a/b, c/d, e/d.
Usage: python bench/exec.py [--rounds N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

BIN = Path(sys.executable).parent


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import precompile

    precompile()
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="lkbench-") as home:
        os.environ["LKCTL_HOME"] = home
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        from lkctl import api, ssh
        from lkctl.runtime import state
        from lkctl.runtime.vm import ssh_target

        lkctl = str(BIN / "lkctl")
        subprocess.run([lkctl, "vm.run", "--image=minimal", "-d", "--name", "bx"], check=True, capture_output=True)
        try:
            target = ssh_target(state.find_vm("bx"))
            base = [
                "ssh", "-F", "/dev/null", "-i", str(target.client_key), "-p", str(target.port),
                "-o", f"UserKnownHostsFile={target.known_hosts}", "-o", "StrictHostKeyChecking=yes",
                "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", "-o", "LogLevel=ERROR",
            ]  # fmt: skip
            control = Path(home) / "cm.sock"
            master = [*base, "-o", f"ControlPath={control}"]
            subprocess.run([*master, "-MNf", "-o", "ControlMaster=yes", "root@127.0.0.1"], check=True)

            def run(argv: list[str]) -> Callable[[], object]:
                return lambda: subprocess.run(argv, check=True, stdin=subprocess.DEVNULL)

            sides: dict[str, Callable[[], object]] = {
                "lkctl vm.exec": run([lkctl, "vm.exec", "bx", "--", "true"]),
                "ssh (fresh)": run([*base, "root@127.0.0.1", "true"]),
                "ssh (ControlMaster)": run([*master, "root@127.0.0.1", "true"]),
            }
            with ssh.session(target) as s, api.get("bx").session() as held:
                sides["lkctl.ssh.session().exec"] = lambda: s.exec(["true"])
                sides["Vm.session().exec"] = lambda: held.exec(["true"])
                times: dict[str, list[float]] = {k: [] for k in sides}
                for fn in sides.values():
                    fn()  # warm-up: page cache, the guest's first fork of the shell
                for _ in range(args.rounds):
                    for name, fn in sides.items():
                        times[name].append(timed(fn))
            subprocess.run([*master, "-O", "exit", "root@127.0.0.1"], check=False, capture_output=True)
        finally:
            subprocess.run([lkctl, "vm.rm", "--force", "bx"], check=False, capture_output=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"exec of `true` in a running VM, median of {args.rounds} interleaved rounds:")
    for name, m in med.items():
        print(f"  {name:28} {m * 1000:7.1f} ms")
    print(f"ratio CLI vm.exec / fresh ssh          = {med['lkctl vm.exec'] / med['ssh (fresh)']:.2f}  (target <= 1.0)")
    r = med["lkctl.ssh.session().exec"] / med["ssh (ControlMaster)"]
    print(f"ratio session().exec / ControlMaster   = {r:.2f}  (target <= 1.0)")
    r = med["Vm.session().exec"] / med["ssh (ControlMaster)"]
    print(f"ratio Vm.session().exec / ControlMaster = {r:.2f}  (target <= 1.0)")


if __name__ == "__main__":
    main()

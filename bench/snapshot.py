"""Warm-start benchmark: `lkctl vm.run -d --snapshot` → first `vm.exec true` (restored from a memory snapshot) vs
the cold `lkctl vm.run -d` → first `vm.exec true`, alternating in one run on the same image (`minimal`).

The image is built and its snapshot taken first, untimed (a first warm start pays one template boot: printed).
Prints both medians, the ratio (issue 12 target: warm ≤ 0.25× cold) and where the warm path's time goes, from the
seconds at which `vm.run` printed its lines. Usage: python bench/snapshot.py [--rounds N]
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import BIN, bench_args, bench_home, lkctl

WARM_LINES = (  # vm.run's stderr lines on the warm path, in order
    ("image resolved", "lkctl: accelerator"),
    ("restored + identity", "restored from snapshot"),
    ("vm.run returned", None),
    ("first exec returned", None),
)


def run_then_exec(env: dict[str, str], name: str, *, warm: bool) -> tuple[float, dict[str, float]]:
    """`vm.run -d [--snapshot]` then the first `vm.exec true`; seconds, and when vm.run's lines appeared."""
    argv = [str(BIN / "lkctl"), "vm.run", "--image=minimal", "-d", "--name", name, *(["--snapshot"] if warm else [])]
    start = time.monotonic()
    marks: dict[str, float] = {}
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    lines = []
    for line in proc.stderr:
        lines.append(line)
        for label, text in WARM_LINES:
            if text and text in line and label not in marks:
                marks[label] = time.monotonic() - start
    proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"vm.run failed:\n{''.join(lines)}")
    if warm and "restored from snapshot" not in "".join(lines):
        raise SystemExit(f"the warm run did not restore:\n{''.join(lines)}")
    marks["vm.run returned"] = time.monotonic() - start
    lkctl("vm.exec", name, "--", "true", env=env)
    took = time.monotonic() - start
    marks["first exec returned"] = took
    lkctl("vm.rm", "--force", name, env=env)
    return took, marks


def main() -> None:
    args = bench_args(__doc__, rounds=3)
    with bench_home() as env:
        start = time.monotonic()
        first = lkctl("vm.run", "--image=minimal", "-d", "--snapshot", "--name", "first", env=env)
        lkctl("vm.rm", "--force", "first", env=env)
        taken = [line for line in first.stderr.splitlines() if "snapshot taken" in line]
        print(f"build + first warm start (takes the snapshot): {time.monotonic() - start:.1f}s; {' '.join(taken)}")
        cold, warm = [], []
        phases: dict[str, list[float]] = {}
        for i in range(args.rounds):
            cold.append(run_then_exec(env, f"cold{i}", warm=False)[0])
            took, marks = run_then_exec(env, f"warm{i}", warm=True)
            warm.append(took)
            for k, v in marks.items():
                phases.setdefault(k, []).append(v)
            print(f"round {i + 1}: cold run -d + first exec {cold[-1]:.2f}s, warm (--snapshot) {warm[-1]:.2f}s")
        mc, mw = statistics.median(cold), statistics.median(warm)
        print(f"rounds={args.rounds}")
        print(f"(c) lkctl vm.run -d until the first vm.exec true returns: median {mc:.2f}s")
        print(f"(w) lkctl vm.run -d --snapshot until the first vm.exec true returns: median {mw:.2f}s")
        print("(w) phases, median seconds since `lkctl vm.run` started:")
        for label, _ in WARM_LINES:
            if phases.get(label):
                print(f"     {label:22} {statistics.median(phases[label]):6.2f}s")
        print(f"ratio w/c = {mw / mc:.2f}  (target <= 0.25; machine shared)")


if __name__ == "__main__":
    main()

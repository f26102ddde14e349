"""Start-up and scale-of-state benchmark, each pair interleaved in one run:

- import cost: `python -c "import invoke"` vs `python -c "import invoke, lkctl.tasks"` (lkctl's own cost on top
  of invoke's; target <= 20 ms), plus what `-X importtime` attributes to lkctl's modules;
- `lkctl vm.ps --all` with 1,000 recorded (stopped) VMs vs with none (target <= 1.15x);
- an unchanged `lkctl image.build minimal` (everything cached) vs `lkctl --version` (target <= 1.5x), and the
  same build through the full (invoke) CLI, which an LKCTL_* variable selects.

Usage: python bench/startup.py [--rounds N] [--only imports|ps|build]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent
LKCTL = str(BIN / "lkctl")


CPU: dict[str, float] = {}  # median CPU seconds (user + system) of the same runs, by side


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU seconds of one run. On a shared machine the CPU time is the steadier of the two."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(
        argv, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL
    )
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def interleaved(sides: dict[str, tuple[list[str], dict[str, str]]], rounds: int) -> dict[str, float]:
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in sides}
    for argv, env in sides.values():
        timed(argv, env)  # warm-up
    for _ in range(rounds):
        for name, (argv, env) in sides.items():
            times[name].append(timed(argv, env))
    CPU.update({k: statistics.median(c for _, c in v) for k, v in times.items()})
    return {k: statistics.median(w for w, _ in v) for k, v in times.items()}


def instructions(argv: list[str], env: dict[str, str]) -> int | None:
    """User-space instructions one run executes, counted by valgrind's callgrind (None without valgrind). Unlike
    wall or CPU time it does not move with the machine's load: on this shared VM the CPU-time ratio of the same
    code swung 0.99-1.25 between runs, the instruction ratio stays put. Kernel time (stat calls) is not counted."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        return None
    with tempfile.TemporaryDirectory(prefix="lkbench-cg-") as tmp:
        out = Path(tmp) / "cg.out"
        subprocess.run(
            [valgrind, "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, *argv],
            env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        for row in out.read_text().splitlines():
            if row.startswith(("totals:", "summary:")):
                return int(row.split()[1])
    return None


def line(label: str, wall: float, name: str) -> str:
    return f"  {label:38} {wall * 1000:7.1f} ms wall, {CPU[name] * 1000:7.1f} ms CPU"


def lkctl_import_ms(rounds: int) -> tuple[float, float]:
    """Self time of lkctl's own modules in `import invoke, lkctl.tasks`, as -X importtime reports it: the median
    and the least of `rounds` runs (on a shared machine the least is the cost, the rest is waiting)."""
    totals = []
    for _ in range(rounds):
        out = subprocess.run(
            [sys.executable, "-X", "importtime", "-c", "import invoke, lkctl.tasks"], capture_output=True, text=True
        ).stderr
        total = 0
        for row in out.splitlines():
            parts = row.split("|")
            if len(parts) == 3 and parts[2].strip().startswith("lkctl"):
                total += int(parts[0].split(":")[1])
        totals.append(total / 1000)
    return statistics.median(totals), min(totals)


def recorded_vms(home: Path, n: int) -> None:
    """`n` stopped VMs as `vm.run` leaves them (a full argv, a dead pid), written with lkctl's own state code."""
    os.environ["LKCTL_HOME"] = str(home)
    from lkctl.runtime import state

    argv = ["qemu-system-x86_64", "-name", "lkctl-00000000", "-machine", "q35,accel=tcg", *(["-device", "x"] * 20)]
    for i in range(n):
        vm_id = f"{i:08x}"
        state.save_record(
            state.VmRecord(
                id=vm_id, name=f"vm{i}", image="minimal", image_format="kernel+initrd",
                created=f"2026-01-01T00:{i // 60 % 60:02d}:{i % 60:02d}.000+00:00", memory=1024, cpus=1,
                ssh_port=20000 + i, argv=argv, accel="tcg", pid=4_000_000 + i, pid_start="1234",
                boot_id="00000000-0000-0000-0000-000000000000", image_digest="sha256:" + "0" * 64,
            )
        )  # fmt: skip
    assert len(state.all_records()) == n


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import precompile

    precompile()
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--only", choices=["imports", "ps", "build"], help="run just this pair")
    args = parser.parse_args()
    want = {args.only} if args.only else {"imports", "ps", "build"}
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    py = sys.executable
    imports: dict[str, float] = {}
    ps: dict[str, float] = {}
    build: dict[str, float] = {}
    ps_instructions: tuple[int, int] | None = None
    with tempfile.TemporaryDirectory(prefix="lkbench-") as tmp:
        empty, full = Path(tmp) / "empty", Path(tmp) / "full"
        env0 = dict(os.environ, LKCTL_HOME=str(empty))
        if "imports" in want:
            imports = interleaved(
                {"invoke": ([py, "-c", "import invoke"], env0),
                 "lkctl": ([py, "-c", "import invoke, lkctl.tasks"], env0)},
                args.rounds,
            )  # fmt: skip
        if "ps" in want:
            recorded_vms(full, 1000)
            env1 = dict(os.environ, LKCTL_HOME=str(full))
            ps = interleaved(
                {"none": ([LKCTL, "vm.ps", "--all"], env0), "1000": ([LKCTL, "vm.ps", "--all"], env1)}, args.rounds
            )
            counts = [instructions([LKCTL, "vm.ps", "--all"], env) for env in (env0, env1)]
            ps_instructions = (counts[0], counts[1]) if counts[0] and counts[1] else None
        if "build" in want:
            build_env = dict(os.environ, LKCTL_HOME=str(empty))
            subprocess.run([LKCTL, "image.build", "minimal"], env=build_env, check=True, capture_output=True)  # untimed
            # an LKCTL_* variable invoke could read sends `image.build SOURCE` past the lean path (lkctl/fastbuild.py)
            full_env = dict(build_env, LKCTL_BENCH_FULL_CLI="1")
            build = interleaved(
                {"version": ([LKCTL, "--version"], build_env), "build": ([LKCTL, "image.build", "minimal"], build_env),
                 "build-full": ([LKCTL, "image.build", "minimal"], full_env)},
                args.rounds,
            )  # fmt: skip
    print(f"start-up, medians of {args.rounds} interleaved rounds (machine shared with other work):")
    if imports:
        own, own_min = lkctl_import_ms(args.rounds)
        print(line("import invoke", imports["invoke"], "invoke"))
        print(line("import invoke, lkctl.tasks", imports["lkctl"], "lkctl"))
        print(f"  lkctl's own import cost: {(imports['lkctl'] - imports['invoke']) * 1000:.1f} ms wall, "
              f"{(CPU['lkctl'] - CPU['invoke']) * 1000:.1f} ms CPU; -X importtime self time of lkctl.* {own:.1f} ms "
              f"median, {own_min:.1f} ms least (target <= 20 ms)")  # fmt: skip
    if ps:
        print(line("vm.ps --all, no VM", ps["none"], "none"))
        print(line("vm.ps --all, 1,000 recorded VMs", ps["1000"], "1000"))
        counted = f"; instructions {ps_instructions[1] / ps_instructions[0]:.3f}" if ps_instructions else ""
        print(
            f"ratio vm.ps 1,000 VMs / none            = {ps['1000'] / ps['none']:.2f} wall, "
            f"{CPU['1000'] / CPU['none']:.2f} CPU{counted}  (target <= 1.15)"
        )
        if ps_instructions:
            print(f"  (callgrind: {ps_instructions[0]:,} instructions with no VM, {ps_instructions[1]:,} with 1,000)")
    if build:
        print(line("lkctl --version", build["version"], "version"))
        print(line("lkctl image.build minimal (unchanged)", build["build"], "build"))
        print(line("  the same through invoke (full CLI)", build["build-full"], "build-full"))
        print(
            f"ratio unchanged image.build / --version = {build['build'] / build['version']:.2f} wall, "
            f"{CPU['build'] / CPU['version']:.2f} CPU  (target <= 1.5); through invoke "
            f"{build['build-full'] / build['version']:.2f} wall, {CPU['build-full'] / CPU['version']:.2f} CPU"
        )


if __name__ == "__main__":
    main()

"""Dev VM benchmark: `lkctl dev.boot` to the first `lkctl dev.shell -- true`, and `dev.test` against `vm.exec`.

(a) boot: a fresh dev VM for a throwaway project (the dev image built or installed first, untimed), timed from
`dev.boot` until the first `dev.shell -- true` returns. (b) per-command overhead on the running VM: `dev.test --
CMD` (project lookup, test.yaml looked for, the command in /app with the image's PATH) and `dev.shell -- CMD`
against `vm.exec NAME -- CMD` of the same command, each run as a user types it (one CLI process per call,
interleaved). Prints the medians and the ratios (target: dev.test / vm.exec <= 1.2).
Usage: python bench/dev.py [--rounds N] [--memory MB]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent
COMMAND = ["sh", "-c", "echo bench"]


def lkctl(*args: str, env: dict[str, str], cwd: Path) -> str:
    return subprocess.run(
        [str(BIN / "lkctl"), *args], env=env, cwd=cwd, check=True, capture_output=True, text=True
    ).stdout


def timed(*args: str, env: dict[str, str], cwd: Path) -> float:
    start = time.monotonic()
    lkctl(*args, env=env, cwd=cwd)
    return time.monotonic() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--memory", type=int, default=1024, help="dev VM memory in MB (default 1024)")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import precompile

    precompile()
    with tempfile.TemporaryDirectory(prefix="lkbench-dev-") as tmp:
        home, project = Path(tmp) / "home", Path(tmp) / "project"
        project.mkdir()
        (project / "Makefile").write_text("test:\n\t@echo bench\n")
        # a state dir of its own; the image cache and installed images are the user's (the build is not timed)
        env = dict(os.environ, LKCTL_STATE_DIR=str(home), LKCTL_DEV_MEMORY=str(args.memory))
        lkctl("dev.install", env=env, cwd=project)
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        from lkctl.dev.image import installed_dev_image
        from lkctl.images import resolve_image

        image = installed_dev_image()
        assert image is not None
        resolve_image(image.image)  # built (or found) once, untimed
        start = time.monotonic()
        lkctl("dev.boot", env=env, cwd=project)
        lkctl("dev.shell", "--", "true", env=env, cwd=project)
        boot = time.monotonic() - start
        try:
            status = json.loads(lkctl("dev.status", "--json", env=env, cwd=project))
            vm = status["vm_id"]
            dev_test, dev_shell, vm_exec = [], [], []
            for i in range(args.rounds):
                dev_test.append(timed("dev.test", "--", *COMMAND, env=env, cwd=project))
                vm_exec.append(timed("vm.exec", vm, "--", *COMMAND, env=env, cwd=project))
                dev_shell.append(timed("dev.shell", "--", *COMMAND, env=env, cwd=project))
                print(f"round {i + 1}: dev.test {dev_test[-1]:.2f}s, vm.exec {vm_exec[-1]:.2f}s, "
                      f"dev.shell {dev_shell[-1]:.2f}s")  # fmt: skip
            md, ms, mv = (statistics.median(t) for t in (dev_test, dev_shell, vm_exec))
            cmd = " ".join(COMMAND)
            print(f"(a) dev.boot until the first dev.shell -- true returns: {boot:.2f}s ({args.memory} MB, "
                  f"/app over {status['share']})")  # fmt: skip
            print(f"(b) dev.test  -- {cmd}: median {md:.2f}s over {args.rounds} rounds")
            print(f"(c) dev.shell -- {cmd}: median {ms:.2f}s")
            print(f"(d) vm.exec   -- {cmd}: median {mv:.2f}s")
            print(f"ratio b/d = {md / mv:.2f}, c/d = {ms / mv:.2f} (target <= 1.2; load {os.getloadavg()[0]:.1f})")
        finally:
            lkctl("dev.stop", env=env, cwd=project)


if __name__ == "__main__":
    main()

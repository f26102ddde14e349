"""dev.*: the project's dev VM (install, update, boot, stop, status, shell, serve, test, claude)."""

from __future__ import annotations

import json as _json
import sys

from invoke.collection import Collection
from invoke.context import Context
from invoke.exceptions import Exit

from lkctl.tasks._adapter import adapt, remainder_argv, settings_from, task

__all__ = ["boot", "claude", "install", "serve", "shell", "status", "stop", "test", "update"]


def _err(msg: str) -> None:
    print(f"lkctl: {msg}", file=sys.stderr, flush=True)


def _exit(code: int) -> None:
    if code:
        raise Exit(code=code)


@task(help={"source": "where from: auto (default), cdn, github or oci", "force": "install again even if present"})
@adapt
def install(c: Context, source: str = "", force: bool = False) -> None:
    """Install the dev image (pulled from the configured sources, else built here)."""
    from lkctl.dev.image import install_dev_image

    image = install_dev_image(source=source or None, force=force)
    _err(f"dev image {image.name} {image.version} installed ({image.path})")


@task(help={"check": "only say whether a newer dev image exists"})
@adapt
def update(c: Context, check: bool = False) -> None:
    """Update the dev image to the newest version (--check only looks)."""
    from lkctl.dev.image import dev_image_update

    _changed, message = dev_image_update(check=check)
    _err(message)


@task(
    help={
        "memory": "guest memory in MB (default lkctl.dev.memory, 4096)",
        "cpus": "guest CPUs (default lkctl.dev.cpus, 2)",
        "fresh": "discard the project's dev VM and its disk, and boot a new one",
        "timeout": "seconds to wait for the guest to answer SSH",
    }
)
@adapt
def boot(c: Context, memory: int = 0, cpus: int = 0, fresh: bool = False, timeout: int = 0) -> None:
    """Boot this project's dev VM in the background (the project at /app); idempotent."""
    from lkctl.dev.environment import BootOptions, boot_dev
    from lkctl.dev.project import GUEST_APP, find_project
    from lkctl.dev.share import share_of

    project = find_project()
    result = boot_dev(project, settings_from(c), BootOptions(memory, cpus, fresh, float(timeout)), say=_err)
    r = result.record
    _err(
        f"dev VM {r.name} ({r.id}) {result.how}: {project.root} at {GUEST_APP} ({share_of(r)}), "
        f"ssh on 127.0.0.1:{r.ssh_port}. "
        "Try: dev.shell, dev.test, dev.serve; dev.stop when done"
    )


@task
@adapt
def stop(c: Context) -> None:
    """Stop this project's dev VM (its disk is kept for the next dev.boot)."""
    from lkctl.dev.environment import stop_dev
    from lkctl.dev.project import find_project

    project = find_project()
    _err(f"dev VM {project.vm_name} {stop_dev(project, settings_from(c))}")


def _uptime(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


@task(help={"json": "print JSON"})
@adapt
def status(c: Context, json: bool = False) -> None:
    """This project's dev VM and the dev image: running, id, memory, CPUs, uptime, SSH, mount, forwards."""
    from lkctl.dev.environment import dev_status
    from lkctl.dev.project import find_project

    st = dev_status(find_project(), settings_from(c))
    if json:
        print(_json.dumps(st.to_json(), indent=2))
        return
    rows = [
        ("project", st.project),
        ("dev image", f"{st.image} {st.image_version}" if st.image else "not installed (dev.install)"),
        ("VM", f"{st.vm_name} ({st.vm_id})" if st.vm_id else f"{st.vm_name} (not created; dev.boot)"),
        ("status", st.status),
    ]
    if st.exists:
        rows += [
            ("memory", f"{st.memory} MB"),
            ("CPUs", str(st.cpus)),
            ("uptime", _uptime(st.uptime)),
            ("ssh", f"127.0.0.1:{st.ssh_port}" if st.ssh_port else "-"),
            ("mounted", st.mounted or "-"),
            ("forwards", ", ".join(st.forwards) or "-"),
        ]
    width = max(len(k) for k, _ in rows)
    print("\n".join(f"{k:<{width}}  {v}" for k, v in rows))


@task(help={"console": "attach to the VM's serial console instead (works without SSH; Ctrl-] detaches)"})
@adapt
def shell(c: Context, console: bool = False) -> None:
    """A login shell in /app of this project's dev VM; `dev.shell -- CMD` runs CMD there (exit code passes)."""
    from lkctl.dev.project import find_project

    project = find_project()
    argv = remainder_argv(c)
    if console:
        from lkctl.dev.console import attach_dev_console
        from lkctl.errors import ConfigError

        if argv:
            raise ConfigError("--console attaches a terminal; it does not run a command (drop the words after --)")
        _err(f"\r\n{attach_dev_console(project, sys.stdin.buffer, sys.stdout.buffer, say=_err)}")
        return
    from lkctl.dev.command import shell_dev

    _exit(shell_dev(project, argv or None, stdin=sys.stdin.buffer, stdout=sys.stdout.buffer,
                    stderr=sys.stderr.buffer))  # fmt: skip


@task(
    help={
        "port": "port in the VM and on 127.0.0.1 (default lkctl.dev.serve_port, 8000)",
        "path": "sub-directory of the project to serve from",
        "command": "the server command to run instead of the detected one",
    }
)
@adapt
def serve(c: Context, port: int = 0, path: str = "", command: str = "") -> None:
    """Run the project's server in the dev VM and forward it to 127.0.0.1; Ctrl-C stops both."""
    from lkctl.dev.project import find_project
    from lkctl.dev.serve import ServeOptions, serve_dev

    settings = settings_from(c)
    opts = ServeOptions(port=port or settings.dev.serve_port, path=path, command=command)
    code = serve_dev(find_project(), opts, stdout=sys.stdout.buffer, stderr=sys.stderr.buffer, say=_err)
    _exit(code)


@task(help={"name": "run the command of this name from .lkctl/test.yaml"})
@adapt
def test(c: Context, name: str = "") -> None:
    """Run the project's tests in /app of its dev VM (detected, .lkctl/test.yaml, or `-- CMD`)."""
    from lkctl.dev.command import run_tests
    from lkctl.dev.project import find_project

    code = run_tests(find_project(), name=name, argv=remainder_argv(c), stdout=sys.stdout.buffer,
                     stderr=sys.stderr.buffer, say=_err)  # fmt: skip
    _exit(code)


@task(
    help={
        "no-auth": "hand the agent no credentials at all",
        "auth": "credentials to hand over, comma-separated: anthropic, git, gh, ssh (default lkctl.dev.agent_auth)",
        "model": "the model the agent should use",
    }
)
@adapt
def claude(c: Context, no_auth: bool = False, auth: str = "", model: str = "") -> None:
    """Run the coding agent (claude) in /app of the dev VM, sandboxed, with the credentials you name."""
    from lkctl.dev.agent import AgentOptions, parse_auth, run_agent
    from lkctl.dev.project import find_project
    from lkctl.errors import ConfigError

    if no_auth and auth:
        raise ConfigError("give --auth or --no-auth, not both")
    opts = AgentOptions(auth=parse_auth(auth) if auth else None, no_auth=no_auth, model=model)
    code = run_agent(find_project(), settings_from(c), opts, stdin=sys.stdin.buffer, stdout=sys.stdout.buffer,
                     stderr=sys.stderr.buffer, say=_err)  # fmt: skip
    _exit(code)


ns = Collection("dev", install, update, boot, stop, status, shell, serve, test, claude)

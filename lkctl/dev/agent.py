"""`dev.claude`: a coding agent run in the project's dev VM, in /app, with only the credentials asked for.

What each `--auth` name hands to the agent (and nothing else reaches the guest):
- `anthropic`: ANTHROPIC_API_KEY from this environment, exported in the agent's environment;
- `git`: this project's `git config user.name/user.email` as GIT_AUTHOR_* and GIT_COMMITTER_*;
- `gh`: the host's gh config directory copied to /root/.config/gh (directory 0700, files 0600);
- `ssh`: the host's ssh-agent forwarded for this session only (the only place lkctl ever forwards the agent).
The default is `lkctl.dev.agent_auth` (anthropic,git): tokens and keys that reach further go in only when named.
"""

from __future__ import annotations

import os
import posixpath
import shlex
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from lkctl.dev.environment import BootOptions, boot_dev, find_dev_vm, guest_shell_argv
from lkctl.dev.gitguard import changed_control_files, control_files
from lkctl.dev.project import GUEST_APP, Project, check_shareable
from lkctl.errors import ConfigError, ImageError, VmError
from lkctl.runtime import state
from lkctl.settings import Settings

__all__ = ["AUTH_KINDS", "AgentOptions", "Credentials", "collect_credentials", "parse_auth", "run_agent"]

AUTH_KINDS = ("anthropic", "git", "gh", "ssh")
GUEST_GH_CONFIG = "/root/.config/gh"

# dropbear makes the forwarded agent's socket in its own service's /tmp; commands run chrooted into the VM root,
# where that directory is seen under the service's rootfs (/containers/services/<svc>/rootfs), or into the dev
# image's root disk (/sysroot), which reaches the VM root through init's /proc/1/root
_AGENT_SOCKET_FIX = (
    'if [ -n "${SSH_AUTH_SOCK:-}" ] && [ ! -S "$SSH_AUTH_SOCK" ]; then '
    "for r in /containers/services/*/rootfs /proc/1/root/containers/services/*/rootfs; do "
    '[ -S "$r$SSH_AUTH_SOCK" ] && '
    'SSH_AUTH_SOCK="$r$SSH_AUTH_SOCK" && break; '
    "done; export SSH_AUTH_SOCK; fi"
)


@dataclass(frozen=True)
class AgentOptions:
    auth: tuple[str, ...] | None = None  # None: lkctl.dev.agent_auth
    no_auth: bool = False
    model: str = ""


@dataclass(frozen=True)
class Credentials:
    """What will be handed to the agent (values stay here; describe() names them only)."""

    env: Mapping[str, str] = field(default_factory=dict)
    gh_config: Path | None = None
    ssh_agent: bool = False
    missing: tuple[str, ...] = ()  # asked for but not available, with the reason

    def describe(self) -> list[str]:
        """Lines for the user: exactly what was forwarded, by name, and what could not be."""
        given = sorted(self.env)
        if self.gh_config is not None:
            given.append(f"gh config ({self.gh_config} -> {GUEST_GH_CONFIG}, 0600)")
        if self.ssh_agent:
            given.append("ssh-agent (forwarded for this session)")
        lines = ["forwarded to the agent: " + (", ".join(given) if given else "nothing")]
        if self.missing:
            lines.append("not forwarded: " + "; ".join(self.missing))
        return lines


def parse_auth(text: str) -> tuple[str, ...]:
    """`gh,anthropic` → ("gh", "anthropic"); an unknown name is a ConfigError listing the known ones."""
    names = tuple(dict.fromkeys(n.strip().lower() for n in text.split(",") if n.strip()))
    bad = [n for n in names if n not in AUTH_KINDS]
    if bad:
        raise ConfigError(f"--auth {bad[0]!r}: unknown; choose from {', '.join(AUTH_KINDS)}")
    return names


def _git_config(root: Path, key: str) -> str:
    try:
        out = subprocess.run(
            ["git", "config", "--get", key], cwd=root, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def _gh_config_dir(env: Mapping[str, str]) -> Path:
    if env.get("GH_CONFIG_DIR"):
        return Path(env["GH_CONFIG_DIR"])
    base = Path(env["XDG_CONFIG_HOME"]) if env.get("XDG_CONFIG_HOME") else Path(env.get("HOME", "~")) / ".config"
    return (base / "gh").expanduser()


def collect_credentials(kinds: tuple[str, ...], root: Path, env: Mapping[str, str] | None = None) -> Credentials:
    """Gather what `kinds` name from the host (environment, git config, gh's files, the ssh-agent)."""
    env = os.environ if env is None else env
    out: dict[str, str] = {}
    missing: list[str] = []
    gh: Path | None = None
    agent = False
    for kind in kinds:
        if kind == "anthropic":
            if env.get("ANTHROPIC_API_KEY"):
                out["ANTHROPIC_API_KEY"] = env["ANTHROPIC_API_KEY"]
            else:
                missing.append("anthropic (ANTHROPIC_API_KEY is not set)")
        elif kind == "git":
            name, email = _git_config(root, "user.name"), _git_config(root, "user.email")
            for role in ("AUTHOR", "COMMITTER"):
                if name:
                    out[f"GIT_{role}_NAME"] = name
                if email:
                    out[f"GIT_{role}_EMAIL"] = email
            if not name or not email:
                missing.append("git (user.name/user.email not configured)" if not (name or email) else
                               f"git ({'user.email' if name else 'user.name'} not configured)")  # fmt: skip
        elif kind == "gh":
            d = _gh_config_dir(env)
            if d.is_dir():
                gh = d
            else:
                missing.append(f"gh (no {d})")
        elif kind == "ssh":
            sock = env.get("SSH_AUTH_SOCK", "")
            if sock and Path(sock).exists():
                agent = True
            else:
                missing.append("ssh (no ssh-agent: SSH_AUTH_SOCK is not set or gone)")
    return Credentials(out, gh, agent, tuple(missing))


def _agent_missing(settings: Settings) -> ImageError:
    word = (shlex.split(settings.dev.agent_command) or ["claude"])[0]
    return ImageError(
        f"the coding agent {word!r} is not installed in the dev VM; install it there "
        f"(dev.shell -- npm install -g @anthropic-ai/claude-code, on a dev image with Node) "
        f"or point lkctl.dev.agent_command at another agent"
    )


def run_agent(
    project: Project,
    settings: Settings,
    opts: AgentOptions,
    *,
    stdin: IO[bytes] | None,
    stdout: IO[bytes],
    stderr: IO[bytes],
    say: Callable[[str], None] = lambda _: None,
    warn: Callable[[str], None] | None = None,
) -> int:
    """Boot the dev VM if needed, hand over the chosen credentials, run the agent in /app on a pty. Afterwards,
    `warn` (default `say`) names the git hooks and settings the session changed (lkctl.dev.gitguard)."""
    warn = warn or say
    import io

    from lkctl import ssh
    from lkctl.runtime.vm import ssh_target

    check_shareable(project)  # a VM booted before the check existed may share more than the project
    kinds = () if opts.no_auth else (opts.auth if opts.auth is not None else parse_auth(settings.dev.agent_auth))
    if not settings.dev.agent_command.strip():
        raise ConfigError("lkctl.dev.agent_command is empty: set the command dev.claude runs (e.g. claude)")
    record = find_dev_vm(project)
    if record is None or state.vm_status(record) != "running":
        say("the dev VM is not running; booting it")
        record = boot_dev(project, settings, BootOptions(), say=say).record
    target = ssh_target(record)
    word = shlex.split(settings.dev.agent_command)[0]
    quiet = io.BytesIO()
    probe = guest_shell_argv(f"command -v {shlex.quote(word)}")
    if ssh.exec_command(target, probe, stdout=quiet, stderr=quiet, timeout=60) != 0:
        raise _agent_missing(settings)
    creds = collect_credentials(kinds, project.root)
    if creds.gh_config is not None:
        # the copy follows `docker cp` rules: the parent must exist (a fresh root has no ~/.config), and a copy
        # already there would get this one nested inside it, so the host's config replaces it
        dest, parent = shlex.quote(GUEST_GH_CONFIG), shlex.quote(posixpath.dirname(GUEST_GH_CONFIG))
        prepare = ["/bin/sh", "-c", f"rm -rf {dest} && {{ [ -d {parent} ] || mkdir -p -m 700 {parent}; }}"]
        if ssh.exec_command(target, prepare, stdout=quiet, stderr=quiet, timeout=60) != 0:
            raise VmError(f"cannot create {posixpath.dirname(GUEST_GH_CONFIG)} in the dev VM for the gh config")
        ssh.copy_to(target, creds.gh_config, GUEST_GH_CONFIG)
        fix = f"chmod 700 {GUEST_GH_CONFIG} && find {GUEST_GH_CONFIG} -type f -exec chmod 600 {{}} +"
        ssh.exec_command(target, ["/bin/sh", "-c", fix], stdout=quiet, stderr=quiet, timeout=60)
    for line in creds.describe():
        say(line)
    say(f"starting {settings.dev.agent_command!r} in {GUEST_APP} (the project, read-write)")
    command = settings.dev.agent_command + (f" --model {shlex.quote(opts.model)}" if opts.model else "")
    if creds.ssh_agent:
        command = f"{_AGENT_SOCKET_FIX}; {command}"
    argv = guest_shell_argv(command, env=creds.env)
    before = control_files(project.root)
    try:
        return int(
            ssh.exec_command(target, argv, stdin=stdin, stdout=stdout, stderr=stderr, pty=True,
                             forward_agent=creds.ssh_agent)
        )  # fmt: skip
    finally:
        if changed := changed_control_files(before, control_files(project.root)):
            warn(
                f"the session changed what the host's git runs: {', '.join(changed[:8])}"
                + (f" and {len(changed) - 8} more" if len(changed) > 8 else "")
                + "; check them (git config --local --list; ls -la .git/hooks) before running git on this host"
            )

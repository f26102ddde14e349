"""dev.* through the real `lkctl` command line: one dev VM booted per module and shared by the tests, a second
project booted beside it, then stop/boot, a kill and --fresh at the end (they change the shared VM, so they run
last).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lkctl.dev.command import DEV_PATH
from lkctl.dev.share import choose_share
from tests.boot.conftest import BIN, Cli, qemu_pids_for, read_until
from tests.conftest import require_qemu

pytestmark = [pytest.mark.boot, pytest.mark.timeout(1200)]

PROJECTS = Path(__file__).resolve().parent.parent / "data" / "projects"
SHARE = choose_share("auto")


@dataclass
class Dev:
    home: Path
    project: Path
    cli: Cli  # runs in project/sub: dev.* must find the project from a sub-directory

    def vm_dir(self) -> Path:
        (row,) = [r for r in self.ps() if r["name"] == self.status()["vm_name"]]
        return self.home / "state" / "vms" / str(row["id"])

    def status(self, cli: Cli | None = None) -> dict[str, object]:
        result: dict[str, object] = json.loads((cli or self.cli)("dev.status", "--json").stdout)
        return result

    def ps(self) -> list[dict[str, object]]:
        rows: list[dict[str, object]] = json.loads(self.cli("vm.ps", "--all", "--json").stdout)
        return rows


def _forwards(dev: Dev) -> list[str]:
    forwards = dev.status()["forwards"]
    assert isinstance(forwards, list)
    return [str(f) for f in forwards]


def _git_project(path: Path, sample: str) -> Path:
    shutil.copytree(PROJECTS / sample, path)
    subprocess.run(["git", "init", "-q", str(path)], check=True)
    (path / "sub").mkdir()
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dev]:
    require_qemu()
    base = tmp_path_factory.mktemp("dev")
    home = base / "lkhome"
    project = _git_project(base / "myapp", "make")
    env = dict(os.environ)
    env.update(
        LKCTL_HOME=str(home),
        LKCTL_CACHE_DIR=str(Path(__file__).resolve().parents[2] / ".lkctl-test" / "cache"),
        LKCTL_DEV_MEMORY="1024",  # two dev VMs side by side on a shared CI machine
        LKCTL_VM_READY_TIMEOUT="900",
        PATH=f"{BIN}:{env.get('PATH', '/usr/bin:/bin')}",
    )
    for var in [v for v in env if v.startswith(("LKCTL_VM_MEMORY", "LKCTL_VM_CPUS", "INVOKE_RUNTIME"))]:
        env.pop(var)
    cli = Cli(env, project / "sub")
    booted = cli("dev.boot", timeout=1200)
    assert "booted" in booted.stderr, booted.stderr
    try:
        yield Dev(home, project, cli)
    finally:
        for row in json.loads(cli("vm.ps", "--json", check=False).stdout or "[]"):
            cli("vm.stop", str(row["id"]), check=False)
        left = qemu_pids_for(home)
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        assert not left, f"dev tests left QEMU processes running: {left}"


def test_dev_boot_again_from_a_subdirectory_says_already_running(dev: Dev) -> None:
    again = dev.cli("dev.boot")
    assert "already running" in again.stderr and again.returncode == 0
    st = dev.status(Cli(dev.cli.env, dev.project))  # the project root finds the same VM
    assert st == {**dev.status(), "uptime": st["uptime"]}


def test_dev_status_reports_the_vm(dev: Dev) -> None:
    st = dev.status()
    assert st["running"] is True and st["status"] == "running" and st["exists"] is True
    assert st["project"] == str(dev.project)
    assert str(st["vm_name"]).startswith("dev-myapp-")
    assert (st["memory"], st["cpus"]) == (1024, 2)
    assert isinstance(st["uptime"], float) and st["uptime"] > 0
    # virtiofs where this host serves it (root and virtiofsd), else 9p; dev.status says which
    assert (st["mounted"], st["share"]) == (f"{dev.project} -> /app ({SHARE})", SHARE)
    assert st["image"] and st["image_version"]
    (row,) = [r for r in dev.ps() if r["name"] == st["vm_name"]]
    assert (row["id"], row["ssh_port"]) == (st["vm_id"], st["ssh_port"])
    text = dev.cli("dev.status").stdout
    assert "running" in text and f"127.0.0.1:{st['ssh_port']}" in text


def test_dev_shell_runs_commands_in_app_and_passes_their_exit_code(dev: Dev) -> None:
    out = dev.cli("dev.shell", "--", "sh", "-c", "pwd; ls; exit 7", check=False)
    assert out.returncode == 7
    lines = out.stdout.split()
    assert lines[0] == "/app" and "Makefile" in lines and "sub" in lines
    assert dev.cli("dev.shell", "--", "printf", "%s|", "a b", "$HOME", "'q'").stdout == "a b|$HOME|'q'|"


def test_the_vm_root_is_the_ext4_disk_for_services_and_shells(dev: Dev) -> None:
    # dev.shell runs under the sshd service, whose bind of the VM's root (/:/hostroot) gets the disk: `/` there is
    # the ext4 root disk itself (no initramfs, no /sysroot inside), with /proc, /dev, /app and the resolver in it
    script = "head -n1 /proc/mounts; df -T / | tail -n1; ls /app"
    mounts, df, *app = dev.cli("dev.shell", "--", "sh", "-c", script).stdout.splitlines()
    assert mounts.split()[1:3] == ["/", "ext4"] and df.split()[1] == "ext4", (mounts, df)
    assert "Makefile" in app
    assert dev.cli("dev.shell", "--", "sh", "-c", "test -e /sysroot || test -e /containers", check=False).returncode


TOOLCHAINS = (
    "python3 -c 'import pytest, venv, pip; print(\"py\", 6*7)'"
    " && node -e 'console.log(\"node\", 6*7)'"
    " && php -r 'echo \"php \", 6*7, PHP_EOL;'"
    " && go version && composer --version 2>/dev/null && npm --version"
)


def test_the_dev_image_has_python_node_php_go_composer_and_npm(dev: Dev) -> None:
    # (was tests/boot/test_dev_image.py's, on a VM of its own)
    out = dev.cli("dev.shell", "--", "sh", "-c", TOOLCHAINS, timeout=600).stdout.splitlines()
    assert out[:3] == ["py 42", "node 42", "php 42"]
    assert out[3].startswith("go version go1.") and out[4].startswith("Composer version 2.")
    assert out[5].split(".")[0].isdigit()  # npm's version


def test_a_file_written_in_the_vm_appears_on_the_host_owned_by_the_host_user(dev: Dev) -> None:
    dev.cli("dev.shell", "--", "sh", "-c", "mkdir -p out && echo from-the-vm > out/made.txt")
    made = dev.project / "out" / "made.txt"
    assert made.read_text() == "from-the-vm\n"
    assert (made.stat().st_uid, made.parent.stat().st_uid) == (os.getuid(), os.getuid())
    (dev.project / "from-host.txt").write_text("host")
    assert dev.cli("dev.shell", "--", "cat", "/app/from-host.txt").stdout == "host"
    shutil.rmtree(dev.project / "out")


def test_dev_test_detects_make_and_passes_the_exit_code_through(dev: Dev) -> None:
    ok = dev.cli("dev.test")
    assert "make-test-ran" in ok.stdout and "make test" in ok.stderr
    (dev.project / "FAIL").touch()
    try:
        failed = dev.cli("dev.test", check=False)
        assert failed.returncode == 2 and "make-test-ran" in failed.stdout
        assert "Traceback" not in failed.stderr
    finally:
        (dev.project / "FAIL").unlink()
    assert dev.cli("dev.test", "--", "sh", "-c", "exit 5", check=False).returncode == 5


def test_test_yaml_env_reaches_the_command_and_names_pick_commands(dev: Dev) -> None:
    cfg = dev.project / ".lkctl" / "test.yaml"
    cfg.parent.mkdir()
    cfg.write_text(
        "version: 1\n"
        'command: echo "default:$GREETING:$(pwd)"\n'
        "commands:\n"
        "  - {name: env, run: 'echo \"named:$GREETING:$SPACED:$NUMBER\"'}\n"
        "  - {name: fails, run: 'exit 4'}\n"
        "env:\n  GREETING: hello-from-yaml\n  SPACED: 'a  b'\n  NUMBER: 42\n"
    )
    try:
        assert dev.cli("dev.test").stdout == "default:hello-from-yaml:/app\n"
        assert dev.cli("dev.test", "--name", "env").stdout == "named:hello-from-yaml:a  b:42\n"
        assert dev.cli("dev.test", "--name", "fails", check=False).returncode == 4
        assert dev.cli("dev.test", "--", "sh", "-c", 'echo "$GREETING"').stdout == "hello-from-yaml\n"
        missing = dev.cli("dev.test", "--name", "nope", check=False)
        assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "commands: env, fails" in missing.stderr
        cfg.write_text("command: [unclosed\n")
        bad = dev.cli("dev.test", check=False)
        assert bad.returncode == 2
        assert bad.stderr.startswith(f"lkctl: {cfg}: not valid YAML") and bad.stderr.count("\n") == 1
    finally:
        shutil.rmtree(cfg.parent)


def test_dev_test_and_shell_take_the_lean_path_without_a_login_shell_bytes_and_codes_unchanged(dev: Dev) -> None:
    # a profile.d script a login shell would read: dev.test and dev.shell -- CMD run in /app without it, with the
    # image's PATH (what the profile gave them before)
    dev.cli("dev.shell", "--", "sh", "-c", "echo export PROFILE_READ=yes > /etc/profile.d/zz-probe.sh")
    try:
        probe = ["sh", "-c", 'echo "${PROFILE_READ:-no}|$PATH|$(pwd)"']
        expected = f"no|{DEV_PATH}|/app\n"
        timed = {**dev.cli.env, "PYTHONPROFILEIMPORTTIME": "1"}  # which modules the lkctl process imported
        for task in ("dev.test", "dev.shell"):
            out = Cli(timed, dev.cli.cwd)(task, "--", *probe)
            assert out.stdout == expected, (task, out.stdout)
            imported = {line.rsplit("|", 1)[-1].strip() for line in out.stderr.splitlines() if "|" in line}
            assert "lkctl.dev.command" in imported and not {"invoke", "paramiko", "lkctl.settings"} & imported
        # the probe works: a login shell reads it
        assert "yes" in dev.cli("dev.shell", "--", "bash", "-lc", "echo $PROFILE_READ").stdout
    finally:
        dev.cli("dev.shell", "--", "rm", "-f", "/etc/profile.d/zz-probe.sh")
    data = bytes(range(256)) * 64 + b"no newline at the end"  # stdin streamed, output byte for byte
    fed = subprocess.run([str(BIN / "lkctl"), "dev.shell", "--", "cat"], input=data, capture_output=True,
                         env=dev.cli.env, cwd=dev.cli.cwd, timeout=300, check=True)  # fmt: skip
    assert fed.stdout == data
    assert dev.cli("dev.test", "--", "sh", "-c", "kill -TERM $$", check=False).returncode == 128 + 15
    said = dev.cli("dev.test", "--", "sh", "-c", "echo out; echo err >&2; exit 3", check=False)
    assert (said.returncode, said.stdout) == (3, "out\n")
    assert said.stderr.startswith("lkctl: running \"sh -c 'echo out; echo err >&2; exit 3'\" (command line) in /app\n")
    assert re.search(r"\nerr\nlkctl: exit status 3 after \d+\.\ds\n$", said.stderr), said.stderr
    # without the connection holder (its socket moved away) the same line goes over a new SSH connection
    sock = dev.vm_dir() / "holder.sock"
    sock.rename(sock.with_name("holder.away"))
    try:
        over_ssh = dev.cli("dev.test", "--", "sh", "-c", "echo out; echo err >&2; exit 3", check=False)
        assert (over_ssh.returncode, over_ssh.stdout) == (3, "out\n") and "\nerr\n" in over_ssh.stderr
        assert dev.cli("dev.shell", "--", "sh", "-c", 'echo "$PATH|$(pwd)"').stdout == f"{DEV_PATH}|/app\n"
    finally:
        sock.with_name("holder.away").rename(sock)


# a test of a package importing net/http: its first run compiled crypto/tls and the rest under TCG for > 15 min
_GO_HTTP_TEST = """package gohttp

import (
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
)

func TestServe(t *testing.T) {
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "hi") })
	srv := httptest.NewServer(h)
	defer srv.Close()
	resp, err := http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := io.ReadAll(resp.Body); string(b) != "hi" {
		t.Fatalf("got %q", b)
	}
}
"""


def test_go_test_of_a_net_http_package_compiles_no_standard_library_package(dev: Dev) -> None:
    pkg = dev.project / "gohttp"
    pkg.mkdir()
    (pkg / "go.mod").write_text("module example.com/gohttp\n\ngo 1.19\n")
    (pkg / "h_test.go").write_text(_GO_HTTP_TEST)
    try:
        assert dev.cli("dev.shell", "--", "go", "env", "GOCACHE").stdout == "/root/.cache/go-build\n"
        start = time.monotonic()
        out = dev.cli("dev.test", "--", "sh", "-c", "cd gohttp && go test -x ./... 2>&1", timeout=1200)
        took = time.monotonic() - start
        compiled = {w.split(" -p ")[1].split()[0] for w in out.stdout.splitlines() if "/compile " in w and " -p " in w}
        assert compiled == {"example.com/gohttp", "main"}, compiled  # the test package and its testmain only
        vetted = [line for line in out.stdout.splitlines() if "/vet -" in line]  # std's vet facts are cached
        assert len(vetted) == 1, vetted
        assert "ok  \texample.com/gohttp" in out.stdout
        print(f"first go test of a net/http package in the dev VM: {took:.1f}s")
    finally:
        shutil.rmtree(pkg)


@pytest.mark.parametrize(
    ("sample", "marker"),
    [("python", "2 passed"), ("node", "node-test-ran"), ("php", "php-test-ran"), ("go", "ok")],
)
def test_sample_projects_tests_pass_and_fail_in_the_dev_image(dev: Dev, sample: str, marker: str) -> None:
    # swap the shared project's files for the sample's: /app shows them at once, detection reads them on the host
    keep = {".git", "sub"}
    saved = dev.project.parent / "saved"
    saved.mkdir()
    for p in [p for p in dev.project.iterdir() if p.name not in keep]:
        shutil.move(p, saved / p.name)
    try:
        shutil.copytree(PROJECTS / sample, dev.project, dirs_exist_ok=True)
        ok = dev.cli("dev.test", timeout=900)
        assert marker in ok.stdout + ok.stderr
        (dev.project / "FAIL").touch()
        assert dev.cli("dev.test", check=False, timeout=900).returncode != 0
    finally:
        for p in [p for p in dev.project.iterdir() if p.name not in keep]:
            shutil.rmtree(p) if p.is_dir() else p.unlink()
        for p in saved.iterdir():
            shutil.move(p, dev.project / p.name)
        saved.rmdir()


def test_dev_serve_answers_on_the_host_and_ctrl_c_removes_server_and_forward(dev: Dev) -> None:
    port = _free_port()
    url = f"http://127.0.0.1:{port}/"
    # env --default-signal: a Ctrl-C reaches dev.serve even when this test runs in a background job, whose
    # processes inherit SIGINT ignored (a shell without job control ignores it for `cmd &`; Python keeps it so)
    with subprocess.Popen(
        ["env", "--default-signal=INT", str(BIN / "lkctl"), "dev.serve", "--port", str(port)],
        cwd=dev.cli.cwd, env=dev.cli.env,
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    ) as serve:  # fmt: skip
        try:
            assert serve.stderr is not None
            said = read_until(serve.stderr.fileno(), url.encode(), 300)
            assert f"serving /app at {url}".encode() in said, said
            # the URL answers the moment it is printed, with the project's file
            with urllib.request.urlopen(url + "index.html", timeout=30) as page:
                assert b"served-by-dev-serve" in page.read()
            assert f"127.0.0.1:{port}->{port}/tcp" in _forwards(dev)
            serve.send_signal(signal.SIGINT)
            assert serve.wait(180) == 130  # stopping the server in the guest is an SSH handshake: slow under load
        finally:
            if serve.poll() is None:
                serve.kill()
                serve.wait()
    assert f"127.0.0.1:{port}->{port}/tcp" not in _forwards(dev)
    with pytest.raises(OSError):
        urllib.request.urlopen(url, timeout=5)
    # ps must work (it fails, printing nothing, if procps cannot load its libraries) and list no server
    procs = dev.cli("dev.shell", "--", "ps", "-eo", "args").stdout
    assert "ps -eo args" in procs and "http.server" not in procs, procs


def test_dev_serve_on_a_busy_port_is_one_line(dev: Dev) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out = dev.cli("dev.serve", "--port", str(port), check=False)
    assert out.returncode == 2
    assert out.stderr == f"lkctl: port 127.0.0.1:{port} is already in use on this host; choose another with --port\n"
    assert not dev.status()["forwards"]


def test_dev_claude_delivers_exactly_the_chosen_credentials(dev: Dev, tmp_path: Path) -> None:
    subprocess.run(["git", "-C", str(dev.project), "config", "user.name", "Dev Tester"], check=True)
    subprocess.run(["git", "-C", str(dev.project), "config", "user.email", "dev@example.org"], check=True)
    gh = tmp_path / "xdg" / "gh"
    gh.mkdir(parents=True)
    (gh / "hosts.yml").write_text("github.com:\n  oauth_token: gho_not_a_real_token\n")
    agent_sock = tmp_path / "agent.sock"
    agent = subprocess.run(["ssh-agent", "-a", str(agent_sock)], capture_output=True, text=True, check=True)
    agent_pid = int(agent.stdout.split("SSH_AGENT_PID=")[1].split(";")[0])
    try:
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "k")], check=True)
        subprocess.run(["ssh-add", "-q", str(tmp_path / "k")], env={**os.environ, "SSH_AUTH_SOCK": str(agent_sock)},
                       check=True, capture_output=True)  # fmt: skip
        probe = (
            "import os, socket, struct\n"
            "s = socket.socket(socket.AF_UNIX); s.connect(os.environ['SSH_AUTH_SOCK'])\n"
            "s.sendall(struct.pack('>IB', 1, 11)); n = struct.unpack('>I', s.recv(4))[0]; b = s.recv(n)\n"
            "print('AGENT', b[0], struct.unpack('>I', b[1:5])[0])\n"
        )
        (dev.project / "probe_agent.py").write_text(probe)
        command = "env | sort; stat -c '%a %n' /root/.config/gh /root/.config/gh/hosts.yml; python3 probe_agent.py"
        env = {**dev.cli.env, "LKCTL_DEV_AGENT_COMMAND": command, "ANTHROPIC_API_KEY": "sk-ant-test-value",
               "XDG_CONFIG_HOME": str(tmp_path / "xdg"), "SSH_AUTH_SOCK": str(agent_sock)}  # fmt: skip
        everything = Cli(env, dev.cli.cwd)("dev.claude", "--auth", "anthropic,git,gh,ssh")
        out = everything.stdout.replace("\r\n", "\n")
        wanted = [
            "ANTHROPIC_API_KEY=sk-ant-test-value", "GIT_AUTHOR_NAME=Dev Tester", "GIT_COMMITTER_NAME=Dev Tester",
            "GIT_AUTHOR_EMAIL=dev@example.org", "GIT_COMMITTER_EMAIL=dev@example.org",
            "700 /root/.config/gh", "600 /root/.config/gh/hosts.yml", "AGENT 12 1",
        ]  # fmt: skip
        for line in wanted:
            assert line in out.splitlines(), (line, out)
        said = everything.stderr
        assert "forwarded to the agent: ANTHROPIC_API_KEY, GIT_AUTHOR_EMAIL, GIT_AUTHOR_NAME" in said
        assert "gh config" in said and "ssh-agent" in said
        assert "sk-ant-test-value" not in said and "Dev Tester" not in said  # names, never values

        # the default (lkctl.dev.agent_auth = anthropic,git): no gh copy refresh, no agent
        dev.cli("dev.shell", "--", "rm", "-rf", "/root/.config/gh")
        default = Cli(env, dev.cli.cwd)("dev.claude", "--model", "opus 4", check=False)
        assert "ANTHROPIC_API_KEY=sk-ant-test-value" in default.stdout
        assert "SSH_AUTH_SOCK=" not in default.stdout and "AGENT 12" not in default.stdout  # no agent
        assert "No such file" in default.stdout  # gh config not copied

        none = Cli(env, dev.cli.cwd)("dev.claude", "--no-auth", check=False)
        assert "ANTHROPIC_API_KEY" not in none.stdout and "GIT_AUTHOR" not in none.stdout
        assert "forwarded to the agent: nothing" in none.stderr
    finally:
        os.kill(agent_pid, signal.SIGTERM)
        (dev.project / "probe_agent.py").unlink(missing_ok=True)


def test_dev_claude_model_is_passed_quoted(dev: Dev) -> None:
    env = {**dev.cli.env, "LKCTL_DEV_AGENT_COMMAND": "printf '<%s>'"}
    out = Cli(env, dev.cli.cwd)("dev.claude", "--no-auth", "--model", "opus 4; reboot")
    assert out.stdout == "<--model><opus 4; reboot>"


def test_dev_claude_names_the_git_hooks_and_settings_its_session_changed(dev: Dev) -> None:
    hook = dev.project / ".git" / "hooks" / "post-checkout"
    plant = "printf '#!/bin/sh\\necho pwned\\n' > .git/hooks/post-checkout && git config core.pager 'sh -c id'"
    try:
        quiet = Cli({**dev.cli.env, "LKCTL_DEV_AGENT_COMMAND": "true"}, dev.cli.cwd)("dev.claude", "--no-auth")
        assert "changed what the host's git runs" not in quiet.stderr  # a session that touches nothing: no note
        env = {**dev.cli.env, "LKCTL_DEV_AGENT_COMMAND": plant}
        out = Cli(env, dev.cli.cwd)("dev.claude", "--no-auth")
        assert hook.read_text() == "#!/bin/sh\necho pwned\n"  # the guest did write it through the share
        assert (
            "lkctl: the session changed what the host's git runs: .git/config, .git/hooks/post-checkout; check them"
            in out.stderr
        )
    finally:
        hook.unlink(missing_ok=True)
        subprocess.run(["git", "-C", str(dev.project), "config", "--unset", "core.pager"], check=False)


def test_dev_claude_without_the_agent_says_how_to_get_it(dev: Dev) -> None:
    env = {**dev.cli.env, "LKCTL_DEV_AGENT_COMMAND": "no-such-agent --flag"}
    out = Cli(env, dev.cli.cwd)("dev.claude", check=False)
    assert out.returncode == 1 and out.stderr.count("\n") == 1
    assert "'no-such-agent' is not installed in the dev VM" in out.stderr and "lkctl.dev.agent_command" in out.stderr


def test_console_attaches_to_the_serial_console_for_real_and_ctrl_bracket_detaches(dev: Dev) -> None:
    with subprocess.Popen(
        [str(BIN / "lkctl"), "dev.shell", "--console"], cwd=dev.cli.cwd, env=dev.cli.env,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    ) as console:  # fmt: skip
        try:
            assert console.stdin is not None and console.stdout is not None and console.stderr is not None
            time.sleep(1)
            console.stdin.write(b"\necho console-$((6*7)); cd /app && ls Makefile\n")
            console.stdin.flush()
            seen = read_until(console.stdout.fileno(), b"console-42", 120)  # the echoed line has $((6*7))
            if b"\r\nMakefile\r\n" not in seen:
                seen += read_until(console.stdout.fileno(), b"\r\nMakefile\r\n", 60)  # `ls` ran in /app
            assert b"console-42\r\n" in seen and b"\r\nMakefile\r\n" in seen, seen
            # what the guest writes to its console reaches the attached terminal and the log at the same time
            dev.cli("dev.shell", "--", "sh", "-c", "echo kernel-console-marker > /dev/console")
            assert b"kernel-console-marker" in read_until(console.stdout.fileno(), b"kernel-console-marker", 60)
            console.stdin.write(b"\x1d")
            console.stdin.flush()
            assert console.wait(30) == 0
            assert b"Ctrl-] detaches" in console.stderr.read()
        finally:
            if console.poll() is None:
                console.kill()
                console.wait()
    assert "kernel-console-marker" in (dev.vm_dir() / "console.log").read_text(errors="replace")
    assert "kernel-console-marker" in dev.cli("vm.logs", str(dev.status()["vm_id"])).stdout


def test_two_projects_have_two_dev_vms_side_by_side(dev: Dev) -> None:
    other = _git_project(dev.project.parent / "other" / "myapp", "make")  # same basename, another path
    (other / "only-in-other").touch()
    cli = Cli(dev.cli.env, other)
    try:
        cli("dev.boot", timeout=1200)
        mine, theirs = dev.status(), dev.status(cli)
        assert mine["vm_name"] != theirs["vm_name"] and mine["vm_id"] != theirs["vm_id"]
        assert mine["running"] is True and theirs["running"] is True
        assert mine["share"] == theirs["share"] == SHARE  # two virtiofsd at once (no host-wide lock between them)
        assert "only-in-other" in cli("dev.shell", "--", "ls").stdout.split()
        assert "only-in-other" not in dev.cli("dev.shell", "--", "ls").stdout.split()
    finally:
        cli("dev.stop", check=False)
    assert dev.status(cli)["running"] is False and dev.status()["running"] is True


def _console_says(dev: Dev, typed: bytes, expect: bytes) -> bytes:
    """Attach with dev.shell --console, type a line, read until `expect`, detach with Ctrl-]."""
    with subprocess.Popen(
        [str(BIN / "lkctl"), "dev.shell", "--console"], cwd=dev.cli.cwd, env=dev.cli.env,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    ) as console:  # fmt: skip
        try:
            assert console.stdin is not None and console.stdout is not None
            console.stdin.write(b"\n" + typed + b"\n")
            console.stdin.flush()
            seen = read_until(console.stdout.fileno(), expect, 120)
            console.stdin.write(b"\x1d")
            console.stdin.flush()
            assert console.wait(30) == 0
            return seen
        finally:
            if console.poll() is None:
                console.kill()
                console.wait()


def test_the_console_works_with_ssh_down_and_the_root_disk_survives_stop_and_a_kill(dev: Dev) -> None:
    before = dev.status()
    # what the user installs stays: written with dev.shell, flushed as a clean stop would
    dev.cli("dev.shell", "--", "sh", "-c", "echo kept > /root/installed-marker && sync")
    # every dropbear: the listener and each connection's own, the connection holder's open session included
    # (found through /proc with shell builtins: the image's procps tools need libsystemd, which it leaves out)
    kill_all = b'for p in /proc/[0-9]*; do [ "$(cat $p/comm 2>/dev/null)" = dropbear ] && kill -9 ${p#/proc/}; done'
    down = _console_says(dev, kill_all + b"; echo ssh-$((1+1))-down", b"ssh-2-down")
    assert b"ssh-2-down" in down, down  # only the answer has it: the echoed line reads $((1+1))
    assert dev.cli("dev.shell", "--", "true", check=False, timeout=120).returncode != 0  # SSH is really down
    assert b"still-3" in _console_says(dev, b"echo still-$((1+2))", b"still-3")  # the console is not
    assert dev.cli("dev.stop").stderr.startswith(f"lkctl: dev VM {before['vm_name']} ")
    stopped = dev.status()
    assert (stopped["running"], stopped["exists"], stopped["vm_id"]) == (False, True, before["vm_id"])
    again = dev.cli("dev.boot", timeout=1200)
    assert "started again" in again.stderr
    after = dev.status()
    assert (after["vm_id"], after["ssh_port"], after["running"]) == (before["vm_id"], before["ssh_port"], True)
    assert "Makefile" in dev.cli("dev.shell", "--", "ls").stdout.split()  # /app is mounted again
    assert dev.cli("dev.shell", "--", "cat", "/root/installed-marker").stdout == "kept\n"
    # an unclean power-off: QEMU killed with the disk mounted read-write. The next boot checks it first
    dev.cli("dev.shell", "--", "sh", "-c", "echo after-the-kill > /root/killed-marker && sync")
    dev.cli("vm.kill", str(before["vm_id"]))
    assert "started again" in dev.cli("dev.boot", timeout=1200).stderr
    console = (dev.vm_dir() / "console.log").read_text(errors="replace")
    assert "lkctl-init: fsck: lkctl-root: recovering journal" in console, console
    assert "root disk /dev/vda checked (e2fsck -p status" in console
    kept = dev.cli("dev.shell", "--", "cat", "/root/installed-marker", "/root/killed-marker").stdout
    assert kept == "kept\nafter-the-kill\n"
    fresh = dev.cli("dev.boot", "--fresh", timeout=1200)
    assert "booted" in fresh.stderr
    new = dev.status()
    assert new["running"] is True and new["vm_id"] != before["vm_id"]
    assert [r["name"] for r in dev.ps()].count(new["vm_name"]) == 1  # the old VM is gone, not just stopped
    # --fresh: a new overlay on the base image, nothing of the old VM's writes
    assert dev.cli("dev.shell", "--", "test", "-e", "/root/installed-marker", check=False).returncode == 1

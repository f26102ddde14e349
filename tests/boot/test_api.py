"""Docker/Lima habits on vm.*, guest niceties and the Python API (issue 11 items 5, 7, 11), against real VMs.

One VM (`shared`) is booted for the module through the Python API and driven through both the API and the real
`lkctl` command line; tests that stop it run last. docs/api.md's examples boot their own VM.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import textwrap
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import lkctl
from tests.boot.conftest import BIN, Cli, qemu_pids_for
from tests.conftest import REPO, require_qemu

pytestmark = pytest.mark.boot

NAME = "api-vm"


@pytest.fixture(scope="module")
def api_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("api") / "lkhome"


@pytest.fixture(autouse=True)
def lkctl_home(api_home: Path, shared_cache: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test of this module sees the module's lkctl home (so they share its VM) and the shared image cache."""
    monkeypatch.setenv("LKCTL_HOME", str(api_home))
    monkeypatch.setenv("LKCTL_CACHE_DIR", str(shared_cache))
    for var in ("LKCTL_STATE_DIR", "LKCTL_DATA_DIR", "LKCTL_CONFIG_DIR", "LKCTL_OCI_STORE"):
        monkeypatch.delenv(var, raising=False)
    return api_home


@pytest.fixture(scope="module")
def share(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("share")


@pytest.fixture(scope="module")
def shared(api_home: Path, shared_cache: Path, share: Path) -> Iterator[lkctl.Vm]:
    require_qemu()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LKCTL_HOME", str(api_home))
        mp.setenv("LKCTL_CACHE_DIR", str(shared_cache))
        vm = lkctl.run(
            "minimal", name=NAME, memory=384, env={"GREETING": "hi there", "TRICKY": "$(id) 'q' \"d\""},
            volumes=[f"{share}:/data"], timeout=600,
        )  # fmt: skip
        try:
            yield vm
        finally:
            for pid in qemu_pids_for(api_home):
                os.kill(pid, 9)


@pytest.fixture
def cli(api_home: Path, shared_cache: Path, tmp_path: Path) -> Cli:
    env = dict(os.environ)
    env.update(LKCTL_HOME=str(api_home), LKCTL_CACHE_DIR=str(shared_cache), PATH=f"{BIN}:{env.get('PATH', '')}")
    return Cli(env, tmp_path)


def test_env_reaches_exec_shell_and_services_unevaluated(shared: lkctl.Vm) -> None:
    assert shared.exec(["sh", "-c", 'printf "%s|%s" "$GREETING" "$TRICKY"']).text == "hi there|$(id) 'q' \"d\""
    # the sshd service (started by init from /run/config/env) has it in its own environment
    environ = shared.exec(["sh", "-c", "cat /proc/$(pidof dropbear | cut -d' ' -f1)/environ"], check=True).stdout
    assert b"GREETING=hi there" in environ.split(b"\0")
    # the file holding it in the guest is root's only
    assert shared.exec(["stat", "-c", "%a", "/run/config/env"]).text == "600\n"


def test_the_boot_path_runs_no_key_conversion_and_no_json_parsing(shared: lkctl.Vm) -> None:
    # dropbear serves the host key lkctl wrote in dropbear's format (the handshake pinned it), not a converted copy
    argv = shared.exec(["sh", "-c", "tr '\\0' ' ' </proc/$(pidof dropbear | cut -d' ' -f1)/cmdline"], check=True).text
    assert "-r /hostroot/run/config/ssh/dropbear_ed25519_host_key" in argv
    assert shared.exec(["ls", "/containers/services/sshd/tmp/upper/etc/dropbear"]).text == ""  # nothing converted
    # the assignments the builder made, which the init sources instead of running json.awk on the bundle's JSON
    made = shared.exec(["sh", "-c", "cd /containers/services/sshd && ls config.json.C.sh runtime.json.R.sh"])
    assert made.text == "config.json.C.sh\nruntime.json.R.sh\n"


def test_hostname_is_the_vm_name(shared: lkctl.Vm) -> None:
    assert shared.exec(["hostname"]).text == f"{NAME}\n"


def test_files_made_in_a_volume_are_readable_on_the_host(shared: lkctl.Vm, share: Path) -> None:
    shared.exec(["sh", "-c", "umask; echo x > /data/made-in-guest; mkdir /data/dir"], check=True)
    assert shared.exec(["sh", "-c", "umask"]).text.strip() in ("0022", "022")
    # fmode=0644/dmode=0755 minus the umask 027 a daemonized QEMU sets itself: owner and group read
    made = (share / "made-in-guest").stat()
    assert made.st_uid == os.getuid() and made.st_mode & 0o777 == 0o640
    assert (share / "dir").stat().st_mode & 0o777 == 0o750
    assert shared.exec(["stat", "-c", "%a", "/data/made-in-guest"]).text == "644\n"


def test_login_shell_is_bash_where_the_vm_root_has_one(shared: lkctl.Vm) -> None:
    assert shared.exec(["sh", "-c", "echo $SHELL"]).text == "/bin/sh\n"
    # a stand-in bash (the minimal image has none): the next login must go through it
    shared.exec(["sh", "-c", "printf '#!/bin/sh\\nexport VIA_BASH=yes\\nexec /bin/sh \"$@\"\\n' > /bin/bash"])
    shared.exec(["chmod", "755", "/bin/bash"], check=True)
    try:
        assert shared.exec(["sh", "-c", 'echo "$SHELL $VIA_BASH"']).text == "/bin/bash yes\n"
    finally:
        shared.exec(["rm", "-f", "/bin/bash"], check=True)


def test_ssh_config_works_with_real_openssh(shared: lkctl.Vm, cli: Cli, tmp_path: Path) -> None:
    if shutil.which("ssh") is None:
        pytest.fail("ssh (openssh-client) is missing")
    config = tmp_path / "ssh_config"
    config.write_text(cli("vm.ssh-config", NAME).stdout)
    text = config.read_text()
    assert "StrictHostKeyChecking yes" in text and f"Port {shared.ssh_port}" in text
    ssh = ["ssh", "-F", str(config), "-o", "BatchMode=yes", "-o", "ConnectTimeout=60"]
    done = subprocess.run([*ssh, NAME, "true"], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    done = subprocess.run([*ssh, NAME, "hostname"], capture_output=True, text=True, timeout=120, check=False)
    assert done.stdout == f"{NAME}\n"
    # the pin is real: another key under the alias makes OpenSSH refuse
    known = Path(re.search(r'UserKnownHostsFile "([^"]+)"', text)[1])  # type: ignore[index]
    alias, _kind, _ = known.read_text(encoding="utf-8").split()
    other = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    forged = tmp_path / "forged_known_hosts"
    forged.write_text(f"{alias} {' '.join(other.with_suffix('.pub').read_text().split()[:2])}\n")
    config.write_text(text.replace(str(known), str(forged)))
    done = subprocess.run([*ssh, NAME, "true"], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 255 and "host key" in done.stderr.lower()


def test_stats_report_cpu_memory_and_uptime(shared: lkctl.Vm, cli: Cli) -> None:
    stats = json.loads(cli("vm.stats", NAME, "--json").stdout)
    assert stats["memory_bytes"] == 384 * 1024 * 1024 and stats["vcpus"] == 1 and stats["status"] == "running"
    assert stats["rss_bytes"] > 0 and stats["uptime_seconds"] > 0 and stats["cpu_seconds"] > 0
    assert 0 <= stats["cpu_percent"] <= 400
    assert "MEM (RSS / GUEST)" in cli("vm.stats", NAME).stdout


def test_logs_tail_since_and_timestamps(shared: lkctl.Vm, cli: Cli) -> None:
    everything = cli("vm.logs", NAME).stdout
    assert "lkctl-init: ready" in everything
    assert cli("vm.logs", NAME, "--tail", "2").stdout.splitlines() == everything.splitlines()[-2:]
    assert cli("vm.logs", NAME, "--tail", "0").stdout == ""
    stamped = cli("vm.logs", NAME, "--timestamps", "--tail", "5").stdout.splitlines()
    assert len(stamped) == 5
    started = datetime.now(UTC) - timedelta(minutes=30)
    for line in stamped:
        when = datetime.fromisoformat(line.split()[0].rstrip("~").replace("Z", "+00:00"))
        assert started < when <= datetime.now(UTC) + timedelta(seconds=5)
    assert cli("vm.logs", NAME, "--since", "1h").stdout == everything
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert cli("vm.logs", NAME, "--since", future).stdout == ""
    bad = cli("vm.logs", NAME, "--since", "yesterday", check=False)
    assert bad.returncode == 2 and "--since" in bad.stderr and "Traceback" not in bad.stderr


def test_ps_quiet_filter_and_format(shared: lkctl.Vm, cli: Cli) -> None:
    assert cli("vm.ps", "-q").stdout.split() == [shared.id]
    rows = json.loads(cli("vm.ps", "--format", "json", "--filter", "status=running,name=api").stdout)
    assert [r["id"] for r in rows] == [shared.id]
    assert cli("vm.ps", "-q", "--filter", "name=nomatch").stdout == ""
    assert cli("vm.ps", "-q", "--filter", "status=stopped").stdout == ""
    bad = cli("vm.ps", "--filter", "colour=red", check=False)
    assert bad.returncode == 2 and "KEY=VALUE" in bad.stderr
    assert [v.id for v in lkctl.ps()] == [shared.id] and lkctl.get(NAME[:3]) == shared


def test_session_and_exec_results(shared: lkctl.Vm) -> None:
    with shared.session() as s:
        assert [s.exec(["sh", "-c", f"exit {i}"]).exit_code for i in range(4)] == [0, 1, 2, 3]
        assert s.exec(["cat"], input=b"\0bytes\xff").stdout == b"\0bytes\xff"
    with pytest.raises(lkctl.ExecFailed) as failed:
        shared.exec(["sh", "-c", "echo nope >&2; exit 7"], check=True)
    assert failed.value.result.exit_code == 7 and "nope" in failed.value.message


def test_the_console_attaches_through_its_socket_and_detaches_when_input_ends(shared: lkctl.Vm) -> None:
    import io

    from lkctl.dev.console import attach_console

    out = io.BytesIO()
    # no input: it detaches once the console has been quiet for a moment
    assert attach_console(shared.record, None, out) == "detached"


def test_invoke_tasks_called_from_python_take_a_vm_and_cmd(shared: lkctl.Vm, capfd: pytest.CaptureFixture[str]) -> None:
    from invoke.context import Context
    from invoke.exceptions import Exit

    from lkctl.tasks import vm as vmtasks

    vmtasks.exec_(Context(), shared, cmd=["echo", "from", "tasks.py"])
    assert capfd.readouterr().out == "from tasks.py\n"
    with pytest.raises(Exit) as ended:
        vmtasks.exec_(Context(), shared, cmd=["sh", "-c", "exit 4"])
    assert ended.value.code == 4


def test_bad_env_and_hostname_are_refused_before_anything_boots(cli: Cli, api_home: Path) -> None:
    before = set(qemu_pids_for(api_home))
    bad = cli("vm.run", "--image=minimal", "-d", "--name", "never", "-e", "1BAD=x", check=False)
    assert bad.returncode == 2 and "1BAD" in bad.stderr and "Traceback" not in bad.stderr
    bad = cli("vm.run", "--image=minimal", "-d", "--name", "never", "--hostname", "-x-", check=False)
    assert bad.returncode == 2 and "--hostname" in bad.stderr
    assert "never" not in cli("vm.ps", "--all").stdout
    assert set(qemu_pids_for(api_home)) == before


# ---- these stop the shared VM: keep them last ----------------------------------------------------------------


def test_stop_wait_start_kill_several_at_once(shared: lkctl.Vm, cli: Cli, api_home: Path) -> None:
    from invoke.context import Context

    from lkctl.tasks import vm as vmtasks

    # a second VM that never needs SSH, so several VMs can be stopped in one command; started the way a user's
    # tasks.py would, which gets the Vm back
    second = vmtasks.run(
        Context(), image="minimal", detach=True, wait=False, name="second", memory=256, hostname="second-host"
    )
    assert isinstance(second, lkctl.Vm) and second.name == "second" and second.status == "running"
    # an explicit --hostname goes to the guest as opt/lkctl/hostname (over the image's /etc/hostname)
    assert "name=opt/lkctl/hostname,file=hostname" in second.inspect()["argv"]
    assert (second.record.dir / "hostname").read_text() == "second-host\n"
    cli("vm.stop", f"{NAME},second", "--timeout", "60", timeout=600)
    assert cli("vm.ps", "-q").stdout == ""
    waited = cli("vm.wait", NAME, check=False)
    assert (waited.returncode, waited.stdout) == (0, "0\n")  # a clean ACPI power-off
    cli("vm.start", NAME, "--timeout", "600", timeout=900)
    assert shared.status == "running"
    assert shared.exec(["sh", "-c", "echo $GREETING; hostname"]).text == f"hi there\n{NAME}\n"  # kept over start
    started = cli("vm.start", NAME, check=False)
    assert started.returncode == 2 and "already running" in started.stderr
    cli("vm.kill", NAME)
    waited = cli("vm.wait", NAME, check=False)
    assert waited.returncode == 137 and waited.stdout == "137\n"
    cli("vm.rm", NAME, "--", "second")
    assert cli("vm.ps", "--all", "-q").stdout == ""
    missing = cli("vm.rm", "nope", check=False)
    assert missing.returncode != 0 and "nope" in missing.stderr
    assert not qemu_pids_for(api_home)


def test_docs_api_examples_run_against_a_real_vm(api_home: Path) -> None:
    """Every ```python block of docs/api.md, in order, in one namespace; the page's VM must be gone after."""
    require_qemu()
    text = (REPO / "docs" / "api.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) >= 6
    namespace: dict[str, object] = {}
    try:
        for i, block in enumerate(blocks):
            code = compile(textwrap.dedent(block), f"docs/api.md block {i + 1}", "exec")
            exec(code, namespace)
    finally:
        for pid in qemu_pids_for(api_home):
            os.kill(pid, 9)
    assert all(v.name != "docs-demo" for v in lkctl.ps(all=True))
    assert callable(namespace["smoke"])  # the tasks.py example defines a task

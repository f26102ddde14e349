"""Pure parts of issue 11's vm.* additions and the Python facade: no VM needed."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from lkctl.errors import ConfigError
from lkctl.runtime.control import split_vm_names, ssh_config
from lkctl.runtime.guest import env_file_text, guest_files, guest_hostname, write_guest_files
from lkctl.runtime.state import VmRecord
from lkctl.runtime.watch import (
    EXIT_CRASHED,
    EXIT_FAILED,
    exit_status,
    filter_rows,
    parse_filters,
    parse_since,
    stamp_lines,
)


def _record(**kw: object) -> VmRecord:
    base: dict[str, object] = dict(
        id="0a1b2c3d", name="web", image="minimal", image_format="kernel+initrd", created="", memory=512, cpus=1,
        ssh_port=2222,
    )  # fmt: skip
    base.update(kw)
    return VmRecord(**base)  # type: ignore[arg-type]


def test_hostname_defaults_to_the_vm_name_and_falls_back_to_the_id() -> None:
    assert guest_hostname("", "web-1", "0a1b2c3d") == "web-1"
    assert guest_hostname("", "my_vm", "0a1b2c3d") == "lkctl-0a1b2c3d"  # underscores are not host names
    assert guest_hostname("", "a" * 64, "0a1b2c3d") == "lkctl-0a1b2c3d"
    assert guest_hostname("db.local", "web", "0a1b2c3d") == "db.local"


@pytest.mark.parametrize("bad", ["-x", "x-", "a b", "a_b", "a..b", "x" * 64, "é"])
def test_an_explicit_invalid_hostname_is_refused(bad: str) -> None:
    with pytest.raises(ConfigError, match="--hostname"):
        guest_hostname(bad, "web", "0a1b2c3d")


def test_env_file_keeps_values_verbatim_and_refuses_what_a_line_cannot_hold() -> None:
    assert env_file_text({"A": "$(id) 'x' \"y\"", "_B2": ""}) == "A=$(id) 'x' \"y\"\n_B2=\n"
    for env in ({"1A": "x"}, {"A-B": "x"}, {"": "x"}):
        with pytest.raises(ConfigError, match="not a valid variable name"):
            env_file_text(env)
    with pytest.raises(ConfigError, match="newlines"):
        env_file_text({"A": "two\nlines"})


def test_exit_status_clean_power_off_panic_and_kill() -> None:
    clean = b"lkctl-init: ready\r\n[   12.345678] reboot: Power down\r\n"
    assert exit_status(_record(), clean) == 0
    assert exit_status(_record(), b"reboot: Power down\n") == 0
    assert exit_status(_record(), b"lkctl-init: ready\n") == EXIT_CRASHED
    # the marker must be the last line: output after it means the guest did not power off then
    assert exit_status(_record(), b"reboot: Power down\nmore\n") == EXIT_CRASHED
    assert exit_status(_record(), b"Kernel panic - not syncing: x\n") == EXIT_FAILED
    assert exit_status(_record(exit_reason="readiness timeout"), clean) == EXIT_FAILED


def test_since_takes_durations_iso_times_and_unix_seconds() -> None:
    now = datetime(2026, 1, 31, 12, 0, tzinfo=UTC)
    assert parse_since("90s", now) == now - timedelta(seconds=90)
    assert parse_since("1h30m", now) == now - timedelta(minutes=90)
    assert parse_since("2d", now) == now - timedelta(days=2)
    assert parse_since("2026-01-31T11:00:00Z", now) == datetime(2026, 1, 31, 11, 0, tzinfo=UTC)
    assert parse_since("1769860800", now) == datetime.fromtimestamp(1769860800, UTC)
    for bad in ("yesterday", "10x", "", "m"):
        with pytest.raises(ConfigError, match="--since"):
            parse_since(bad, now)


def test_console_lines_take_kernel_stamps_and_carry_them_forward() -> None:
    boot = datetime(2026, 1, 31, 12, 0, tzinfo=UTC)
    lines = list(stamp_lines([b"[    1.500000] virtio\n", b"lkctl-init: ready\n", b"[ 3.25] x\n"], boot))
    assert [ln.time for ln in lines] == [boot + timedelta(seconds=1.5), boot + timedelta(seconds=1.5),
                                         boot + timedelta(seconds=3.25)]  # fmt: skip
    assert [ln.exact for ln in lines] == [True, False, True]
    assert lines[1].render(True) == b"2026-01-31T12:00:01.500Z~ lkctl-init: ready\n"
    assert lines[1].render(False) == b"lkctl-init: ready\n"
    assert next(stamp_lines([b"no boot time\n"], None)).render(True) == b"-~ no boot time\n"


def test_ps_filters_are_anded_across_keys_and_ored_within_one() -> None:
    rows = [
        {"id": "aa11", "name": "web-1", "image": "minimal", "status": "running"},
        {"id": "bb22", "name": "web-2", "image": "dev", "status": "stopped"},
        {"id": "cc33", "name": "db", "image": "minimal", "status": "running"},
    ]

    def pick(*f: str) -> list[str]:
        return [r["id"] for r in filter_rows(rows, parse_filters(list(f)))]

    assert pick("name=web") == ["aa11", "bb22"]
    assert pick("name=web,status=running") == ["aa11"]
    assert pick("status=running", "status=stopped") == ["aa11", "bb22", "cc33"]
    assert pick("name=web-?", "image=dev") == ["bb22"]
    assert pick("id=cc") == ["cc33"]
    with pytest.raises(ConfigError, match="no VM has that status"):  # status is exact: a prefix is no status
        pick("status=run")
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_filters(["colour=red"])


def test_several_vms_from_words_commas_and_repeats() -> None:
    assert split_vm_names(["a,b", "c", "a", " d ,"]) == ["a", "b", "c", "d"]


def test_ssh_config_pins_the_host_key_under_an_alias(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lkctl import ssh

    monkeypatch.setenv("LKCTL_STATE_DIR", str(tmp_path / "state"))
    record = _record()
    record.dir.mkdir(parents=True)
    ssh.generate_keys(record.dir)
    text = ssh_config(record)
    assert text.startswith("Host web\n") and "  Port 2222\n" in text and "  HostKeyAlias lkctl-0a1b2c3d\n" in text
    assert "  StrictHostKeyChecking yes\n" in text and "ForwardAgent no" in text
    assert f'  IdentityFile "{record.dir / "id_ed25519"}"\n' in text
    known = (record.dir / "ssh_known_hosts").read_text().split()
    assert (
        known[0] == "lkctl-0a1b2c3d" and known[1:] == (record.dir / "ssh_host_ed25519_key.pub").read_text().split()[:2]
    )
    assert (record.dir / "ssh_known_hosts").stat().st_mode & 0o777 == 0o600
    assert ssh_config(_record(name="has space")).startswith("Host 0a1b2c3d\n")


def test_import_lkctl_tasks_does_not_import_the_facade_but_lkctl_run_does() -> None:
    code = (
        "import sys, lkctl.tasks, lkctl; assert 'lkctl.api' not in sys.modules; "
        "assert callable(lkctl.run) and 'lkctl.api' in sys.modules; "
        "assert lkctl.ExecResult(0, b'x', b'').text == 'x'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    with pytest.raises(AttributeError):
        import lkctl

        lkctl.nothing_here  # noqa: B018


def test_the_settings_defaults_are_made_when_the_collection_config_is_first_read() -> None:
    code = (
        "import sys, lkctl.tasks; assert 'lkctl.settings' not in sys.modules, 'made at import'; "
        "from invoke import Collection; from lkctl.settings import Settings, invoke_defaults; "
        "ns = lkctl.tasks.ns; assert ns.configuration() == invoke_defaults(); "
        "ns.configure({'lkctl': {'vm': {'memory': 2048}}, 'other': 1}); "
        "vm = ns.configuration('vm.ps')['lkctl']['vm']; assert vm['memory'] == 2048 and vm['cpus'] == 1, vm; "
        "mine = Collection(); mine.add_collection(ns, 'lk'); "
        "assert mine.configuration('lk.vm.ps')['lkctl']['vm']['memory'] == 2048; "
        "assert mine.configuration('lk.vm.ps')['other'] == 1"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_vm_run_has_docker_short_flags() -> None:
    from lkctl.tasks import vm

    flags = {a.name: set(a.names) for a in vm.run.get_arguments()}
    assert {"env", "e"} <= flags["env"] and {"volume", "v"} <= flags["volume"]
    assert {"port", "p"} <= flags["port"] and {"tty", "t"} <= flags["tty"] and {"detach", "d"} <= flags["detach"]
    ps_flags = {a.name: set(a.names) for a in vm.ps.get_arguments()}
    assert "q" in ps_flags["quiet"]


def test_completion_knows_where_vm_and_template_names_go() -> None:
    from lkctl.completion import words_wanting
    from lkctl.tasks import ns

    names = list(ns.task_names)
    assert words_wanting(["vm.stop"], names) == {"vm"}
    assert words_wanting(["vm.exec", "we"], names) == {"vm"}
    assert words_wanting(["vm.exec", "web", "--", "ls"], names) == set()
    assert words_wanting(["vm.cp"], names) == {"vm:"}
    assert words_wanting(["vm.run", "--image"], names) == {"template"}
    assert words_wanting(["vm.run", "--image", "min"], names) == {"template"}
    assert words_wanting(["image.build"], names) == {"template"}
    assert words_wanting(["vm.ps"], names) == set()


def test_lkctl_complete_prints_vm_and_template_names() -> None:
    import os

    from lkctl.runtime import state

    env = dict(os.environ)  # LKCTL_HOME: this test's own (the autouse lkctl_home fixture)
    lkctl_bin = Path(sys.executable).parent / "lkctl"
    state.save_record(_record(id="feedbeef", name="webby"))
    done = subprocess.run(
        [str(lkctl_bin), "--complete", "--", "lkctl", "vm.stop", "we"], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0 and {"webby", "feedbeef", "vm.stop"} <= set(done.stdout.split())
    done = subprocess.run(
        [str(lkctl_bin), "--complete", "--", "lkctl", "vm.run", "--image", ""], env=env, capture_output=True, text=True
    )
    assert "minimal" in done.stdout.split()


def test_lkctl_build_stays_callable_after_the_build_package_is_imported(tmp_path: Path) -> None:
    import importlib

    import lkctl
    from lkctl.errors import ImageError

    package = importlib.import_module("lkctl.build")
    assert callable(package) and package.BuildResult is not None  # the package, callable
    with pytest.raises(ImageError, match="neither a template nor"):
        lkctl.build(str(tmp_path / "nothing.yml"))


def test_guest_files_an_explicit_hostname_overrides_the_image_the_default_does_not(tmp_path: Path) -> None:
    write_guest_files(tmp_path, "web", {"A": "1"}, explicit_hostname=False)
    assert (tmp_path / "vm-hostname").read_text() == "web\n" and not (tmp_path / "hostname").exists()
    assert (tmp_path / "env").read_text() == "A=1\n" and (tmp_path / "env").stat().st_mode & 0o777 == 0o600
    assert guest_files(False, {"A": "1"}) == (("vm-hostname", Path("vm-hostname")), ("env", Path("env")))
    assert guest_files(True, {}) == (("hostname", Path("hostname")),)


def test_lkctl_build_refuses_an_unknown_option_in_one_line_before_building(tmp_path: Path) -> None:
    import lkctl
    from lkctl.errors import ConfigError

    with pytest.raises(ConfigError, match=r"unknown build option in \['colour'\]; known: formats, arch") as e:
        lkctl.build(str(tmp_path / "nothing.yml"), colour="blue")
    assert "\n" not in str(e.value)
    assert not any(tmp_path.iterdir())

import subprocess
import sys
from pathlib import Path

import pytest

from lkctl.errors import ConfigError
from lkctl.runtime.libvirt.hosts import (
    HostConfig,
    HostLoad,
    choose_host,
    is_local_uri,
    jump_host,
    parse_hosts,
    validate_uri,
)
from lkctl.settings import Settings, invoke_defaults, load_settings
from lkctl.ssh import JumpHost

HV1 = HostConfig("hv1", "qemu:///system")
HV2 = HostConfig("hv2", "qemu+ssh://root@hv2/system", memory=4096)
HV3 = HostConfig("hv3", "qemu+ssh://root@hv3/system")


def test_hosts_come_from_config_or_json_in_the_environment() -> None:
    cfg = {"lkctl": {"hosts": [{"name": "hv1", "uri": "qemu:///system"},
                               {"name": "hv2", "uri": "qemu+ssh://root@hv2/system", "memory": 4096}]}}  # fmt: skip
    assert load_settings(cfg, env={}).hosts == (HV1, HV2)
    env = {"LKCTL_HOSTS": '[{"name": "hv3", "uri": "qemu+ssh://root@hv3/system"}]'}
    assert load_settings(cfg, env=env).hosts == (HV3,)
    assert load_settings(invoke_defaults(), env={}) == Settings()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("not json", "JSON list"),
        ({"name": "x"}, "list of"),
        (["qemu:///system"], "mapping with name and uri"),
        ([{"name": "hv1"}], "needs a name and a uri"),
        ([{"name": "hv1", "uri": "xen:///system"}], "lkctl drives QEMU"),
        ([{"name": "hv1", "uri": "qemu:///system", "ram": 1}], "unknown key 'ram'"),
        ([{"name": "hv1", "uri": "qemu:///system", "memory": "lots"}], "number of MiB"),
        ([{"name": "hv1", "uri": "qemu:///system", "accel": "hvf"}], "auto, kvm or tcg"),
        ([{"name": "auto", "uri": "qemu:///system"}], "not a usable host name"),
        ([{"name": "a", "uri": "qemu:///system"}, {"name": "a", "uri": "qemu:///session"}], "used twice"),
    ],
)
def test_bad_host_config_is_one_line_naming_the_entry(value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as e:
        parse_hosts(value)
    assert "\n" not in str(e.value)


def test_auto_placement_takes_the_most_free_memory_that_fits() -> None:
    loads = [HostLoad(HV1, 3000), HostLoad(HV2, 16000, used_by_lkctl=1024), HostLoad(HV3, 6000)]
    # hv2 reports most free memory, but its limit (4096 MiB for lkctl, 1024 used) leaves 3072
    assert choose_host(loads, 1024) == HV3
    assert choose_host(loads, 6000) == HV3
    assert choose_host([HostLoad(HV1, 3000), HostLoad(HV2, 16000)], 1024) == HV2


def test_auto_placement_refuses_in_one_line_when_nothing_fits() -> None:
    with pytest.raises(ConfigError, match=r"no host can take a VM of 8192 MiB \(hv1 3000 MiB free; unreachable: hv3\)"):
        choose_host([HostLoad(HV1, 3000)], 8192, unreachable=["hv3"])
    with pytest.raises(ConfigError, match="no reachable host"):
        choose_host([], 64)


def test_uris_say_whether_the_host_is_this_machine() -> None:
    assert is_local_uri("qemu:///system") and is_local_uri("qemu+unix:///system")
    assert not is_local_uri("qemu+ssh://root@hv/system")
    assert validate_uri("qemu:///session") == "qemu:///session"
    with pytest.raises(ConfigError, match="qemu:///system"):
        validate_uri("qemu://hv/nodes")


def test_remote_guests_are_reached_through_the_hosts_sshd_with_a_pinned_or_user_known_host_key() -> None:
    uri = "qemu+ssh://admin@10.0.0.5:2222/system?keyfile=/keys/hv&no_tty=1"
    assert jump_host(uri, "/pins/hv") == JumpHost("10.0.0.5", 2222, "admin", Path("/keys/hv"), Path("/pins/hv"))
    assert jump_host("qemu+ssh://hv/system", home=Path("/home/me")) == JumpHost(
        "hv", 22, "root", None, Path("/home/me/.ssh/known_hosts")
    )
    assert jump_host("qemu:///system") is None
    with pytest.raises(ConfigError, match="qemu\\+ssh://"):
        jump_host("qemu+tls://hv/system")


def test_libvirt_python_missing_gives_one_line_naming_the_extra() -> None:
    code = (
        "import sys; sys.modules['libvirt'] = None\n"
        "from lkctl.runtime.libvirt.backend import libvirt_module\n"
        "from lkctl.errors import ConfigError\n"
        "try:\n    libvirt_module()\nexcept ConfigError as e:\n    print(e.exit_code, e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.startswith("2 ") and "pip install 'lkctl[libvirt]'" in out and out.count("\n") == 1


def test_importing_the_backend_does_not_import_libvirt() -> None:
    code = "import sys, lkctl.tasks, lkctl.runtime.libvirt.vms; print('libvirt' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_libvirt_ssh_transport_gets_strict_pinned_host_key_checking(lkctl_home: Path) -> None:
    from urllib.parse import parse_qsl, urlsplit

    from lkctl.runtime.libvirt.backend import transport_uri

    uri = transport_uri("qemu+ssh://root@hv/system?keyfile=/k", "/pins/it's hv")
    query = dict(parse_qsl(urlsplit(uri).query))
    assert query["keyfile"] == "/k" and query["no_tty"] == "1"
    wrapper = Path(query["command"])
    assert wrapper.is_relative_to(lkctl_home) and wrapper.stat().st_mode & 0o777 == 0o700
    body = wrapper.read_text(encoding="utf-8")
    assert "-o StrictHostKeyChecking=yes" in body and "-o UserKnownHostsFile='/pins/it'\"'\"'s hv'" in body
    assert "-o ForwardAgent=no" in body
    libssh = dict(parse_qsl(urlsplit(transport_uri("qemu+libssh://hv/system", "/pins/hv")).query))
    assert libssh == {"known_hosts": "/pins/hv", "known_hosts_verify": "normal"}
    assert transport_uri("qemu:///system") == "qemu:///system"

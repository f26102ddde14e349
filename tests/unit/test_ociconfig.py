"""ConfigToOCI: LinuxKit's defaults, the YAML > label > image precedence, and the conversions field by field."""

from __future__ import annotations

import json
from typing import Any

import pytest

from lkctl.build.ociconfig import ALL_CAPABILITIES, config_to_oci, go_json, label_config
from lkctl.build.spec import Container, Spec, parse_spec
from lkctl.errors import ImageError, SpecError


def _one(
    yaml_fields: str = "", image_config: dict[str, Any] | None = None, **kw: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
    spec = parse_spec(f"services:\n  - name: svc\n    image: alpine\n{yaml_fields}")
    return config_to_oci(spec.services[0], image_config or {}, spec.id_map(), **kw)


def _label(**fields: Any) -> dict[str, Any]:
    return {"Labels": {"org.mobyproject.config": json.dumps(fields)}}


def _mount(oci: dict[str, Any], dest: str) -> dict[str, Any]:
    (m,) = [m for m in oci["mounts"] if m["destination"] == dest]
    assert isinstance(m, dict)
    return m


def test_defaults_match_linuxkit_for_a_bare_container() -> None:
    oci, runtime = _one()
    assert oci == {
        "ociVersion": "1.2.1",
        "process": {"user": {"uid": 0, "gid": 0}, "cwd": "/", "capabilities": {}},
        "root": {"path": "rootfs"},
        "mounts": [
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
            {"destination": "/proc", "type": "proc", "source": "proc",
             "options": ["nosuid", "nodev", "noexec", "relatime"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
             "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]},
        ],
        "linux": {"resources": {}, "namespaces": [{"type": "pid"}, {"type": "mount"}]},
    }  # fmt: skip
    assert runtime == {
        "cgroups": [],
        "mounts": [],
        "mkdir": [],
        "interfaces": [],
        "bindNS": dict.fromkeys(("cgroup", "ipc", "mnt", "net", "pid", "user", "uts"), ""),
        "namespace": "",
    }


def test_command_env_and_cwd_come_from_the_image_config_unless_overridden() -> None:
    image = {"Entrypoint": ["/bin/entry"], "Cmd": ["--flag"], "Env": ["PATH=/bin"], "WorkingDir": "/srv"}
    oci, _ = _one(image_config=image)
    assert oci["process"]["args"] == ["/bin/entry", "--flag"]
    assert oci["process"]["env"] == ["PATH=/bin"]
    assert oci["process"]["cwd"] == "/srv"
    oci, _ = _one("    command: [/bin/other]\n    env: [X=1]\n    cwd: /y\n", image)
    assert (oci["process"]["args"], oci["process"]["env"], oci["process"]["cwd"]) == (["/bin/other"], ["X=1"], "/y")


def test_yaml_beats_label_beats_image_field_by_field() -> None:
    image = {"Cmd": ["/img"], "WorkingDir": "/img", **_label(command=["/label"], cwd="/label", net="new", pid="host")}
    oci, _ = _one(image_config=image)
    assert oci["process"]["args"] == ["/label"] and oci["process"]["cwd"] == "/label"
    assert oci["linux"]["namespaces"] == [{"type": "network"}, {"type": "mount"}]
    oci, _ = _one("    cwd: /yaml\n    net: host\n", image)
    assert oci["process"]["args"] == ["/label"] and oci["process"]["cwd"] == "/yaml"
    assert oci["linux"]["namespaces"] == [{"type": "mount"}]


def test_capabilities_add_extends_the_label_and_capabilities_replaces_it() -> None:
    image = _label(capabilities=["CAP_NET_ADMIN"])
    oci, _ = _one("    capabilities.add: [CAP_SYS_ADMIN]\n", image)
    caps = oci["process"]["capabilities"]
    assert caps["effective"] == ["CAP_NET_ADMIN", "CAP_SYS_ADMIN"]
    assert caps["bounding"] == caps["permitted"] == caps["inheritable"] == ["CAP_NET_ADMIN", "CAP_SYS_ADMIN"]
    assert "ambient" not in caps
    oci, _ = _one("    capabilities: [CAP_CHOWN]\n    capabilities.add: [CAP_SYS_ADMIN]\n", image)
    assert oci["process"]["capabilities"]["effective"] == ["CAP_CHOWN"]


def test_all_and_none_capabilities_and_ambient_join_the_bounding_set() -> None:
    oci, _ = _one("    capabilities: [ALL]\n")
    caps = oci["process"]["capabilities"]
    assert caps["effective"] == list(ALL_CAPABILITIES) and len(ALL_CAPABILITIES) == 41
    assert caps["bounding"] == sorted(ALL_CAPABILITIES)
    oci, _ = _one("    capabilities: [none]\n    ambient: [CAP_NET_RAW]\n", _label(capabilities=["CAP_KILL"]))
    caps = oci["process"]["capabilities"]
    assert "effective" not in caps and caps["ambient"] == ["CAP_NET_RAW"] and caps["bounding"] == ["CAP_NET_RAW"]


def test_unknown_capability_is_an_error_naming_the_container() -> None:
    with pytest.raises(SpecError, match="svc: unknown capability 'CAP_FLY'"):
        _one("    capabilities: [CAP_FLY]\n")
    with pytest.raises(SpecError, match="unknown capability 'net_admin'"):
        _one("    capabilities: [net_admin, CAP_KILL]\n")


def test_binds_default_to_rshared_and_explicit_options_get_rbind() -> None:
    oci, _ = _one('    binds: ["/var:/var", "/etc/resolv.conf:/etc/resolv.conf:ro,private"]\n')
    assert _mount(oci, "/var") == {
        "destination": "/var",
        "type": "bind",
        "source": "/var",
        "options": ["rw", "rbind", "rshared"],
    }
    assert _mount(oci, "/etc/resolv.conf")["options"] == ["ro", "private", "rbind"]
    assert [m["destination"] for m in oci["mounts"]] == sorted(m["destination"] for m in oci["mounts"])


def test_binds_add_extends_the_label_and_binds_replaces_it() -> None:
    image = _label(binds=["/a:/a"])
    oci, _ = _one('    binds.add: ["/b:/b"]\n', image)
    assert {m["destination"] for m in oci["mounts"]} >= {"/a", "/b"}
    oci, _ = _one('    binds: ["/c:/c"]\n    binds.add: ["/b:/b"]\n', image)
    dests = {m["destination"] for m in oci["mounts"]}
    assert "/c" in dests and "/a" not in dests and "/b" not in dests


@pytest.mark.parametrize(
    ("field", "message"),
    [
        ('    binds: ["/a"]\n', "missing ':'"),
        ('    binds: ["/a:/b:ro:x"]\n', "too many ':'"),
        ('    tmpfs: ["/a:b:c"]\n', "too many ':'"),
        ("    mounts: [{destination: /x}]\n", "missing type"),
        ("    mounts: [{type: tmpfs}]\n", "missing destination"),
        ('    rlimits: ["nofile,1"]\n', "cannot parse rlimit"),
        ('    rlimits: ["bogus,1,2"]\n', "unknown rlimit 'bogus'"),
        ('    rlimits: ["nofile,x,2"]\n', "'x' is not a number"),
        ("    devices: [{path: /dev/x, type: c, major: 1, minor: 1, mode: rw}]\n", "not an octal number"),
        ("    uid: nobody\n", "cannot find id 'nobody'"),
    ],
)
def test_bad_field_values_are_errors(field: str, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        _one(field)


def test_tmpfs_and_mounts_override_defaults_by_destination() -> None:
    oci, _ = _one('    tmpfs: ["/run:size=1m,mode=755", "/tmp"]\n    mounts: [{source: proc}, {destination: /dev}]\n')
    assert _mount(oci, "/run") == {
        "destination": "/run",
        "type": "tmpfs",
        "source": "tmpfs",
        "options": ["size=1m", "mode=755"],
    }
    assert _mount(oci, "/tmp") == {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs"}
    assert _mount(oci, "/proc") == {"destination": "/proc", "type": "proc", "source": "proc"}  # type and dest inferred
    assert _mount(oci, "/dev") == {"destination": "/dev", "type": "tmpfs", "source": "tmpfs"}


def test_readonly_makes_root_dev_and_sys_read_only() -> None:
    oci, _ = _one("    readonly: true\n")
    assert oci["root"] == {"path": "rootfs", "readonly": True}
    assert _mount(oci, "/dev")["options"][-1] == "ro" and _mount(oci, "/sys")["options"][-1] == "ro"


@pytest.mark.parametrize(
    ("fields", "namespaces"),
    [
        ("", [{"type": "pid"}, {"type": "mount"}]),
        ("    net: new\n", [{"type": "network"}, {"type": "pid"}, {"type": "mount"}]),
        ("    net: none\n", [{"type": "network"}, {"type": "pid"}, {"type": "mount"}]),
        (
            "    net: /run/netns/wg\n",
            [{"type": "network", "path": "/run/netns/wg"}, {"type": "pid"}, {"type": "mount"}],
        ),
        ("    pid: host\n    ipc: new\n    uts: new\n", [{"type": "ipc"}, {"type": "uts"}, {"type": "mount"}]),
        ("    pid: root\n    userns: new\n", [{"type": "user"}, {"type": "mount"}]),
    ],
)
def test_namespaces_default_to_new_mount_and_pid_only(fields: str, namespaces: list[dict[str, str]]) -> None:
    oci, _ = _one(fields)
    assert oci["linux"]["namespaces"] == namespaces


def test_uid_and_gid_accept_numbers_and_container_names() -> None:
    spec = parse_spec(
        "onboot: [{name: first, image: x}]\n"
        "services: [{name: svc, image: y, uid: first, gid: svc, additionalGids: [5, first, '7']}]\n"
    )
    oci, _ = config_to_oci(spec.services[0], {"User": "nobody"}, spec.id_map())
    assert oci["process"]["user"] == {"uid": 100, "gid": 101, "additionalGids": [5, 100, 7]}


def test_rlimits_accept_lowercase_names_without_prefix_and_unlimited() -> None:
    oci, _ = _one('    rlimits: ["nofile, 1024, unlimited", "RLIMIT_CORE,0,0"]\n')
    assert oci["process"]["rlimits"] == [
        {"type": "RLIMIT_NOFILE", "hard": 2**64 - 1, "soft": 1024},
        {"type": "RLIMIT_CORE", "hard": 0, "soft": 0},
    ]


def test_devices_become_linux_devices_plus_cgroup_rules() -> None:
    oci, _ = _one(
        "    devices:\n      - {path: /dev/console, type: c, major: 5, minor: 1, mode: '0666'}\n"
        "      - {path: all, type: b}\n"
        "    resources: {memory: {limit: 1000}, devices: [{allow: false, access: rwm}]}\n"
    )
    assert oci["linux"]["devices"] == [{"path": "/dev/console", "type": "c", "major": 5, "minor": 1, "fileMode": 0o666}]
    assert oci["linux"]["resources"] == {
        "devices": [
            {"allow": False, "access": "rwm"},
            {"allow": True, "type": "c", "major": 5, "minor": 1, "access": "rwm"},
            {"allow": True, "type": "b", "access": "rwm"},
        ],
        "memory": {"limit": 1000},
    }


def test_resources_use_oci_names() -> None:
    oci, _ = _one(
        "    resources:\n      blockio: {weight: 10}\n      hugepageLimits: [{pageSize: 2097152, limit: 1}]\n"
        "      pids: {limit: 5}\n"
    )
    assert oci["linux"]["resources"] == {
        "pids": {"limit": 5},
        "blockIO": {"weight": 10},
        "hugepageLimits": [{"pageSize": "2097152", "limit": 1}],
    }


def test_linux_and_process_fields_pass_through() -> None:
    oci, _ = _one(
        "    sysctl: {net.b: '1', net.a: '2'}\n    maskedPaths: [/proc/kcore]\n    readonlyPaths: [/proc/sys]\n"
        "    cgroupsPath: /lk/x\n    rootfsPropagation: shared\n    hostname: box\n    noNewPrivileges: true\n"
        "    oomScoreAdj: -10\n    annotations: {z: '1', a: '2'}\n"
        "    uidMappings: [{hostID: 1000, containerID: 0, size: 1}]\n"
    )
    linux = oci["linux"]
    assert list(linux["sysctl"]) == ["net.a", "net.b"]
    assert linux["maskedPaths"] == ["/proc/kcore"] and linux["readonlyPaths"] == ["/proc/sys"]
    assert linux["cgroupsPath"] == "/lk/x" and linux["rootfsPropagation"] == "shared"
    assert linux["uidMappings"] == [{"containerID": 0, "hostID": 1000, "size": 1}]
    assert oci["hostname"] == "box" and list(oci["annotations"]) == ["a", "z"]
    assert oci["process"]["noNewPrivileges"] is True and oci["process"]["oomScoreAdj"] == -10


def test_runtime_merges_label_and_yaml_per_field() -> None:
    image = _label(runtime={"mkdir": ["/from/label"], "cgroups": ["lbl"], "bindNS": {"net": "/run/netns/l"}})
    _, runtime = _one(
        "    runtime:\n      mkdir: [/from/yaml]\n      interfaces: [{name: eth1, peer: veth1}]\n"
        "      mounts: [{type: tmpfs, destination: /var/x, options: [size=1m]}]\n      bindNS: {uts: /u}\n",
        image,
    )
    assert runtime["mkdir"] == ["/from/yaml"] and runtime["cgroups"] == ["lbl"]
    assert runtime["interfaces"] == [{"name": "eth1", "peer": "veth1", "createInRoot": False}]
    assert runtime["mounts"] == [{"destination": "/var/x", "type": "tmpfs", "options": ["size=1m"]}]
    assert runtime["bindNS"]["net"] == "/run/netns/l" and runtime["bindNS"]["uts"] == "/u"


def test_volume_names_in_binds_become_the_volume_merged_dir() -> None:
    spec = parse_spec(
        "volumes: [{name: data}, {name: ro, readonly: true}]\n"
        "services:\n  - name: svc\n    image: x\n    binds: ['data:/data', 'ro:/ro:ro']\n"
        "    mounts: [{type: bind, source: data, destination: /m}]\n"
    )
    volumes = {v.name: v for v in spec.volumes}
    oci, _ = config_to_oci(spec.services[0], {}, {}, volumes=volumes)
    assert _mount(oci, "/data")["source"] == "/containers/volumes/data/merged"
    assert _mount(oci, "/ro")["source"] == "/containers/volumes/ro/merged"
    assert _mount(oci, "/m")["source"] == "/containers/volumes/data/merged"


@pytest.mark.parametrize(
    "binds",
    [
        "    binds: ['ro:/ro']\n",
        "    binds.add: ['ro:/ro:rw']\n",
        "    mounts: [{type: bind, source: ro, destination: /x}]\n",
    ],
)
def test_read_only_volumes_must_be_bound_read_only(binds: str) -> None:
    spec = parse_spec(f"volumes: [{{name: ro, readonly: true}}]\nservices:\n  - name: svc\n    image: x\n{binds}")
    with pytest.raises(SpecError, match="volume 'ro' is read-only"):
        config_to_oci(spec.services[0], {}, {}, volumes={v.name: v for v in spec.volumes})


def test_binds_to_undefined_volumes_are_errors() -> None:
    with pytest.raises(SpecError, match="volume 'nope', which is not defined"):
        _one("    binds: ['nope:/x']\n")


def test_bad_labels_are_image_errors() -> None:
    with pytest.raises(ImageError, match=r"label org\.mobyproject\.config.*bindz: unknown key"):
        label_config(_label(bindz=["/a:/b"]), "img")
    with pytest.raises(ImageError, match="neither JSON nor YAML"):
        label_config({"Labels": {"org.mobyproject.config": "{: ["}}, "img")
    assert label_config({"Labels": {"org.mobyproject.config": "pid: host"}}).pid == "host"  # YAML labels too


def test_go_json_indents_with_four_spaces_and_escapes_like_go() -> None:
    text = go_json({"a": ["<x> & y", "é"], "b": {}}).decode()
    assert text == '{\n    "a": [\n        "\\u003cx\\u003e \\u0026 y",\n        "é"\n    ],\n    "b": {}\n}'
    assert json.loads(text) == {"a": ["<x> & y", "é"], "b": {}}


def test_where_prefix_names_the_section_in_errors() -> None:
    c = Container("c", "alpine", parse_spec("services: [{name: c, image: x, capabilities: [BAD]}]").services[0].config)
    with pytest.raises(SpecError, match=r"^onboot\[3\] c: unknown capability"):
        config_to_oci(c, {}, Spec().id_map(), where="onboot[3] c")

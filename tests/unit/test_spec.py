"""LinuxKit YAML parsing: the schema as LinuxKit enforces it, errors that name file and path, merging."""

from __future__ import annotations

from pathlib import Path

import pytest

from lkctl.build.spec import (
    ContainerConfig,
    KernelSpec,
    load_spec,
    merge_specs,
    parse_container_config,
    parse_spec,
    spec_json,
)
from lkctl.errors import SpecError

# Every per-container field of LinuxKit's schema, with a value of the right type.
EVERY_FIELD = """
kernel:
  image: linuxkit/kernel:6.6.71
  cmdline: "console=ttyS0 console=tty0"
  binary: bzImage
  tar: none
  ucode: intel-ucode.cpio
init:
  - linuxkit/init:v1
  - linuxkit/runc:v1
onboot:
  - name: everything
    image: alpine:3.19
    capabilities: [CAP_NET_ADMIN]
    capabilities.add: [CAP_SYS_ADMIN]
    ambient: [CAP_NET_RAW]
    mounts:
      - {destination: /x, type: bind, source: /y, options: [rbind], uidmappings: [{hostID: 1, containerID: 0, size: 1}]}
    binds: ["/a:/b:ro"]
    binds.add: ["/c:/d"]
    devices: [{path: /dev/null, type: c, major: 1, minor: 3, mode: "0666"}]
    tmpfs: ["/tmp:size=10m"]
    command: [/bin/sh, -c, "true"]
    env: [A=1]
    cwd: /work
    net: new
    pid: host
    ipc: new
    uts: new
    userns: new
    hostname: box
    readonly: true
    maskedPaths: [/proc/kcore]
    readonlyPaths: [/proc/sys]
    uid: 1000
    gid: everything
    additionalGids: [10, everything]
    noNewPrivileges: true
    oomScoreAdj: -500
    rootfsPropagation: shared
    cgroupsPath: /lk/everything
    resources:
      devices: [{allow: true, type: c, major: 1, minor: 3, access: rwm}]
      memory: {limit: 1000, reservation: 10, swap: 1, kernel: 1, kernelTCP: 1, swappiness: 1, disableOOMKiller: true}
      cpu: {shares: 1, quota: 1, period: 1, realtimeRuntime: 1, realtimePeriod: 1, cpus: "0-1", mems: "0"}
      pids: {limit: 10}
      blockio:
        weight: 1
        leafWeight: 1
        weightDevice: [{major: 8, minor: 0, weight: 1, leafWeight: 1}]
        throttleReadBpsDevice: [{major: 8, minor: 0, rate: 1}]
        throttleWriteBpsDevice: [{major: 8, minor: 0, rate: 1}]
        throttleReadIOPSDevice: [{major: 8, minor: 0, rate: 1}]
        throttleWriteIOPSDevice: [{major: 8, minor: 0, rate: 1}]
      hugepageLimits: [{pageSize: 2097152, limit: 1}]
      network: {classID: 1, priorities: [{name: eth0, priority: 1}]}
    sysctl: {net.ipv4.ip_forward: "1"}
    rlimits: ["nofile,1024,2048"]
    uidMappings: [{hostID: 100000, containerID: 0, size: 65536}]
    gidMappings: [{hostID: 100000, containerID: 0, size: 65536}]
    annotations: {a: b}
    runtime:
      cgroups: [lk]
      mounts: [{type: tmpfs, destination: /var/x}]
      mkdir: [/var/y]
      interfaces: [{name: eth1, add: veth, peer: veth1, createInRoot: false}]
      bindNS: {cgroup: /c, ipc: /i, mnt: /m, net: /run/netns/x, pid: /p, user: /u, uts: /t}
      namespace: custom
onshutdown:
  - name: down
    image: alpine:3.19
services:
  - name: getty
    image: linuxkit/getty:v1
files:
  - path: etc/issue
    contents: hello
    mode: "0644"
    uid: 0
    gid: getty
  - path: /etc/dir
    directory: true
  - path: etc/link
    symlink: /etc/issue
  - path: root/.ssh/authorized_keys
    source: ~/.ssh/id_rsa.pub
    optional: true
  - path: etc/linuxkit.yml
    metadata: yaml
volumes:
  - name: vol_1
    image: alpine:3.19
    readonly: true
    format: filesystem
trust:
  org: [linuxkit]
  image: [alpine]
"""


def _err(text: str, source: str = "t.yml") -> str:
    with pytest.raises(SpecError) as info:
        parse_spec(text, source)
    message = info.value.message
    assert "\n" not in message
    assert message.startswith(source)
    return message


def test_every_linuxkit_field_is_accepted_and_typed() -> None:
    spec = parse_spec(EVERY_FIELD, "all.yml")
    assert spec.kernel == KernelSpec(
        "linuxkit/kernel:6.6.71", "console=ttyS0 console=tty0", "bzImage", "none", "intel-ucode.cpio"
    )
    assert spec.kernel.tar_name == "" and spec.kernel.binary_name == "bzImage"
    c = spec.onboot[0].config
    assert c.capabilities_add == ("CAP_SYS_ADMIN",)
    assert c.mounts is not None and c.mounts[0].uidmappings is not None
    assert c.mounts[0].uidmappings[0].host_id == 1
    assert c.uid == 1000 and c.gid == "everything" and c.additional_gids == (10, "everything")
    assert c.oom_score_adj == -500 and c.readonly is True
    assert c.resources is not None and c.resources.memory is not None and c.resources.memory.disable_oom_killer
    assert c.resources.blockio is not None and c.resources.blockio.throttle_read_iops_device is not None
    assert c.sysctl == {"net.ipv4.ip_forward": "1"}
    assert c.runtime is not None and c.runtime.bind_ns is not None and c.runtime.bind_ns.net == "/run/netns/x"
    assert c.runtime.interfaces is not None and c.runtime.interfaces[0].peer == "veth1"
    assert [f.path for f in spec.files] == [
        "etc/issue",
        "/etc/dir",
        "etc/link",
        "root/.ssh/authorized_keys",
        "etc/linuxkit.yml",
    ]
    assert spec.files[1].clean_path == "etc/dir" and spec.files[1].file_mode == 0o700
    assert spec.files[0].file_mode == 0o644 and spec.files[2].file_mode == 0o600
    assert spec.volumes[0].readonly and spec.volumes[0].name == "vol_1"
    assert spec.sources == ("all.yml",)


def test_normalized_expands_references_and_round_trips_every_field() -> None:
    spec = parse_spec(EVERY_FIELD, "all.yml")
    norm = spec.normalized()
    assert norm["kernel"]["image"] == "docker.io/linuxkit/kernel:6.6.71"
    assert norm["init"] == ["docker.io/linuxkit/init:v1", "docker.io/linuxkit/runc:v1"]
    assert norm["onboot"][0]["image"] == "docker.io/library/alpine:3.19"
    assert norm["onboot"][0]["capabilities.add"] == ["CAP_SYS_ADMIN"]
    assert norm["onboot"][0]["resources"]["blockio"]["throttleReadIOPSDevice"] == [{"major": 8, "minor": 0, "rate": 1}]
    assert norm["onboot"][0]["runtime"]["bindNS"]["net"] == "/run/netns/x"
    assert norm["volumes"][0]["image"] == "docker.io/library/alpine:3.19"
    # every key written in the YAML comes back (trust is accepted and dropped, as LinuxKit does)
    import yaml

    raw = yaml.safe_load(EVERY_FIELD)
    assert set(norm["onboot"][0]) == set(raw["onboot"][0])
    assert "trust" not in norm


def test_normalized_form_is_canonical_for_equal_specs() -> None:
    a = parse_spec("kernel: {image: linuxkit/kernel:1}\nservices: [{name: s, image: alpine, env: [A=1]}]\n")
    b = parse_spec(
        "services:\n  - env: [A=1]\n    image: docker.io/library/alpine\n    name: s\n"
        "kernel:\n  image: linuxkit/kernel:1\n"
    )
    c = parse_spec("kernel: {image: linuxkit/kernel:1}\nservices: [{name: s, image: alpine, env: [A=2]}]\n")
    assert spec_json(a) == spec_json(b)
    assert spec_json(a) != spec_json(c)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("services:\n  - {name: a, image: x}\n  - {name: b, image: x}\n  - {name: c, image: x, bindz: []}\n",
         "t.yml: services[2].bindz: unknown key (did you mean 'binds'?)"),
        ("servics: []\n", "t.yml: servics: unknown key (did you mean 'services'?)"),
        ("kernel: {image: k, cmdlin: x}\n", "t.yml: kernel.cmdlin: unknown key"),
        ("onboot: [{name: a, image: x, runtime: {mkdirs: []}}]\n", "t.yml: onboot[0].runtime.mkdirs: unknown key"),
        ("files: [{path: a, contents: x, owner: 1}]\n", "t.yml: files[0].owner: unknown key"),
        ("onboot: [{name: a, image: x, resources: {memory: {limt: 1}}}]\n",
         "t.yml: onboot[0].resources.memory.limt: unknown key"),
        ("volumes: [{name: v, size: 1}]\n", "t.yml: volumes[0].size: unknown key"),
        ("trust: {orgs: [a]}\n", "t.yml: trust.orgs: unknown key"),
    ],
)  # fmt: skip
def test_unknown_keys_are_errors_naming_their_path(text: str, expected: str) -> None:
    assert _err(text).startswith(expected)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("onboot: [{name: a, image: x, readonly: yes}]\n", "onboot[0].readonly: expected a boolean, got a string"),
        ("onboot: [{name: a, image: x, capabilities: CAP_SYS_ADMIN}]\n",
         "onboot[0].capabilities: expected a list, got a string"),
        ("onboot: [{name: a, image: x, command: [ls, 1]}]\n",
         "onboot[0].command[1]: expected a string, got an integer"),
        ("onboot: [{name: a, image: x, uid: [1]}]\n", "onboot[0].uid: expected an integer or a string, got a list"),
        ("onboot: [{name: a, image: x, oomScoreAdj: '5'}]\n", "onboot[0].oomScoreAdj: expected an integer"),
        ("onboot: [{name: a, image: x, oomScoreAdj: true}]\n",
         "onboot[0].oomScoreAdj: expected an integer, got a boolean"),
        ("onboot: [{name: a, image: x, sysctl: {a: 1}}]\n", "onboot[0].sysctl.a: expected a string, got an integer"),
        ("onboot: [{name: a, image: x, env: null}]\n", "onboot[0].env: expected a list, got null"),
        ("files: [{path: a, contents: x, mode: 0644}]\n", 'files[0].mode: expected a string, got an integer (quote'),
        ("kernel: {image: k, cmdline: 3}\n", "kernel.cmdline: expected a string, got an integer"),
        ("kernel: [a]\n", "kernel: expected a mapping, got a list"),
        ("init: linuxkit/init\n", "init: expected a list, got a string"),
        ("services: [x]\n", "services[0]: expected a mapping, got a string"),
        ("- a\n- b\n", "the document must be a mapping"),
        ("volumes: [{name: v, readonly: 'true'}]\n", "volumes[0].readonly: expected a boolean"),
        ("volumes: [{name: v, format: squashfs}]\n", "volumes[0].format: must be filesystem or oci"),
    ],
)  # fmt: skip
def test_wrong_types_are_errors_naming_their_path(text: str, expected: str) -> None:
    assert expected in _err(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("services: [{image: alpine}]\n", "services[0].name: required"),
        ("services: [{name: a}]\n", "services[0].image: required"),
        ("onboot: [{name: ../etc, image: alpine}]\n", "onboot[0].name: invalid container name"),
        ("onboot: [{name: '', image: alpine}]\n", "onboot[0].name: invalid container name"),
        ("services: [{name: a, image: 'Bad Image'}]\n", "services[0].image: invalid image reference"),
        ("init: ['UPPER/case']\n", "init[0]: invalid image reference"),
        ("files: [{contents: x}]\n", "files[0].path: required"),
        ("files: [{path: a, contents: x, source: /etc/hosts}]\n", "contents and source are mutually exclusive"),
        ("files: [{path: a, contents: x, metadata: yaml}]\n", "contents and metadata are mutually exclusive"),
        ("files: [{path: a, source: /x, metadata: yaml}]\n", "source and metadata are mutually exclusive"),
        ("files: [{path: a, directory: true, contents: x}]\n", "a directory cannot have contents"),
        ("files: [{path: a}]\n", "needs one of contents, source, metadata"),
        ("files: [{path: a, contents: x, mode: '0999'}]\n", "files[0].mode: '0999' is not an octal mode"),
        ("files: [{path: a, metadata: toml}]\n", "files[0].metadata: must be yaml or json"),
        ("volumes: [{name: Vol}]\n", "volumes[0].name: invalid volume name"),
        ("volumes: [{name: v}, {name: v}]\n", "volumes[1].name: duplicate volume name"),
    ],
)  # fmt: skip
def test_semantic_errors_name_their_path(text: str, expected: str) -> None:
    assert expected in _err(text)


def test_duplicate_service_names_are_refused_but_onboot_names_may_repeat() -> None:
    assert "duplicate service name 'a'" in _err("services: [{name: a, image: x}, {name: a, image: y}]\n")
    spec = parse_spec("onboot: [{name: a, image: x}, {name: a, image: y}]\n")
    assert [c.name for c in spec.onboot] == ["a", "a"]


def test_malformed_yaml_reports_file_and_line() -> None:
    message = _err("kernel:\n  image: x\n  cmdline: [unclosed\nservices: []\n", "broken.yml")
    assert message.startswith("broken.yml:")
    assert message.split(":")[1].isdigit()
    assert "invalid YAML" in message


def test_duplicate_yaml_keys_report_file_and_line() -> None:
    message = _err("kernel:\n  image: a\n  image: b\n", "dup.yml")
    assert message.startswith("dup.yml:3: invalid YAML: duplicate key 'image'")


def test_yaml_1_1_words_stay_strings_like_go_yaml_v3() -> None:
    spec = parse_spec("services: [{name: s, image: x, hostname: yes, net: off, cwd: 'on'}]\n")
    c = spec.services[0].config
    assert (c.hostname, c.net, c.cwd) == ("yes", "off", "on")


def test_empty_document_and_empty_sections_are_empty_specs() -> None:
    assert parse_spec("", "e.yml").services == ()
    spec = parse_spec("services:\nonboot:\n", "e.yml")
    assert spec.services == () and spec.onboot == ()


def test_several_documents_in_one_file_merge_in_order() -> None:
    spec = parse_spec(
        "kernel: {image: k:1, cmdline: a}\nservices: [{name: a, image: x}]\n---\n"
        "kernel: {cmdline: b}\nservices: [{name: b, image: x}]\n"
    )
    assert spec.kernel.image == "k:1" and spec.kernel.cmdline == "b"
    assert [c.name for c in spec.services] == ["a", "b"]


def test_merging_files_follows_linuxkit_append_config(tmp_path: Path) -> None:
    a = tmp_path / "a.yml"
    b = tmp_path / "b.yml"
    a.write_text(
        "kernel: {image: k:1, cmdline: one, tar: custom.tar}\ninit: [i:1]\n"
        "onboot: [{name: o, image: x}]\nservices: [{name: s1, image: x}]\nfiles: [{path: a, contents: x}]\n"
        "volumes: [{name: v1}]\n"
    )
    b.write_text(
        "kernel: {image: k:2, ucode: u.cpio}\ninit: [i:2]\nservices: [{name: s2, image: y}]\n"
        "files: [{path: b, contents: y}]\nvolumes: [{name: v2}]\n"
    )
    spec = load_spec([a, b])
    assert spec.kernel == KernelSpec("k:2", "one", "", "custom.tar", "u.cpio")
    assert spec.init == ("i:1", "i:2")
    assert [c.name for c in spec.services] == ["s1", "s2"]
    assert [f.path for f in spec.files] == ["a", "b"]
    assert [v.name for v in spec.volumes] == ["v1", "v2"]
    assert spec.sources == (str(a), str(b))
    assert spec.services[1].source == str(b) and spec.files[1].origin == str(b)


def test_duplicate_services_across_files_name_both_files(tmp_path: Path) -> None:
    a = tmp_path / "a.yml"
    b = tmp_path / "b.yml"
    a.write_text("services: [{name: sshd, image: x}]\n")
    b.write_text("services: [{name: sshd, image: y}]\n")
    with pytest.raises(
        SpecError, match=r"b\.yml: services: duplicate service name 'sshd' \(also defined in .*a\.yml\)"
    ):
        load_spec([a, b])


def test_duplicate_volumes_across_files_are_refused(tmp_path: Path) -> None:
    a = tmp_path / "a.yml"
    a.write_text("volumes: [{name: v}]\n")
    with pytest.raises(SpecError, match="duplicate volume name 'v'"):
        load_spec([a, a])


def test_unreadable_file_is_a_spec_error(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"missing\.yml: cannot read"):
        load_spec([tmp_path / "missing.yml"])
    with pytest.raises(SpecError, match="no LinuxKit YAML"):
        load_spec([])


def test_merge_of_nothing_is_an_empty_spec() -> None:
    assert merge_specs([]).kernel == KernelSpec()


def test_label_config_is_validated_with_the_same_schema() -> None:
    config = parse_container_config({"capabilities": ["CAP_NET_ADMIN"], "binds": ["/a:/b"]}, "label")
    assert config == ContainerConfig(capabilities=("CAP_NET_ADMIN",), binds=("/a:/b",))
    with pytest.raises(SpecError, match="label: name cannot be set"):
        parse_container_config({"name": "x"}, "label")
    with pytest.raises(SpecError, match="label: bindz: unknown key"):
        parse_container_config({"bindz": []}, "label")


def test_container_ids_count_from_100_over_onboot_onshutdown_services() -> None:
    spec = parse_spec(
        "onboot: [{name: a, image: x}, {name: b, image: x}]\nonshutdown: [{name: c, image: x}]\n"
        "services: [{name: d, image: x}]\n"
    )
    assert spec.id_map() == {"a": 100, "b": 101, "c": 102, "d": 103}


def test_image_refs_lists_each_image_once_in_build_order() -> None:
    spec = parse_spec(
        "kernel: {image: k}\ninit: [i, j]\nvolumes: [{name: v, image: vol}]\n"
        "onboot: [{name: a, image: x}]\nservices: [{name: b, image: x}, {name: c, image: y}]\n"
    )
    assert spec.image_refs() == ["k", "i", "j", "vol", "x", "y"]

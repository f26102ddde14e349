"""The OCI runtime `config.json` and LinuxKit `runtime.json` for one container: LinuxKit's `ConfigToOCI`, ported.

Pure functions. Precedence per field is YAML > image label `org.mobyproject.config` > image config > default,
except `capabilities.add` and `binds.add`, which add to the *label's* list (and are ignored when the YAML sets
`capabilities`/`binds` itself). Dicts are built in the Go structs' field order and serialised like Go's
`json.MarshalIndent(v, "", "    ")`, so a bundle reads the same as one `linuxkit build` made.

Deliberate differences from LinuxKit (v1.2.1 runtime-spec era):
- `uidMappings`/`gidMappings` (and mount `uidmappings`) keep `hostID`/`containerID`; LinuxKit's yaml.v3 decoding
  silently drops them (it expects lowercase keys the schema forbids). Likewise `resources.blockio`,
  `memory.kernelTCP`/`disableOOMKiller`, `cpu.realtime*` and `hugepageLimits` are passed through to OCI
  (`blockio` becomes `blockIO`; `pageSize` becomes a string as OCI wants) instead of being dropped.
- Effective capabilities are de-duplicated (LinuxKit's `mergeStrings` means to, but does not).
- A uid/gid given as a string of digits is taken as that number rather than looked up as a container name.
Unconverted: nothing in the schema is left out; seccomp, apparmor, hooks and cgroup namespaces are not
expressible in LinuxKit YAML, so they are absent here too.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from lkctl.build.spec import (
    Container,
    ContainerConfig,
    Mount,
    Runtime,
    Volume,
    parse_container_config,
    to_json,
)
from lkctl.errors import ImageError, SpecError

__all__ = [
    "ALL_CAPABILITIES",
    "LABEL",
    "OCI_VERSION",
    "config_to_oci",
    "go_json",
    "label_config",
    "resolve_id",
    "volume_merged_dir",
]

LABEL = "org.mobyproject.config"
OCI_VERSION = "1.2.1"

_CAP_NAMES = """
    CHOWN DAC_OVERRIDE DAC_READ_SEARCH FOWNER FSETID KILL SETGID SETUID SETPCAP LINUX_IMMUTABLE NET_BIND_SERVICE
    NET_BROADCAST NET_ADMIN NET_RAW IPC_LOCK IPC_OWNER SYS_MODULE SYS_RAWIO SYS_CHROOT SYS_PTRACE SYS_PACCT SYS_ADMIN
    SYS_BOOT SYS_NICE SYS_RESOURCE SYS_TIME SYS_TTY_CONFIG MKNOD LEASE AUDIT_WRITE AUDIT_CONTROL SETFCAP MAC_OVERRIDE
    MAC_ADMIN SYSLOG WAKE_ALARM BLOCK_SUSPEND AUDIT_READ PERFMON BPF CHECKPOINT_RESTORE
"""
_RLIMIT_NAMES = "CPU FSIZE DATA STACK CORE RSS NPROC NOFILE MEMLOCK AS LOCKS SIGPENDING MSGQUEUE NICE RTPRIO RTTIME"

# moby/sys/capability ListKnown() order (kernel numbering), which is what `all` expands to.
ALL_CAPABILITIES: tuple[str, ...] = tuple("CAP_" + c for c in _CAP_NAMES.split())
_KNOWN_CAPS = frozenset(ALL_CAPABILITIES)
_RLIMITS = frozenset("RLIMIT_" + n for n in _RLIMIT_NAMES.split())
_UNLIMITED = 2**64 - 1

_DEFAULT_MOUNT_DEST = {
    "proc": "/proc",
    "devpts": "/dev/pts",
    "sysfs": "/sys",
    "cgroup": "/sys/fs/cgroup",
    "mqueue": "/dev/mqueue",
}


def volume_merged_dir(name: str) -> str:
    return f"/containers/volumes/{name}/merged"


def go_json(obj: Any) -> bytes:
    """`json.MarshalIndent(obj, "", "    ")`: 4-space indent, UTF-8, and Go's HTML-safe escapes."""
    text = json.dumps(obj, indent=4, ensure_ascii=False)
    # These characters can only occur inside JSON strings, so replacing them in the text is safe.
    for ch, esc in (("&", "\\u0026"), ("<", "\\u003c"), (">", "\\u003e"), ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(ch, esc)
    return text.encode()


def label_config(image_config: Mapping[str, Any], ref: str = "image") -> ContainerConfig:
    """The `org.mobyproject.config` label of an image config (`config` section), or an empty config."""
    raw = (image_config.get("Labels") or {}).get(LABEL) or ""
    if not raw:
        return ContainerConfig()
    try:
        obj = json.loads(raw)
    except ValueError:
        try:
            obj = yaml.safe_load(raw)  # LinuxKit decodes the label with a YAML parser
        except yaml.YAMLError as e:
            raise ImageError(f"{ref}: label {LABEL} is neither JSON nor YAML: {e}") from None
    try:
        return parse_container_config(obj, f"{ref}: label {LABEL}")
    except SpecError as e:
        raise ImageError(e.message) from None


def _first(*values: Any, default: Any) -> Any:
    """The first value that is set (not None): LinuxKit's `assign*` helpers, arguments highest priority first."""
    for v in values:
        if v is not None:
            return v
    return default


def _nonempty(*values: str | None, default: str) -> str:
    """The first non-empty string: LinuxKit's `assignStringEmpty*` helpers, highest priority first."""
    for v in values:
        if v:
            return v
    return default


def _ids_json(mappings: Sequence[Any]) -> list[dict[str, int]]:
    return [{"containerID": m.container_id, "hostID": m.host_id, "size": m.size} for m in mappings]


def _mount_json(destination: str, type_: str, source: str, m: Mount | None = None) -> dict[str, Any]:
    d: dict[str, Any] = {"destination": destination}
    if type_:
        d["type"] = type_
    if source:
        d["source"] = source
    if m is not None:
        if m.options:
            d["options"] = list(m.options)
        if m.uidmappings:
            d["uidMappings"] = _ids_json(m.uidmappings)
        if m.gidmappings:
            d["gidMappings"] = _ids_json(m.gidmappings)
    return d


def _plain_mount(destination: str, type_: str, source: str, options: Sequence[str]) -> dict[str, Any]:
    return _mount_json(destination, type_, source, Mount(options=tuple(options)))


def _with_volumes(cfg: ContainerConfig, volumes: Mapping[str, Volume], where: str) -> ContainerConfig:
    """Rewrite bind sources that name a volume to the volume's merged dir (`updateMountsAndBindsFromVolumes`)."""

    def volume(name: str, what: str) -> Volume:
        if name not in volumes:
            raise SpecError(f"{where}: {what} refers to volume {name!r}, which is not defined under volumes")
        return volumes[name]

    def rewrite_binds(binds: tuple[str, ...] | None, key: str) -> tuple[str, ...] | None:
        if binds is None:
            return None
        out = []
        for b in binds:
            parts = b.split(":")
            if not parts[0].startswith("/"):
                vol = volume(parts[0], f"{key} {b!r}")
                if vol.readonly and (len(parts) < 3 or parts[2] != "ro"):
                    raise SpecError(f"{where}: volume {vol.name!r} is read-only; bind it with :ro ({b!r})")
                parts[0] = volume_merged_dir(vol.name)
            out.append(":".join(parts))
        return tuple(out)

    mounts = cfg.mounts
    if mounts is not None:
        new = []
        for m in mounts:
            if m.type == "bind" and not m.source.startswith("/"):
                vol = volume(m.source, f"mount {m.destination!r}")
                if vol.readonly:
                    flags = [o for o in m.options or () if o in ("rw", "ro")]
                    if not flags or flags[0] != "ro":
                        raise SpecError(f"{where}: volume {vol.name!r} is read-only; mount it with the ro option")
                m = dataclasses.replace(m, source=volume_merged_dir(vol.name))
            new.append(m)
        mounts = tuple(new)
    return dataclasses.replace(
        cfg,
        mounts=mounts,
        binds=rewrite_binds(cfg.binds, "bind"),
        binds_add=rewrite_binds(cfg.binds_add, "binds.add"),
    )


def resolve_id(value: int | str | None, id_map: Mapping[str, int], where: str) -> int:
    """A uid/gid given as a number, a digit string, "root"/empty (0) or a container name (its allocated id)."""
    if value is None or value in ("", "root"):
        return 0
    if isinstance(value, int):
        if not 0 <= value < 2**32:
            raise SpecError(f"{where}: id {value} is out of range")
        return value
    if value.isdigit():
        return int(value)
    if value in id_map:
        return id_map[value]
    raise SpecError(f"{where}: cannot find id {value!r} (not a number and no container has that name)")


def _caps(values: list[str], where: str) -> list[str]:
    if len(values) == 1 and values[0].lower() == "none":
        return []
    if len(values) == 1 and values[0].lower() == "all":
        return list(ALL_CAPABILITIES)
    for c in values:
        if c not in _KNOWN_CAPS:
            raise SpecError(f"{where}: unknown capability {c!r} (use names like CAP_NET_ADMIN, or all/none)")
    return list(dict.fromkeys(values))


def _rlimit(text: str, where: str) -> dict[str, Any]:
    parts = text.split(",", 2)
    if len(parts) != 3:
        raise SpecError(f"{where}: cannot parse rlimit {text!r} (want name,soft,hard)")
    name = parts[0].strip().upper()
    if not name.startswith("RLIMIT_"):
        name = "RLIMIT_" + name
    if name not in _RLIMITS:
        raise SpecError(f"{where}: unknown rlimit {parts[0].strip()!r}")

    def value(s: str) -> int:
        s = s.strip()
        if s.lower() == "unlimited":
            return _UNLIMITED
        if not s.isdigit() or int(s) > _UNLIMITED:
            raise SpecError(f"{where}: rlimit {text!r}: {s!r} is not a number or unlimited")
        return int(s)

    soft, hard = value(parts[1]), value(parts[2])
    return {"type": name, "hard": hard, "soft": soft}


def _namespace(value: str, type_: str, default: str) -> dict[str, str] | None:
    """host/root: share the host's (no entry); new (or none, for net): a fresh one; anything else: a path."""
    v = value or default
    if v in ("host", "root"):
        return None
    if v == "new" or (type_ == "network" and v == "none"):
        return {"type": type_}
    return {"type": type_, "path": v}


def _resources_json(cfg: ContainerConfig) -> dict[str, Any]:
    if cfg.resources is None:
        return {}
    r: dict[str, Any] = to_json(cfg.resources)
    if "devices" in r:
        r["devices"] = [
            {"allow": d.get("allow", False), **{k: v for k, v in d.items() if k != "allow"}} for d in r["devices"]
        ]
    if "blockio" in r:
        r["blockIO"] = r.pop("blockio")
    for h in r.get("hugepageLimits", []):
        if "pageSize" in h:
            h["pageSize"] = str(h["pageSize"])
    # keep OCI's field order: devices, memory, cpu, pids, blockIO, hugepageLimits, network
    order = ("devices", "memory", "cpu", "pids", "blockIO", "hugepageLimits", "network")
    return {k: r[k] for k in order if k in r}


def _runtime_json(label: Runtime | None, yml: Runtime | None) -> dict[str, Any]:
    lab, y = label or Runtime(), yml or Runtime()

    def mounts(ms: tuple[Mount, ...]) -> list[dict[str, Any]]:
        return [_mount_json(m.destination, m.type, m.source, m) for m in ms]

    def interface(i: Any) -> dict[str, Any]:
        d = {k: v for k, v in (("name", i.name), ("add", i.add), ("peer", i.peer)) if v}
        return {**d, "createInRoot": i.create_in_root}

    lb, yb = lab.bind_ns, y.bind_ns
    bind_ns = {
        ns: _first(getattr(yb, ns) if yb else None, getattr(lb, ns) if lb else None, default="")
        for ns in ("cgroup", "ipc", "mnt", "net", "pid", "user", "uts")
    }
    return {
        "cgroups": list(_first(y.cgroups, lab.cgroups, default=())),
        "mounts": mounts(_first(y.mounts, lab.mounts, default=())),
        "mkdir": list(_first(y.mkdir, lab.mkdir, default=())),
        "interfaces": [interface(i) for i in _first(y.interfaces, lab.interfaces, default=())],
        "bindNS": bind_ns,
        "namespace": _first(y.namespace, lab.namespace, default=""),
    }


def config_to_oci(
    container: Container,
    image_config: Mapping[str, Any],
    id_map: Mapping[str, int],
    *,
    volumes: Mapping[str, Volume] | None = None,
    where: str = "",
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(config.json, runtime.json) dicts for `container`, given its image's config section (`Entrypoint`, `Cmd`,
    `Env`, `WorkingDir`, `Labels`) and the name → id map for `uid: <container>`.

    Each setting is the YAML's, else the image label's, else the image config's or LinuxKit's default."""
    where = where or container.name
    label = label_config(image_config, container.image)
    y = _with_volumes(container.config, volumes or {}, where)
    readonly = bool(_first(y.readonly, label.readonly, default=False))

    mounts = _mounts(y, label, readonly, where)  # errors are found in LinuxKit's order: mounts, process, devices
    oci: dict[str, Any] = {"ociVersion": OCI_VERSION, "process": _process(y, label, image_config, id_map, where)}
    oci["root"] = {"path": "rootfs", "readonly": True} if readonly else {"path": "rootfs"}
    hostname = _nonempty(y.hostname, label.hostname, default="")
    if hostname:
        oci["hostname"] = hostname
    oci["mounts"] = mounts
    annotations = _first(y.annotations, label.annotations, default={})
    if annotations:
        oci["annotations"] = {k: annotations[k] for k in sorted(annotations)}
    oci["linux"] = _linux(y, label, where)
    return oci, _runtime_json(label.runtime, y.runtime)


def _mounts(y: ContainerConfig, label: ContainerConfig, readonly: bool, where: str) -> list[dict[str, Any]]:
    """The standard mounts, then tmpfs, binds and mounts, by destination (a later one replaces an earlier)."""
    dev_opts = ["nosuid", "strictatime", "mode=755", "size=65536k"] + (["ro"] if readonly else [])
    sys_opts = ["nosuid", "noexec", "nodev"] + (["ro"] if readonly else [])
    mounts: dict[str, dict[str, Any]] = {
        "/proc": _plain_mount("/proc", "proc", "proc", ["nosuid", "nodev", "noexec", "relatime"]),
        "/dev": _plain_mount("/dev", "tmpfs", "tmpfs", dev_opts),
        "/dev/pts": _plain_mount(
            "/dev/pts", "devpts", "devpts", ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]
        ),
        "/sys": _plain_mount("/sys", "sysfs", "sysfs", sys_opts),
        "/sys/fs/cgroup": _plain_mount(
            "/sys/fs/cgroup", "cgroup", "cgroup", ["nosuid", "noexec", "nodev", "relatime", "ro"]
        ),
    }
    for t in _first(y.tmpfs, label.tmpfs, default=()):
        parts = t.split(":")
        if len(parts) > 2:
            raise SpecError(f"{where}: cannot parse tmpfs {t!r}: too many ':'")
        opts = parts[1].split(",") if len(parts) == 2 else []
        mounts[parts[0]] = _plain_mount(parts[0], "tmpfs", "tmpfs", opts)
    # binds.add extends the label's binds; binds in the YAML replaces them (and ignores binds.add)
    binds = list(y.binds) if y.binds is not None else [*(label.binds or ()), *(y.binds_add or ())]
    for b in binds:
        parts = b.split(":")
        if len(parts) < 2:
            raise SpecError(f"{where}: cannot parse bind {b!r}: missing ':'")
        if len(parts) > 3:
            raise SpecError(f"{where}: cannot parse bind {b!r}: too many ':'")
        opts = [*parts[2].split(","), "rbind"] if len(parts) == 3 else ["rw", "rbind", "rshared"]
        mounts[parts[1]] = _plain_mount(parts[1], "bind", parts[0], opts)
    for m in _first(y.mounts, label.mounts, default=()):
        tp, src, dest = m.type, m.source, m.destination
        if not tp and src in _DEFAULT_MOUNT_DEST:
            tp = src
        if not tp and dest == "/dev":
            tp = "tmpfs"
        if not tp:
            raise SpecError(f"{where}: mount for destination {dest!r} is missing type")
        src = src or tp
        dest = dest or _DEFAULT_MOUNT_DEST.get(tp, "")
        if not dest:
            raise SpecError(f"{where}: mount of type {tp!r} is missing destination")
        mounts[dest] = _mount_json(dest, tp, src, m)
    return [mounts[d] for d in sorted(mounts)]


def _capabilities(y: ContainerConfig, label: ContainerConfig, where: str) -> dict[str, list[str]]:
    if y.capabilities is not None:
        cap_names = list(y.capabilities)
    else:
        cap_names = list(label.capabilities or ()) + list(y.capabilities_add or ())
    caps = _caps(cap_names, where)
    ambient = _caps(list(_first(y.ambient, label.ambient, default=())), where)
    bounding = sorted(set(caps) | set(ambient))
    return {
        k: v
        for k, v in (
            ("bounding", bounding),
            ("effective", caps),
            ("inheritable", bounding),
            ("permitted", bounding),
            ("ambient", ambient),
        )
        if v
    }


def _process(
    y: ContainerConfig, label: ContainerConfig, image_config: Mapping[str, Any], id_map: Mapping[str, int], where: str
) -> dict[str, Any]:
    """OCI `process`: argv, environment, cwd, user, capabilities, rlimits."""
    entry = list(image_config.get("Entrypoint") or []) + list(image_config.get("Cmd") or [])
    args = list(_first(y.command, label.command, default=entry))
    env = list(_first(y.env, label.env, default=image_config.get("Env") or []))
    cwd = _nonempty(y.cwd, label.cwd, image_config.get("WorkingDir"), default="/")
    capabilities = _capabilities(y, label, where)
    rlimits = [_rlimit(r, where) for r in _first(y.rlimits, label.rlimits, default=())]
    user: dict[str, Any] = {
        "uid": resolve_id(_first(y.uid, label.uid, default=None), id_map, f"{where}: uid"),
        "gid": resolve_id(_first(y.gid, label.gid, default=None), id_map, f"{where}: gid"),
    }
    extra_gids = [
        resolve_id(g, id_map, f"{where}: additionalGids")
        for g in _first(y.additional_gids, label.additional_gids, default=())
    ]
    if extra_gids:
        user["additionalGids"] = extra_gids

    process: dict[str, Any] = {"user": user}
    if args:
        process["args"] = args
    if env:
        process["env"] = env
    process["cwd"] = cwd
    process["capabilities"] = capabilities
    if rlimits:
        process["rlimits"] = rlimits
    if _first(y.no_new_privileges, label.no_new_privileges, default=False):
        process["noNewPrivileges"] = True
    oom = _first(y.oom_score_adj, label.oom_score_adj, default=None)
    if oom is not None:
        process["oomScoreAdj"] = oom
    return process


def _devices(y: ContainerConfig, label: ContainerConfig, resources: dict[str, Any], where: str) -> list[Any]:
    """OCI `linux.devices`; each device (and `all`) is also allowed in `resources.devices`."""
    devices = []
    for d in _first(y.devices, label.devices, default=()):
        if d.path == "all":
            resources.setdefault("devices", []).append({"allow": True, "type": d.type, "access": "rwm"})
            continue
        try:
            mode = int(d.mode, 8)
        except ValueError:
            raise SpecError(f"{where}: device {d.path!r}: mode {d.mode!r} is not an octal number") from None
        devices.append({"path": d.path, "type": d.type, "major": d.major, "minor": d.minor, "fileMode": mode})
        resources.setdefault("devices", []).append(
            {"allow": True, "type": d.type, "major": d.major, "minor": d.minor, "access": "rwm"}
        )
    return devices


def _linux(y: ContainerConfig, label: ContainerConfig, where: str) -> dict[str, Any]:
    """OCI `linux`: id mappings, sysctl, resources, cgroup, namespaces, devices, propagation, path masks."""
    namespaces = [
        ns
        for ns in (
            _namespace(_nonempty(y.net, label.net, default=""), "network", "root"),
            _namespace(_nonempty(y.ipc, label.ipc, default=""), "ipc", "root"),
            _namespace(_nonempty(y.uts, label.uts, default=""), "uts", "root"),
            _namespace(_nonempty(y.pid, label.pid, default=""), "pid", "new"),
            _namespace(_nonempty(y.userns, label.userns, default=""), "user", "root"),
        )
        if ns is not None
    ]
    namespaces.append({"type": "mount"})
    resources = _resources_json(y if y.resources is not None else label)
    devices = _devices(y, label, resources, where)

    linux: dict[str, Any] = {}
    uid_maps = _first(y.uid_mappings, label.uid_mappings, default=())
    gid_maps = _first(y.gid_mappings, label.gid_mappings, default=())
    if uid_maps:
        linux["uidMappings"] = _ids_json(uid_maps)
    if gid_maps:
        linux["gidMappings"] = _ids_json(gid_maps)
    sysctl = _first(y.sysctl, label.sysctl, default={})
    if sysctl:
        linux["sysctl"] = {k: sysctl[k] for k in sorted(sysctl)}
    linux["resources"] = resources
    cgroups_path = _first(y.cgroups_path, label.cgroups_path, default="")
    if cgroups_path:
        linux["cgroupsPath"] = cgroups_path
    linux["namespaces"] = namespaces
    if devices:
        linux["devices"] = devices
    propagation = _first(y.rootfs_propagation, label.rootfs_propagation, default="")
    if propagation:
        linux["rootfsPropagation"] = propagation
    for key, value in (
        ("maskedPaths", _first(y.masked_paths, label.masked_paths, default=())),
        ("readonlyPaths", _first(y.readonly_paths, label.readonly_paths, default=())),
    ):
        if value:
            linux[key] = list(value)
    return linux

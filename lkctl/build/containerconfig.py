"""LinuxKit's per-container settings (`ImageConfig` in moby/config.go): what an `onboot`/`services` entry or an
image's `org.mobyproject.config` label may say, as frozen dataclasses that `lkctl.build.spec` validates and
`lkctl.build.ociconfig` turns into an OCI runtime config. None means "not set here"."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = [
    "BindNS",
    "BlockIO",
    "ContainerConfig",
    "Cpu",
    "Device",
    "DeviceCgroup",
    "HugepageLimit",
    "IdMapping",
    "Interface",
    "InterfacePriority",
    "Memory",
    "Mount",
    "Network",
    "Pids",
    "Resources",
    "Runtime",
    "ThrottleDevice",
    "WeightDevice",
]


@dataclass(frozen=True)
class IdMapping:
    container_id: int = field(default=0, metadata={"key": "containerID"})
    host_id: int = field(default=0, metadata={"key": "hostID"})
    size: int = 0


@dataclass(frozen=True)
class Mount:
    destination: str = ""
    type: str = ""
    source: str = ""
    options: tuple[str, ...] | None = None
    uidmappings: tuple[IdMapping, ...] | None = field(default=None, metadata={"key": "uidmappings"})
    gidmappings: tuple[IdMapping, ...] | None = field(default=None, metadata={"key": "gidmappings"})


@dataclass(frozen=True)
class Device:
    path: str = ""
    type: str = ""
    major: int = 0
    minor: int = 0
    mode: str = ""


@dataclass(frozen=True)
class DeviceCgroup:
    allow: bool | None = None
    type: str | None = None
    major: int | None = None
    minor: int | None = None
    access: str | None = None


@dataclass(frozen=True)
class Memory:
    limit: int | None = None
    reservation: int | None = None
    swap: int | None = None
    kernel: int | None = None
    kernel_tcp: int | None = field(default=None, metadata={"key": "kernelTCP"})
    swappiness: int | None = None
    disable_oom_killer: bool | None = field(default=None, metadata={"key": "disableOOMKiller"})


@dataclass(frozen=True)
class Cpu:
    shares: int | None = None
    quota: int | None = None
    period: int | None = None
    realtime_runtime: int | None = None
    realtime_period: int | None = None
    cpus: str | None = None
    mems: str | None = None


@dataclass(frozen=True)
class Pids:
    limit: int | None = None


@dataclass(frozen=True)
class WeightDevice:
    major: int | None = None
    minor: int | None = None
    weight: int | None = None
    leaf_weight: int | None = None


@dataclass(frozen=True)
class ThrottleDevice:
    major: int | None = None
    minor: int | None = None
    rate: int | None = None


@dataclass(frozen=True)
class BlockIO:
    weight: int | None = None
    leaf_weight: int | None = None
    weight_device: tuple[WeightDevice, ...] | None = None
    throttle_read_bps_device: tuple[ThrottleDevice, ...] | None = None
    throttle_write_bps_device: tuple[ThrottleDevice, ...] | None = None
    throttle_read_iops_device: tuple[ThrottleDevice, ...] | None = field(
        default=None, metadata={"key": "throttleReadIOPSDevice"}
    )
    throttle_write_iops_device: tuple[ThrottleDevice, ...] | None = field(
        default=None, metadata={"key": "throttleWriteIOPSDevice"}
    )


@dataclass(frozen=True)
class HugepageLimit:
    page_size: int | None = None
    limit: int | None = None


@dataclass(frozen=True)
class InterfacePriority:
    name: str | None = None
    priority: int | None = None


@dataclass(frozen=True)
class Network:
    class_id: int | None = field(default=None, metadata={"key": "classID"})
    priorities: tuple[InterfacePriority, ...] | None = None


@dataclass(frozen=True)
class Resources:
    devices: tuple[DeviceCgroup, ...] | None = None
    memory: Memory | None = None
    cpu: Cpu | None = None
    pids: Pids | None = None
    blockio: BlockIO | None = field(default=None, metadata={"key": "blockio"})
    hugepage_limits: tuple[HugepageLimit, ...] | None = None
    network: Network | None = None


@dataclass(frozen=True)
class Interface:
    name: str = ""
    add: str = ""
    peer: str = ""
    create_in_root: bool = False


@dataclass(frozen=True)
class BindNS:
    cgroup: str | None = None
    ipc: str | None = None
    mnt: str | None = None
    net: str | None = None
    pid: str | None = None
    user: str | None = None
    uts: str | None = None


@dataclass(frozen=True)
class Runtime:
    """Config the guest's `service` tool applies around `runc create` (written to runtime.json)."""

    cgroups: tuple[str, ...] | None = None
    mounts: tuple[Mount, ...] | None = None
    mkdir: tuple[str, ...] | None = None
    interfaces: tuple[Interface, ...] | None = None
    bind_ns: BindNS | None = field(default=None, metadata={"key": "bindNS"})
    namespace: str | None = None


@dataclass(frozen=True)
class ContainerConfig:
    """Per-container settings, from the YAML or the image label. None means "not set here"."""

    capabilities: tuple[str, ...] | None = None
    capabilities_add: tuple[str, ...] | None = field(default=None, metadata={"key": "capabilities.add"})
    ambient: tuple[str, ...] | None = None
    mounts: tuple[Mount, ...] | None = None
    binds: tuple[str, ...] | None = None
    binds_add: tuple[str, ...] | None = field(default=None, metadata={"key": "binds.add"})
    devices: tuple[Device, ...] | None = None
    tmpfs: tuple[str, ...] | None = None
    command: tuple[str, ...] | None = None
    env: tuple[str, ...] | None = None
    cwd: str | None = None
    net: str | None = None
    pid: str | None = None
    ipc: str | None = None
    uts: str | None = None
    userns: str | None = None
    hostname: str | None = None
    readonly: bool | None = None
    masked_paths: tuple[str, ...] | None = None
    readonly_paths: tuple[str, ...] | None = None
    uid: int | str | None = None
    gid: int | str | None = None
    additional_gids: tuple[int | str, ...] | None = None
    no_new_privileges: bool | None = None
    oom_score_adj: int | None = None
    rootfs_propagation: str | None = None
    cgroups_path: str | None = None
    resources: Resources | None = None
    sysctl: Mapping[str, str] | None = None
    rlimits: tuple[str, ...] | None = None
    uid_mappings: tuple[IdMapping, ...] | None = None
    gid_mappings: tuple[IdMapping, ...] | None = None
    annotations: Mapping[str, str] | None = None
    runtime: Runtime | None = None

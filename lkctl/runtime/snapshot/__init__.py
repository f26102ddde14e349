"""Warm starts (`vm.run -d --snapshot`): a new VM restored from a memory snapshot of its image, taken once at the
image's ready point, then given its own identity before anything can use it.

The snapshot is taken from a *template boot*: the VM's own QEMU argv with its per-VM parts removed (`key_argv`),
booted in a private work dir with a throwaway identity (keys made for it and deleted, host name
`lkctl-snapshot`), so no real VM's keys ever sit in a snapshot. Snapshot boots add a virtio-serial port
(`org.lkctl.identity`) and `vmgenid`. The guest (images/init `007-identity` + `identity`) then starts an agent
before any service; lkctl-sshd waits for it before it reads its keys. When init is ready, the agent waits on the
port and sshd waits on the agent, QEMU is stopped and its state migrated into a file (`exec:cat > FILE`).

A restore starts the VM's own argv plus those devices and `-incoming "exec:cat FILE"`, waits for `paused`, sends
`cont`, then writes the identity message on the port: the host's clock, random bytes for /dev/urandom, and the
VM's fw_cfg files (its host key, also in dropbear's format, authorized key, host name, environment). The agent
answers `ok` once they are in place and the host name is set; only then does dropbear start, with this VM's pinned
host key. The host answers `ok` with its clock again, from which the guest steps its clock to the millisecond
(`clock_line`; busybox's date sets whole seconds). QEMU's `vmgenid`
gets a fresh GUID on every start (`guid=auto`), so the guest kernel reseeds its RNG on restore by itself.

A snapshot is keyed by a digest of what it depends on (`key_inputs`): the argv without per-VM parts (machine,
accelerator, CPU model, memory, CPUs, kernel command line, devices, fw_cfg names), the identity of the kernel and
initrd files and of the QEMU binary with its version, and the environment's digest (services started before the
snapshot saw it). Anything else that would differ after a restore is refused up front (`check_supported`).
Snapshots live in `<cache>/snapshots/` (0700; files 0600, written to a temp name and renamed). Any failure to
take or restore one falls back to a cold boot, said in one line (to the caller's `say`, else as a warning of the
`lkctl.runtime.snapshot` logger). `image.prune` and `image.rm` remove the snapshots that can never be restored
again (`prune_snapshots`); `lkctl doctor` shows the store's size (`snapshot_usage`). `vm.run --dry-run --snapshot`
prints the restore's argv (`planned_start`).
"""

from lkctl.runtime.snapshot._plan import (
    IDENTITY_PORT,
    IDENTITY_SOCKET,
    SnapshotKey,
    check_supported,
    clock_line,
    guest_file_entries,
    identity_message,
    key_argv,
    key_inputs,
    snapshot_argv,
    template_argv,
)
from lkctl.runtime.snapshot._prune import PrunedSnapshots, SnapshotUsage, prune_snapshots, snapshot_usage
from lkctl.runtime.snapshot._store import planned_start, restore, snapshot_key, snapshots_dir, take_snapshot

__all__ = [
    "IDENTITY_PORT",
    "IDENTITY_SOCKET",
    "PrunedSnapshots",
    "SnapshotKey",
    "SnapshotUsage",
    "check_supported",
    "clock_line",
    "guest_file_entries",
    "identity_message",
    "key_argv",
    "key_inputs",
    "planned_start",
    "prune_snapshots",
    "restore",
    "snapshot_argv",
    "snapshot_key",
    "snapshot_usage",
    "snapshots_dir",
    "take_snapshot",
    "template_argv",
]

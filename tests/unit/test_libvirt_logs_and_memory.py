from collections.abc import Iterator
from pathlib import Path

import pytest

from lkctl.errors import ConfigError
from lkctl.flags import parse_memory
from lkctl.runtime.libvirt import vms
from lkctl.runtime.state import VmRecord
from lkctl.runtime.watch import read_console


def _libvirt_record() -> VmRecord:
    record = VmRecord(id="0a1b2c3d", name="lv", image="minimal", image_format="kernel+initrd",
                      created="2026-01-01T00:00:00.000+00:00", memory=256, cpus=1, ssh_port=0,
                      libvirt={"uri": "qemu+ssh://root@hv2/system", "domain": "lkctl-0a1b2c3d"})  # fmt: skip
    record.dir.mkdir(parents=True)
    return record


def test_logs_of_a_libvirt_vm_are_its_hosts_console_file_not_a_local_one(
    lkctl_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = _libvirt_record()
    asked: list[tuple[str, bool]] = []

    def console_chunks(rec: VmRecord, *, follow: bool = False, poll: float = 0.5) -> Iterator[bytes]:
        asked.append((rec.id, follow))
        yield b"[    0.000000] Linux version\nlkctl-init: rea"
        yield b"dy\npartial"

    monkeypatch.setattr(vms, "console_chunks", console_chunks)
    assert not (record.dir / "console.log").exists()
    lines = [line.text for line in read_console(record)]
    assert lines == [b"[    0.000000] Linux version\n", b"lkctl-init: ready\n"]  # the partial last line waits
    assert [line.text for line in read_console(record, tail=1)] == [b"lkctl-init: ready\n"]
    assert asked == [(record.id, False)] * 2


def test_memory_through_libvirt_is_not_limited_by_this_machines_memory() -> None:
    # placement (or the chosen host) answers for a VM run through libvirt: this machine's memory is not the limit
    assert parse_memory("100000000", local=False) == 100000000
    with pytest.raises(ConfigError, match="more than this machine"):
        parse_memory("100000000")
    with pytest.raises(ConfigError, match="whole megabytes"):
        parse_memory("1000K", local=False)

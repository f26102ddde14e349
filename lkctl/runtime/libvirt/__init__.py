"""The libvirt backend: lkctl VMs as libvirt domains, on this host (qemu:///system) or remote ones (qemu+ssh://).

- `domain`: `domain_xml(spec, host, files, record)`, pure and golden-tested like `qemu_argv`
- `hosts`: `lkctl.hosts` config, placement (`--host auto`), the SSH jump to a remote host's guests
- `backend`: the only importer of `libvirt`: connect, probe, pool, volume upload, define/start/stop
- `vms`: run, status, stop, kill, restart, rm, logs, inspect, export and ps across hosts, over lkctl's records

Nothing here imports `libvirt` at module level: lkctl without libvirt-python installed works as before, and
`--connect`/`--host` then say in one line how to install it (`pip install 'lkctl[libvirt]'`).
"""

__all__: list[str] = []

"""Copying files and trees over the SSH exec channel (tar), since guests have no sftp subsystem."""

from __future__ import annotations

import io
import os
import posixpath
import shlex
import tarfile
import threading
from pathlib import Path

from lkctl.errors import ConfigError, SshError
from lkctl.ssh._connect import SshTarget
from lkctl.ssh._exec import _CHUNK, exec_command


def copy_to(target: SshTarget, local: Path, remote: str, *, timeout: float | None = None) -> None:
    """Copy a file or directory tree to `remote` on the guest (tar over the SSH channel; no sftp needed).

    `remote` names the copy; a trailing `/` copies into that directory instead. Files arrive owned by root.
    """
    if not local.exists() or not remote:
        raise ConfigError(f"cannot copy {local} to VM {target.label}:{remote!r}: no such file, or no destination")
    if remote.endswith("/"):  # into that directory, keeping the local name
        directory, name = remote.rstrip("/") or "/", local.name
    else:
        directory, name = posixpath.dirname(remote) or ".", posixpath.basename(remote)
    read_fd, write_fd = os.pipe()
    failures: list[BaseException] = []

    def as_root(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        return info

    def produce() -> None:
        try:
            with os.fdopen(write_fd, "wb") as pipe, tarfile.open(fileobj=pipe, mode="w|") as tar:
                tar.add(local, arcname=name, filter=as_root)
        except BrokenPipeError:
            pass  # the guest's tar quit early; its status says why
        except BaseException as e:
            failures.append(e)

    producer = threading.Thread(target=produce, daemon=True, name="lkctl-ssh-tar")
    producer.start()
    errors = io.BytesIO()
    with os.fdopen(read_fd, "rb") as source:
        status = exec_command(
            target,
            command=f"mkdir -p -- {shlex.quote(directory)} && tar -x -f - -C {shlex.quote(directory)}",
            stdin=source,
            stdout=errors,
            stderr=errors,
            timeout=timeout,
        )
    producer.join()
    if failures:
        raise failures[0]
    if status != 0:
        raise SshError(f"copying {local} to VM {target.label}:{remote} failed (status {status}){_last_line(errors)}")


def copy_from(target: SshTarget, remote: str, local: Path, *, timeout: float | None = None) -> None:
    """Copy a file or directory tree from the guest to `local` (tar over the SSH channel; no sftp needed).

    Entries are checked with tarfile's "data" filter, so the guest cannot write outside `local`.
    """
    path = remote.rstrip("/")
    directory, name = posixpath.dirname(path) or ".", posixpath.basename(path)
    if name in ("", ".", ".."):
        raise ConfigError(f"cannot copy {remote!r} from VM {target.label}: name a file or directory")
    local.parent.mkdir(parents=True, exist_ok=True)
    read_fd, write_fd = os.pipe()
    failures: list[BaseException] = []

    def rename(info: tarfile.TarInfo, dest: str) -> tarfile.TarInfo | None:
        first, _, rest = info.name.removeprefix("./").partition("/")
        if first != name:
            raise SshError(f"the guest's tar sent an unexpected entry {info.name!r}")
        renamed = info.replace(name=posixpath.join(local.name, rest) if rest else local.name, deep=False)
        return tarfile.data_filter(renamed, dest)

    def consume() -> None:
        with os.fdopen(read_fd, "rb") as pipe:
            try:
                with tarfile.open(fileobj=pipe, mode="r|") as tar:
                    for member in tar:
                        tar.extract(member, local.parent, filter=rename)
            except tarfile.ReadError as e:
                if "empty file" not in str(e):  # guest tar failed before writing anything: its status says why
                    failures.append(e)
            except BaseException as e:
                failures.append(e)
            while pipe.read(_CHUNK):  # after a refused entry, keep the guest's tar from blocking on a full pipe
                pass

    consumer = threading.Thread(target=consume, daemon=True, name="lkctl-ssh-untar")
    consumer.start()
    errors = io.BytesIO()
    with os.fdopen(write_fd, "wb") as sink:
        status = exec_command(
            target,
            command=f"tar -c -f - -C {shlex.quote(directory)} {shlex.quote('./' + name)}",
            stdout=sink,
            stderr=errors,
            timeout=timeout,
        )
    consumer.join()
    if status != 0:
        raise SshError(f"copying VM {target.label}:{remote} to {local} failed (status {status}){_last_line(errors)}")
    if failures:
        e = failures[0]
        if isinstance(e, SshError):
            raise e
        raise SshError(f"copying VM {target.label}:{remote} to {local} failed: {e}") from e


def _last_line(captured: io.BytesIO) -> str:
    """The last thing a helper command said, for an error message."""
    lines = captured.getvalue().decode(errors="replace").strip().splitlines()
    return f": {lines[-1]}" if lines else ""

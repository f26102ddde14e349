"""Copying files and trees over the SSH exec channel (tar), since guests have no sftp subsystem.

Both directions follow `docker cp`: a file copied to an existing directory lands inside it; a directory copied
to a missing DEST becomes DEST, to an existing directory DEST/NAME; `SRC/.` copies a directory's contents;
symlinks travel as links. What comes back from the guest is checked entry by entry (`_untar`) before anything
is written, and errors are said in lkctl's words: the guest's own `tar:` messages are never passed on.
"""

from __future__ import annotations

import errno
import io
import os
import posixpath
import shlex
import tarfile
import threading
from pathlib import Path

from lkctl.errors import ConfigError, LkError, SshError
from lkctl.ssh._connect import SshTarget
from lkctl.ssh._exec import _CHUNK, exec_command
from lkctl.ssh._untar import StreamRefused, plan_copy, receive_tar

# Exit codes of the guest-side scripts below, and what they mean (the guest is untrusted: they only pick a message)
_NO_SOURCE, _NOT_A_DIR, _DEST_NOT_DIR, _IS_DIR, _NO_PARENT, _WRITE_FAILED, _DEST_IS_FILE = range(90, 97)

# Guest side of copy_to: choose the target with docker cp's rules, then unpack (a file via a temp dir and mv, so a
# failed copy never leaves half a file). Arguments: $1 dest, $2 name, $3 kind (file|dir|contents), $4 slash (0|1)
_RECEIVE = r"""
dest=$1 name=$2 kind=$3 slash=$4
parent_of() { case "$1" in */*) p=${1%/*}; echo "${p:-/}";; *) echo .;; esac; }
if [ "$kind" = file ]; then
    if [ -d "$dest" ]; then target="$dest/$name"
    elif [ "$slash" = 1 ]; then exit 92
    else target=$dest; fi
    [ -d "$target" ] && [ ! -L "$target" ] && exit 93
    dir=$(parent_of "$target"); [ -d "$dir" ] || exit 94
    t=$(mktemp -d "$dir/.lkctl-cp.XXXXXX") || exit 95
    if tar -x -f - -C "$t" && mv -f "$t/$name" "$target"; then rm -rf "$t"; exit 0; fi
    rm -rf "$t"; exit 95
fi
if [ -d "$dest" ]; then
    if [ "$kind" = dir ]; then target="$dest/$name"; else target=$dest; fi
elif [ -e "$dest" ] || [ -L "$dest" ]; then exit 96
else
    dir=$(parent_of "$dest"); [ -d "$dir" ] || exit 94
    target=$dest
fi
if [ -e "$target" ] && [ ! -d "$target" ]; then exit 96; fi
mkdir -p "$target" && tar -x -f - -C "$target" || exit 95
"""

# Guest side of copy_from. Arguments: $1 source, $2 contents (0|1)
_SEND = r"""
src=$1
[ -e "$src" ] || [ -L "$src" ] || exit 90
if [ "$2" = 1 ]; then [ -d "$src" ] || exit 91; cd "$src" && exec tar -c -f - .; fi
case "$src" in */*) dir=${src%/*}; dir=${dir:-/};; *) dir=.;; esac
cd "$dir" && exec tar -c -f - "./${src##*/}"
"""


def _script(body: str, *args: str) -> str:
    return f"sh -c {shlex.quote(body)} lkctl-cp " + " ".join(shlex.quote(a) for a in args)


def _why(status: int, errors: io.BytesIO) -> str:
    """A guest tar's failure in lkctl's words (its text is the guest's, so only a known cause is named)."""
    text = errors.getvalue().decode(errors="replace").lower()
    for needle, cause in (
        ("read-only", "its file system is read-only"),
        ("no space", "its file system is full"),
        ("permission denied", "permission denied"),
        ("not found", "the guest has no tar"),
    ):
        if needle in text:
            return cause
    return f"the guest's tar failed (status {status})"


def _os_reason(e: OSError) -> str:
    reasons = {
        errno.EACCES: "permission denied",
        errno.EPERM: "permission denied",
        errno.ENOSPC: "the disk is full",
        errno.EDQUOT: "the disk quota is used up",
        errno.EROFS: "the file system is read-only",
        errno.EXDEV: "it is on another file system than its directory",
    }
    return reasons.get(e.errno or 0, f"{errno.errorcode.get(e.errno or 0, 'an I/O error')}")


def _split_contents(path: str) -> tuple[str, bool]:
    """`DIR/.` means DIR's contents (docker cp); returns the path without it and whether it was there."""
    if path == "." or path.endswith("/."):
        return (path[:-2] or "/") if path != "." else ".", True
    return path, False


def copy_to(target: SshTarget, local: Path | str, remote: str, *, timeout: float | None = None) -> str:
    """Copy a file or directory tree to `remote` on the guest with `docker cp`'s rules; files arrive owned by root.

    `local` ending in `/.` copies a directory's contents. Returns a description of what was copied."""
    shown = os.fspath(local)
    source_text, contents = _split_contents(shown)
    source = Path(source_text)
    if not os.path.lexists(source):
        raise ConfigError(f"cannot copy {shown}: no such file or directory")
    if not remote:
        raise ConfigError(f"cannot copy {shown} to VM {target.label}: no destination path given")
    is_dir = source.is_dir() and not source.is_symlink()
    if contents and not is_dir:
        raise ConfigError(f"cannot copy {shown}: {source_text} is not a directory")
    kind = "contents" if contents else "dir" if is_dir else "file"
    name = source.resolve().name if source_text in (".", "..") or source_text.endswith("/..") else source.name
    dest = remote.rstrip("/") or "/"
    read_fd, write_fd = os.pipe()
    failures: list[BaseException] = []

    def as_root(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        return info

    def produce() -> None:
        try:
            with os.fdopen(write_fd, "wb") as pipe, tarfile.open(fileobj=pipe, mode="w|") as tar:
                tar.add(source, arcname=name if kind == "file" else ".", filter=as_root)
        except BrokenPipeError:
            pass  # the guest's side quit early; its status says why
        except OSError as e:
            failures.append(ConfigError(f"cannot read {e.filename or shown}: {_os_reason(e)}"))
        except BaseException as e:
            failures.append(e)

    producer = threading.Thread(target=produce, daemon=True, name="lkctl-ssh-tar")
    producer.start()
    errors = io.BytesIO()
    with os.fdopen(read_fd, "rb") as pipe:
        status = exec_command(
            target,
            command=_script(_RECEIVE, dest, name, kind, "1" if remote.endswith("/") and dest != "/" else "0"),
            stdin=pipe,
            stdout=errors,
            stderr=errors,
            timeout=timeout,
        )
        while pipe.read(_CHUNK):  # let the producer finish if the guest stopped reading
            pass
    producer.join()
    where = f"VM {target.label}:{remote}"
    messages = {
        _DEST_NOT_DIR: f"cannot copy the file {shown} to {where}: that directory does not exist",
        _IS_DIR: f"cannot copy the file {shown} to {where}: a directory of that name is in the way",
        _NO_PARENT: f"cannot copy {shown} to {where}: its parent directory does not exist; create it first",
        _DEST_IS_FILE: f"cannot copy the directory {shown} to {where}: it exists and is not a directory",
    }
    if status in messages:
        raise ConfigError(messages[status])
    if failures:
        raise failures[0]
    if status != 0:
        raise SshError(f"copying {shown} to {where} failed: {_why(status, errors)}")
    return f"{shown} -> {target.label}:{remote}"


def copy_from(target: SshTarget, remote: str, local: Path | str, *, timeout: float | None = None) -> str:
    """Copy a file or directory tree from the guest to `local` with `docker cp`'s rules (`remote` ending in `/.`
    copies a directory's contents).

    The guest's tar stream is checked before anything is written (nothing may land outside the destination) and
    unpacked beside it first: a refused or failed copy leaves nothing behind. Returns where the copy landed.
    """
    if not remote:
        raise ConfigError(f"cannot copy from VM {target.label}: no source path given")
    src, contents = _split_contents(remote)
    src = src.rstrip("/") or "/"
    name = None if contents else posixpath.basename(src)
    if name in ("", "..", "."):
        raise ConfigError(f"cannot copy {remote!r} from VM {target.label}: name a file or directory (or DIR/.)")
    origin = f"VM {target.label}:{remote}"
    plan = plan_copy(local, name or "", contents=contents)
    read_fd, write_fd = os.pipe()
    landed: list[Path] = []
    failures: list[BaseException] = []

    def consume() -> None:
        with os.fdopen(read_fd, "rb") as pipe:
            try:
                landed.append(receive_tar(pipe, plan, name=name, origin=origin))
            except OSError as e:
                failures.append(ConfigError(f"cannot write the copy of {origin} to {plan.shown}: {_os_reason(e)}"))
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
            command=_script(_SEND, src, "1" if contents else "0"),
            stdout=sink,
            stderr=errors,
            timeout=timeout,
        )
    consumer.join()
    if status == _NO_SOURCE:
        raise ConfigError(f"cannot copy {origin}: no such file or directory in the guest")
    if status == _NOT_A_DIR:
        raise ConfigError(f"cannot copy {origin}: {src} is not a directory in the guest")
    refused = next((e for e in failures if isinstance(e, StreamRefused | ConfigError)), None)
    if refused is not None:
        raise refused
    if status != 0:
        raise SshError(f"copying {origin} to {plan.shown} failed: {_why(status, errors)}")
    if failures:
        e = failures[0]
        if isinstance(e, LkError):
            raise e
        raise SshError(f"copying {origin} to {plan.shown} failed: {e}") from e
    return f"{target.label}:{remote} -> {landed[0]}"

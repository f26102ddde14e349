"""File-system primitives with the guarantees lkctl promises: atomic writes, locks, private dirs."""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

__all__ = [
    "atomic_output",
    "atomic_write",
    "connect_unix",
    "file_identity",
    "file_lock",
    "private_dir",
    "try_lock",
    "unix_address",
    "unmakeable_dir",
]


def file_identity(path: str | os.PathLike[str], *, follow: bool = False) -> list[int | str]:
    """[path, mode, dev, inode, size, mtime_ns, ctime_ns] of `path` (a symlink itself unless `follow`), or [path,
    "missing"]: whatever writes, replaces, renames or chmods a file changes it (ctime cannot be set back)."""
    try:
        st = os.stat(path) if follow else os.lstat(path)
    except FileNotFoundError:
        return [os.fspath(path), "missing"]
    return [os.fspath(path), st.st_mode, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def private_dir(path: Path) -> Path:
    """Create `path` (and parents) and make sure the leaf is 0700. An existing world-writable dir (/tmp, /dev/shm:
    LKCTL_STATE_DIR or LKCTL_CACHE_DIR pointed at one) is refused, never made 0700 under everyone else using it."""
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as e:  # a file on the way (LKCTL_HOME=/etc/passwd), a read-only or pseudo file system
        from lkctl.errors import StateError

        why = unmakeable_dir(path) or e.strerror or str(e)
        raise StateError(f"cannot make lkctl's directory {path}: {why} (LKCTL_HOME chooses where they go)") from None
    mode = path.stat().st_mode
    if mode & 0o002:
        from lkctl.errors import ConfigError

        raise ConfigError(
            f"{path} is a shared directory (mode {mode & 0o7777:o}); lkctl keeps its files in a private one: point "
            "LKCTL_HOME (or LKCTL_STATE_DIR, LKCTL_CACHE_DIR) at a directory of its own"
        )
    if mode & 0o077:
        path.chmod(0o700)
    return path


def unmakeable_dir(path: Path) -> str:
    """Why directory `path` cannot be used or made here ("" when it can): a file on its way, or the nearest
    existing directory above it not writable. Anything else still shows when it is made."""
    d = path.absolute()
    while not os.path.lexists(d):
        d = d.parent
    if not d.is_dir():
        return f"{d} is not a directory" + (" (a broken symbolic link)" if d.is_symlink() and not d.exists() else "")
    if d != path.absolute() and not os.access(d, os.W_OK | os.X_OK):
        return f"no permission to make directories in {d}"
    return ""


@contextlib.contextmanager
def try_lock(path: Path, *, missing_is_free: bool = False) -> Iterator[bool]:
    """Whether the exclusive flock on `path` was free, without waiting; held for the block if it was. A lock
    file that does not exist yields `missing_is_free`; one that cannot be opened otherwise (a symlink, no
    permission) counts as held."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        yield missing_is_free
        return
    except OSError:
        yield False
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


@contextlib.contextmanager
def file_lock(path: Path, *, shared: bool = False) -> Iterator[None]:
    """Hold an flock on `path` (created 0600 if missing) for the duration of the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


@contextlib.contextmanager
def atomic_output(path: Path, mode: int = 0o644, *, binary: bool = True) -> Iterator[IO[bytes]]:
    """Write to a temp file beside `path`; it replaces `path` only if the block completes.

    A crash or an exception leaves the old file (or nothing) at `path`, never a half-written one.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write(path: Path, data: bytes | str, mode: int = 0o644) -> None:
    """Replace `path` with `data` atomically (temp file + fsync + rename)."""
    with atomic_output(path, mode) as f:
        f.write(data.encode() if isinstance(data, str) else data)


@contextlib.contextmanager
def unix_address(path: Path) -> Iterator[str]:
    """`path` as an AF_UNIX address for bind/connect. Such addresses hold ~107 bytes, and a state dir can be
    deeper than that (a long $HOME, LKCTL_HOME in a test): then the socket is reached through a descriptor of its
    directory, `/proc/self/fd/N/NAME`, which Linux resolves like the real path."""
    if len(os.fsencode(path)) < 100 or not os.path.isdir("/proc/self/fd"):
        yield os.fspath(path)
        return
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


def connect_unix(path: Path, timeout: float | None = None) -> socket.socket:
    """A stream socket connected to the unix socket at `path` (however deep); OSError, with nothing left open,
    when nobody listens there."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        with unix_address(path) as address:
            sock.connect(address)
    except OSError:
        sock.close()
        raise
    return sock

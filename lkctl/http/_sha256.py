"""SHA-256 whose state can be saved and taken up again (a midstate), and that hashes a file region in place.

Python's hashlib cannot export a hash's state, so a resumed download used to hash its kept bytes again. Here the
hash runs in the libcrypto that Python's own `_hashlib` is linked against (OpenSSL's `SHA256_Update`, the same
SHA-NI code hashlib runs), through ctypes: its `SHA256_CTX` is a plain struct (`sha.h`: eight 32-bit chaining
words, the bit length, a partial block) whose chaining words and length at a 64-byte boundary are the standard
SHA-256 midstate. A self-test at load checks the struct layout against hashlib; when libcrypto cannot be found or
the test fails (another platform, another build), hashlib is used and `midstate()` says None: resumes then
re-hash, as before.

File regions are read with pread, or, for a file the caller holds so nothing else can shrink it (a download's own
`.part` under its lock: `update_file(..., mapped=True)`), hashed straight from the page cache through a read-only
shared mapping (no copy into a Python buffer: a third less CPU for a download, bench/fetch.py). A mapping is not
safe on a file another program may truncate meanwhile (an image being copied over while it is verified or
pushed): touching a mapped page past the new end raises SIGBUS, which kills the process; pread just reads short,
which is an OSError.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import mmap
import os
import sys
from dataclasses import dataclass
from typing import Any

__all__ = ["BLOCK", "Midstate", "Sha256"]

BLOCK = 64  # bytes per SHA-256 block: a midstate exists only at multiples of it
_IV = (0x6A09E667, 0xBB67AE85, 0x3C6EF372, 0xA54FF53A, 0x510E527F, 0x9B05688C, 0x1F83D9AB, 0x5BE0CD19)
_WINDOW = 8 << 20  # bytes hashed (or read) per step
_MAP_SPAN = 64 << 20  # bytes mapped at once


@dataclass(frozen=True)
class Midstate:
    """SHA-256 after `length` bytes (a multiple of 64): the eight chaining words."""

    words: tuple[int, ...]
    length: int

    def to_hex(self) -> str:
        return "".join(f"{w:08x}" for w in self.words)

    @classmethod
    def from_hex(cls, text: str, length: int) -> Midstate:
        """Raises ValueError when `text` is not 64 hex digits or `length` not a non-negative multiple of 64."""
        if len(text) != 64 or length < 0 or length % BLOCK:
            raise ValueError("not a SHA-256 midstate")
        return cls(tuple(int(text[i : i + 8], 16) for i in range(0, 64, 8)), length)


class _Ctx(ctypes.Structure):
    # OpenSSL's SHA256_CTX (include/openssl/sha.h, SHA_LONG = unsigned int), stable since 0.9.8
    _fields_ = (
        ("h", ctypes.c_uint32 * 8),
        ("Nl", ctypes.c_uint32),
        ("Nh", ctypes.c_uint32),
        ("data", ctypes.c_uint32 * 16),
        ("num", ctypes.c_uint32),
        ("md_len", ctypes.c_uint32),
        ("_spare", ctypes.c_uint8 * 64),  # room in case a build's struct is larger than the header says
    )


class _Libs:
    def __init__(self, crypto: ctypes.CDLL, libc: ctypes.CDLL | None) -> None:
        self.init, self.update, self.final = crypto.SHA256_Init, crypto.SHA256_Update, crypto.SHA256_Final
        self.init.argtypes = [ctypes.c_void_p]
        self.update.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
        self.final.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        self.mmap = self.munmap = None
        if libc is not None and hasattr(libc, "mmap"):
            self.mmap, self.munmap = libc.mmap, libc.munmap
            self.mmap.restype = ctypes.c_void_p
            c_int = ctypes.c_int
            self.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, c_int, c_int, c_int, ctypes.c_int64]
            self.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]


_LIBS: _Libs | bool | None = False  # False: not looked for yet


def _libcrypto_path() -> str | None:
    """The libcrypto `_hashlib` runs on (already mapped into this process), so hashes agree with hashlib's."""
    try:
        import _hashlib  # noqa: F401 - loads libcrypto
    except ImportError:
        return None
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="surrogateescape") as f:
            for line in f:
                path = line.rstrip("\n").partition("/")[2]
                if path and "libcrypto" in os.path.basename(path):
                    return "/" + path
    except OSError:
        pass
    return None


def _libs() -> _Libs | None:
    global _LIBS
    if _LIBS is False:
        _LIBS = None
        path = _libcrypto_path() if sys.platform == "linux" else None
        if path is not None:
            try:
                libs = _Libs(ctypes.CDLL(path), ctypes.CDLL(None, use_errno=True))
            except (OSError, AttributeError):
                libs = None
            if libs is not None and _self_test(libs):
                _LIBS = libs
    return _LIBS if isinstance(_LIBS, _Libs) else None


def _self_test(libs: _Libs) -> bool:
    """The struct layout is what `_Ctx` says: a state exported mid-stream and taken up again hashes like hashlib."""
    data = bytes(range(256)) * 3
    ctx = _Ctx()
    if libs.init(ctypes.byref(ctx)) != 1 or tuple(ctx.h) != _IV or ctx.md_len != 32:
        return False
    libs.update(ctypes.byref(ctx), data[:131], 131)
    if ctx.Nl != 131 * 8 or ctx.Nh != 0 or ctx.num != 131 - 128:
        return False
    again = _Ctx()
    _restore(libs, again, Midstate(tuple(ctx.h), 128))
    libs.update(ctypes.byref(again), data[128:], len(data) - 128)
    out = ctypes.create_string_buffer(32)
    libs.final(out, ctypes.byref(again))
    return out.raw == hashlib.sha256(data).digest()


def _restore(libs: _Libs, ctx: _Ctx, state: Midstate) -> None:
    libs.init(ctypes.byref(ctx))
    bits = state.length * 8
    ctx.h[:] = state.words
    ctx.Nl, ctx.Nh, ctx.num = bits & 0xFFFFFFFF, bits >> 32, 0


class Sha256:
    """A SHA-256 hash with `midstate()` (None when only hashlib is available) and `update_file`."""

    def __init__(self, state: Midstate | None = None) -> None:
        self._libs = _libs()
        self._ctx: _Ctx | None = None
        self._hashlib: Any = None
        self._map: tuple[tuple[int, int], int, int, int] | None = None  # (dev, inode), offset, size, address
        self.length = 0  # bytes hashed
        if self._libs is not None:
            self._ctx = _Ctx()
            if state is None:
                self._libs.init(ctypes.byref(self._ctx))
            else:
                _restore(self._libs, self._ctx, state)
                self.length = state.length
        elif state is not None:
            raise ValueError("this Python's libcrypto cannot take up a SHA-256 midstate")
        else:
            self._hashlib = hashlib.sha256()

    @staticmethod
    def can_resume() -> bool:
        """Whether a saved midstate can be taken up here."""
        return _libs() is not None

    def update(self, data: bytes | bytearray | memoryview) -> None:
        n = memoryview(data).nbytes
        if n == 0:
            return
        if self._ctx is not None and self._libs is not None:
            buf: Any = data
            if not isinstance(data, bytes):
                try:
                    buf = (ctypes.c_char * n).from_buffer(data)
                except TypeError:  # read-only or not contiguous
                    buf = bytes(data)
            self._libs.update(ctypes.byref(self._ctx), buf, n)
        else:
            self._hashlib.update(data)
        self.length += n

    def update_file(self, fd: int, offset: int, n: int, *, mapped: bool = False) -> None:
        """Hash `n` bytes of `fd` from `offset` (they must exist: OSError if the file is shorter). `mapped` hashes
        them through a shared mapping instead of reading them: only for a file nothing else can truncate meanwhile
        (see the module docstring)."""
        end = offset + n
        buf: bytearray | None = None
        while offset < end:
            step = min(_WINDOW, end - offset)
            if not (mapped and self._update_mapped(fd, offset, step)):
                if buf is None:
                    buf = bytearray(min(_WINDOW, n))
                self._update_read(fd, offset, memoryview(buf)[:step])
            offset += step

    def _update_mapped(self, fd: int, offset: int, n: int) -> bool:
        libs = self._libs
        if self._ctx is None or libs is None or libs.mmap is None or libs.munmap is None:
            return False
        st = os.fstat(fd)
        if st.st_size < offset + n:  # touching a mapped page past the end would fault (SIGBUS), not fail
            raise OSError(f"the file ended before {offset + n} bytes")
        m = self._map
        if m is None or m[0] != (st.st_dev, st.st_ino) or not m[1] <= offset <= offset + n <= m[1] + m[2]:
            # one mapping per _MAP_SPAN, reused while a growing file is followed: each munmap of a shared mapping
            # costs a TLB shootdown on every CPU (~0.5 ms in this VM), per 1-8 MiB step that was ~0.1 s per GiB
            self.close()
            start = offset - offset % mmap.ALLOCATIONGRANULARITY
            size = max(_MAP_SPAN, offset + n - start)  # may reach past the end: only written pages are touched
            addr = libs.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, start)
            if addr is None or addr == ctypes.c_void_p(-1).value:
                return False  # a file system without mmap: read it instead
            m = self._map = ((st.st_dev, st.st_ino), start, size, addr)
        libs.update(ctypes.byref(self._ctx), m[3] + (offset - m[1]), n)
        self.length += n
        return True

    def close(self) -> None:
        """Unmap the file region kept mapped between `update_file` calls (the hash itself stays usable)."""
        if self._map is not None and self._libs is not None and self._libs.munmap is not None:
            self._libs.munmap(self._map[3], self._map[2])
        self._map = None

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    def _update_read(self, fd: int, offset: int, view: memoryview) -> None:
        n = len(view)
        got = 0
        while got < n:
            if hasattr(os, "preadv"):  # into the one buffer
                k = os.preadv(fd, [view[got:]], offset + got)
            else:  # macOS
                chunk = os.pread(fd, n - got, offset + got)
                k = len(chunk)
                view[got : got + k] = chunk
            if k <= 0:
                raise OSError(f"the file ended at {offset + got} bytes, {offset + n} expected")
            got += k
        self.update(view)

    def midstate(self) -> Midstate | None:
        """The state after the last whole block hashed (the bytes after it must be hashed again from the file)."""
        if self._ctx is None:
            return None
        hashed = ((self._ctx.Nh << 32) | self._ctx.Nl) // 8
        return Midstate(tuple(self._ctx.h), hashed - self._ctx.num)

    def digest(self) -> bytes:
        if self._ctx is None or self._libs is None:
            return bytes(self._hashlib.digest())
        copy = _Ctx()
        ctypes.memmove(ctypes.byref(copy), ctypes.byref(self._ctx), ctypes.sizeof(_Ctx))  # Final ends a context
        out = ctypes.create_string_buffer(32)
        self._libs.final(out, ctypes.byref(copy))
        return out.raw

    def hexdigest(self) -> str:
        return self.digest().hex()

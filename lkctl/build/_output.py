"""Output formats: each is a sink over the entry stream that writes its files atomically.

Only `kernel+initrd` exists so far; `tar`, ISO and disk formats will be further sinks registered in `SINKS`.
Every file a sink writes goes through `atomic_output` entered on the build's ExitStack, so nothing reaches its
final path unless the whole build succeeds.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

from lkctl.build._entry import Entry, Reader
from lkctl.build.initrd import InitrdWriter
from lkctl.errors import BuildError
from lkctl.fsutil import atomic_output

__all__ = ["SINKS", "KernelInitrdSink", "OutputPaths", "Sink"]


@dataclass(frozen=True)
class OutputPaths:
    kernel: Path
    initrd: Path
    cmdline: Path

    @classmethod
    def for_name(cls, out_dir: Path, name: str) -> OutputPaths:
        """LinuxKit's names: `<name>-kernel`, `<name>-initrd.img`, `<name>-cmdline`."""
        return cls(out_dir / f"{name}-kernel", out_dir / f"{name}-initrd.img", out_dir / f"{name}-cmdline")

    def all(self) -> tuple[Path, ...]:
        return (self.kernel, self.initrd, self.cmdline)


class Sink(Protocol):
    def add(self, entry: Entry) -> None: ...

    def finish(self) -> None: ...


class KernelInitrdSink:
    """`kernel+initrd`: boot/kernel and boot/cmdline become their own files, boot/ucode.cpio leads the initrd
    uncompressed (the kernel's early microcode loader reads it there), everything else is the gzip cpio."""

    def __init__(self, stack: contextlib.ExitStack, paths: OutputPaths, *, level: int, threads: int | None) -> None:
        self._stack, self._paths = stack, paths
        self._level, self._threads = level, threads
        self._initrd_file: IO[bytes] = stack.enter_context(atomic_output(paths.initrd))
        self._writer: InitrdWriter | None = None
        self.cmdline: str | None = None
        self._kernel = False

    def add(self, e: Entry) -> None:
        if e.path == "boot/kernel":
            f = self._stack.enter_context(atomic_output(self._paths.kernel))
            if e.data is not None:
                copied = _copy(e.data, f, e.size)
                if copied != e.size:
                    raise BuildError(f"kernel is shorter than its recorded size ({copied} < {e.size})")
            self._kernel = True
        elif e.path == "boot/cmdline":
            self.cmdline = e.data.read(e.size).decode() if e.data is not None else ""
        elif e.path == "boot/ucode.cpio":
            if self._writer is not None:
                raise BuildError("boot/ucode.cpio came after the initrd had started")
            if e.data is not None:
                _copy(e.data, self._initrd_file, e.size)
        elif e.path == "boot" or e.path.startswith("boot/"):
            pass  # e.g. boot/dtb from kernel.tar: LinuxKit leaves all of boot/ out of the initrd
        else:
            if self._writer is None:
                self._writer = self._stack.enter_context(
                    InitrdWriter(self._initrd_file, level=self._level, threads=self._threads)
                )
            self._writer.add(e)

    def finish(self) -> None:
        if not self._kernel:
            raise BuildError("the build produced no kernel (the YAML needs kernel.image)")
        if self._writer is None:  # an image of nothing but a kernel still gets a valid (empty) initrd
            self._writer = self._stack.enter_context(
                InitrdWriter(self._initrd_file, level=self._level, threads=self._threads)
            )
        self._writer.close()  # every byte is written before the first output is renamed into place
        f = self._stack.enter_context(atomic_output(self._paths.cmdline))
        f.write((self.cmdline or "").encode())


def _copy(src: Reader, dst: IO[bytes], size: int) -> int:
    done = 0
    while done < size:
        chunk = src.read(min(1 << 20, size - done))
        if not chunk:
            break
        dst.write(chunk)
        done += len(chunk)
    return done


SINKS: dict[str, Callable[..., Sink]] = {"kernel+initrd": KernelInitrdSink}

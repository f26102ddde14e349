"""Errors lkctl raises, in one hierarchy. Each carries the exit code the CLI uses; its message is one line.

Modules that raised these first re-export them (`lkctl.sources.SourceNotFound`, `lkctl.oci.registry.RegistryError`,
`lkctl.http.DownloadError`, `lkctl.api.ExecFailed`...)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from lkctl.runtime.untrusted import printable

if TYPE_CHECKING:
    from lkctl.api import ExecResult

__all__ = [
    "BuildError",
    "ChecksumMismatch",
    "ConfigError",
    "DownloadError",
    "ExecFailed",
    "HostUnreachable",
    "HttpError",
    "HypervisorFailed",
    "ImageError",
    "LkError",
    "ProgramMissing",
    "RegistryAuthError",
    "RegistryError",
    "RegistryNotFound",
    "SourceNotFound",
    "SpecError",
    "SshError",
    "StateError",
    "StreamRefused",
    "VmError",
    "VmNotFound",
]


class LkError(Exception):
    """Base of every error lkctl reports to a user: a message that says what is wrong and how to fix it."""

    exit_code: int = 1

    def __init__(self, message: str, *, exit_code: int | None = None) -> None:
        # messages quote what servers, guests and files say (a registry's error text, a version, a file name):
        # their control characters are shown escaped, never sent to the user's terminal as they are
        super().__init__(printable(message))
        if exit_code is not None:
            self.exit_code = exit_code

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


class ConfigError(LkError):
    """Bad settings or command-line input."""

    exit_code = 2


class SpecError(LkError):
    """A LinuxKit YAML file that does not validate."""

    exit_code = 2


class ImageError(LkError):
    """An image that cannot be found, read or made."""


class BuildError(LkError):
    """Assembling an image failed."""


class StateError(LkError):
    """lkctl's on-disk state is unreadable or of an unknown version."""


class VmError(LkError):
    """Starting, stopping or talking to a VM failed."""


class VmNotFound(VmError):
    """No VM (or more than one) matches what the user typed."""


class SshError(VmError):
    """The SSH connection to a guest failed (refused, timed out, host key mismatch)."""


class StreamRefused(VmError):
    """The guest's tar stream would have written outside the destination (or sent something vm.cp never copies)."""


class ProgramMissing(LkError):
    """A required external program is not installed."""

    exit_code = 127


class SourceNotFound(ImageError):
    """This source does not have the image (or that version, or that platform): `auto` moves on."""


class DownloadError(ImageError):
    """A download failed for good (every mirror, every retry)."""

    def __init__(self, message: str, *, failures: Sequence[DownloadError] = ()) -> None:
        super().__init__(message)
        self.failures = list(failures)  # one per mirror when every mirror failed


class ChecksumMismatch(DownloadError):
    """The bytes did not hash to the published sha256; nothing was kept."""


class HttpError(DownloadError):
    """A non-retryable HTTP error status (or a retryable one that outlived the retries)."""

    def __init__(self, message: str, *, status: int, url: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.url = url
        self.headers: dict[str, str] = {k.lower(): v for k, v in (headers or {}).items()}


class RegistryError(ImageError):
    """The registry refused or failed a request."""


class RegistryNotFound(RegistryError):
    """No such repository, tag, digest or platform."""


class RegistryAuthError(RegistryError):
    """Credentials missing or rejected (401/403)."""


class HostUnreachable(VmError):
    """libvirtd on a host did not answer (down, refused, SSH failed)."""


class HypervisorFailed(VmError):
    """The hypervisor exited while starting; `.output` holds what it printed (a start may be retried on it)."""

    def __init__(self, message: str, output: str = "") -> None:
        super().__init__(message)
        self.output = output


class ExecFailed(VmError):
    """`exec(..., check=True)` of a command that exited non-zero; `.result` holds its output."""

    def __init__(self, argv: Sequence[str], result: ExecResult) -> None:
        tail = printable(result.stderr.decode(errors="replace")).strip().splitlines()
        super().__init__(
            f"{' '.join(argv)!r} exited {result.exit_code}" + (f": {tail[-1]}" if tail else ""),
            exit_code=result.exit_code or 1,
        )
        self.result = result

"""Errors lkctl raises. Each carries the exit code the CLI uses; the message is one line for the user."""

from __future__ import annotations

__all__ = [
    "BuildError",
    "ConfigError",
    "ImageError",
    "LkError",
    "SpecError",
    "SshError",
    "StateError",
    "VmError",
    "VmNotFound",
]


class LkError(Exception):
    """Base of every error lkctl reports to a user: a message that says what is wrong and how to fix it."""

    exit_code: int = 1

    def __init__(self, message: str, *, exit_code: int | None = None) -> None:
        super().__init__(message)
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

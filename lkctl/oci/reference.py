"""Image references parsed the way Docker and LinuxKit expand them (pure functions)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from lkctl.errors import ImageError

__all__ = ["DEFAULT_DOMAIN", "Reference", "parse_reference"]

DEFAULT_DOMAIN = "docker.io"

_DIGEST = re.compile(r"^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]{32,}$")
_TAG = re.compile(r"^[\w][\w.-]{0,127}$")
_PATH_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")


@dataclass(frozen=True)
class Reference:
    """A fully expanded reference: `domain/path[:tag][@digest]`."""

    domain: str
    path: str
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        """`domain/path`, the repository without tag or digest."""
        return f"{self.domain}/{self.path}"

    def __str__(self) -> str:
        s = self.name
        if self.tag:
            s += f":{self.tag}"
        if self.digest:
            s += f"@{self.digest}"
        return s

    def with_tag(self, tag: str) -> Reference:
        return Reference(self.domain, self.path, tag, self.digest)

    @property
    def is_local(self) -> bool:
        """Images lkctl makes itself from the machine's packages live under `lkctl.local/`."""
        return self.domain == "lkctl.local"


def parse_reference(text: str) -> Reference:
    """Parse `text` like Docker: `alpine` → `docker.io/library/alpine`, `a/b` → `docker.io/a/b`,
    `host:5000/a/b:tag@sha256:...` keeps its host. Raises ImageError on a malformed reference."""
    original = text
    if not text or text != text.strip():
        raise ImageError(f"invalid image reference {original!r}: empty or surrounded by spaces")
    digest = None
    if "@" in text:
        text, digest = text.split("@", 1)
        if not _DIGEST.match(digest):
            raise ImageError(f"invalid image reference {original!r}: bad digest {digest!r}")
    tag = None
    last = text.rsplit("/", 1)[-1]
    if ":" in last:
        text, tag = text.rsplit(":", 1)
        if not _TAG.match(tag):
            raise ImageError(f"invalid image reference {original!r}: bad tag {tag!r}")
    parts = text.split("/")
    if len(parts) > 1 and ("." in parts[0] or ":" in parts[0] or parts[0] == "localhost"):
        domain, path_parts = parts[0], parts[1:]
    else:
        domain, path_parts = DEFAULT_DOMAIN, parts
    if domain == "index.docker.io":
        domain = DEFAULT_DOMAIN
    if domain == DEFAULT_DOMAIN and len(path_parts) == 1:
        path_parts = ["library", *path_parts]
    for comp in path_parts:
        if not _PATH_COMPONENT.match(comp):
            raise ImageError(
                f"invalid image reference {original!r}: {comp!r} is not a valid repository name component "
                "(lowercase letters, digits and . _ - separators)"
            )
    return Reference(domain, "/".join(path_parts), tag, digest)

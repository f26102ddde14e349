"""Text the guest controls, made safe to quote in lkctl's own messages (the guest is untrusted)."""

from __future__ import annotations

__all__ = ["printable"]

# C0 controls but tab and newline, DEL, C1 controls (U+009B is CSI, U+009D OSC on terminals that honour 8-bit
# controls) and the bidirectional overrides and isolates (they reorder what the rest of a line shows)
_SHOWN = {
    c: f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"
    for c in (*range(0x09), *range(0x0B, 0x20), *range(0x7F, 0xA0), *range(0x202A, 0x202F), *range(0x2066, 0x206A))
}


def printable(text: str) -> str:
    """`text` made safe to print inside lkctl's own messages: control characters but newline and tab are shown as
    `\\x1b`-style escapes. The guest is untrusted, and what it printed on its console (quoted in a failed start's
    diagnosis) must not drive the user's terminal: ESC sequences set colours, window titles, the clipboard (OSC
    52) or rewrite earlier lines. `vm.logs` is the console itself and stays raw, as `docker logs` is."""
    return text.translate(_SHOWN)

"""Text from others (URLs, registries, GGUF metadata, server logs) made safe to show in a terminal."""
from __future__ import annotations

import re

# C0 (but tab and newline), DEL and C1 controls: ESC/CSI/OSC start terminal escapes,
# BEL ends an OSC title. Bidi overrides are kept: they cannot drive the terminal.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_CONTROL_LINE = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def printable(text: str, *, multiline: bool = False) -> str:
    """text with control characters shown as '?' (newlines and tabs kept when multiline)."""
    return (_CONTROL if multiline else _CONTROL_LINE).sub("?", str(text))

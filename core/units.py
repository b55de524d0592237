"""Byte counts for people: the one formatter, in the three styles the front ends show."""
from __future__ import annotations

from typing import Literal

ByteStyle = Literal["decimal", "binary", "compact"]


def human_bytes(n: float | None, style: ByteStyle = "decimal") -> str:
    """decimal: like `ollama list` (98 MB, 4.7 GB); binary: 1.5 MiB (ps, sessions);
    compact: 1.5M, narrow enough for an 80-column table (the workbench)."""
    if n is None:
        return "-"
    n = float(n)
    if style == "decimal":
        for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
            if abs(n) >= scale:
                v = n / scale
                return f"{v:.1f} {unit}" if v < 10 and unit != "KB" else f"{v:.0f} {unit}"
        return f"{int(n)} B"
    if style == "compact":
        for unit, scale in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
            if abs(n) >= scale:
                v = n / scale
                return f"{v:.1f}{unit}" if v < 100 else f"{v:.0f}{unit}"
        return f"{int(n)}B"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # not reached: GiB is the last unit

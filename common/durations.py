"""Durations as people write them (``90``, ``30s``, ``15m``, ``24h``, ``7d``) and back.

One syntax for every duration the project reads: the pipeline's settings
(``DEDUP_HORIZON``...) and the payment API's ``--key-retention``, so the two
values compared at the worker's start are written the same way.
"""

from __future__ import annotations

import re

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_DISPLAY_UNITS = (("d", 86400.0), ("h", 3600.0), ("m", 60.0), ("s", 1.0))


def parse_duration(text: str) -> float:
    """``"90"`` -> 90.0 s, ``"15m"`` -> 900.0, ``"7d"`` -> 604800.0."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError("expected a number of seconds or a duration like 30s, 15m, 24h, 7d")
    return float(match.group(1)) * _UNITS[match.group(2)]


def format_duration(seconds: float) -> str:
    """The largest unit that divides ``seconds`` evenly: 604800 -> ``"7d"``, 90 -> ``"90s"``."""
    for unit, size in _DISPLAY_UNITS:
        count = seconds / size
        if count >= 1 and count == int(count):
            return f"{int(count)}{unit}"
    return f"{seconds:g}s"

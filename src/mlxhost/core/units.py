"""Units as operators write them: memory sizes (``2900MiB``, ``3G``, ``75%``) and
durations (``4s``, ``1h30m``, ``-1`` = forever), parsed and formatted. The bottom
floor: settings, errors, the memory governor and the Ollama adapter all read it."""

from __future__ import annotations

import math
import re
from typing import Any

# Keep-alives this long or longer mean forever (and stay clear of datetime's range).
FOREVER_S = 1e9
GiB = 1 << 30
_UNITS = {
    "": 1, "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40,
    "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40,
}
_SIZE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*")
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ns|us|µs|ms|s|m|h|d)")
_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0,
            "d": 86400.0}


def parse_size(text: str) -> int | float:
    """A memory size: bytes (``3000000000``, ``2900MiB``, ``3GB``, ``3G`` = GiB) as an
    int, or a fraction of the device's memory (``0.75``, ``75%``) as a float."""
    text = text.strip()
    if text.endswith("%"):
        value = float(text[:-1])
        if not 0 < value <= 100:
            raise ValueError(f"expected a percentage in (0, 100], got {text!r}")
        return value / 100
    match = _SIZE.fullmatch(text)
    if match is None or match.group(2).lower() not in _UNITS:
        raise ValueError(
            f"expected bytes (2900MiB, 3GB, 3G, 3000000000) or a fraction (0.75, 75%), got {text!r}"
        )
    number, unit = match.group(1), match.group(2).lower()
    if not unit and "." in number:
        fraction = float(number)
        if not 0 < fraction <= 1:
            raise ValueError(f"a fraction must be in (0, 1], got {text!r}")
        return fraction
    size = int(float(number) * _UNITS[unit])
    if size <= 0:
        raise ValueError(f"expected a positive size, got {text!r}")
    return size


def format_bytes(nbytes: float) -> str:
    """``2.31 GiB``, ``512 MiB``, ``900 KiB``."""
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(nbytes) >= size:
            value = nbytes / size
            return f"{value:.2f} {unit}" if value < 10 else f"{value:.0f} {unit}"
    return f"{int(nbytes)} B"


def parse_duration(text: str) -> float:
    """Seconds from ``4s``, ``30m``, ``1h30m``, ``500ms`` or a plain number of
    seconds (Ollama's ``keep_alive`` forms); any negative value means forever
    (``math.inf``); ``0`` means at once."""
    text = text.strip()
    negative = text.startswith("-")
    body = text[1:] if negative else text
    bad = ValueError(
        f"expected a duration such as 4s, 30m, 1h, 1h30m, a number of seconds, 0 or -1, got {text!r}"
    )
    # "inf", "nan", "1e3" or "--1" parse as floats but are no durations.
    if not body or any(c.isalpha() for c in body) or body[0] in "+-":
        parts = _DURATION_PART.findall(body)
        if not parts or "".join(n + u for n, u in parts) != body:
            raise bad
        seconds = sum(float(n) * _SECONDS[u] for n, u in parts)
    else:
        try:
            seconds = float(body)
        except ValueError:
            raise bad from None
    if (negative and seconds > 0) or seconds >= FOREVER_S:
        return math.inf
    return seconds


def duration_seconds(value: Any) -> float:
    """A request's keep-alive (a number of seconds or a duration string) as seconds."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError("expected a duration such as \"5m\" or a number of seconds")
    if isinstance(value, str):
        return parse_duration(value)
    if isinstance(value, float) and math.isnan(value):
        raise ValueError("expected a number of seconds")
    return math.inf if value < 0 or value >= FOREVER_S else float(value)


def first_keep_alive(*values: float | None) -> float:
    """The first keep-alive given, in order of precedence (a request's, the model's,
    the server's); none given: forever (``math.inf``)."""
    for value in values:
        if value is not None:
            return value
    return math.inf


def format_duration(seconds: float) -> str:
    if math.isinf(seconds):
        return "never"
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:g}h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g}m"
    return f"{seconds:g}s"

"""How a config section checks its values: one way for a choice, one for a range; the error names the flag."""

from __future__ import annotations

import math
import re

PRECISIONS = ("auto", "bf16", "fp32")


class ConfigError(ValueError):
    """A config value is invalid; the message names the flag."""


def check_choice(flag: str, value, choices: tuple) -> None:
    if value not in choices:
        names = ", ".join(map(str, choices[:-1])) + f" or {choices[-1]}"
        raise ConfigError(f"{flag} must be {names}, got {value!r}")


_INTERVAL = re.compile(r"([\[(])\s*([^,\s]+)\s*,\s*([^\])\s]+)\s*([\])])")


def check_ranges(prefix: str, cfg, **intervals: str) -> None:
    """Each named field of ``cfg`` inside its interval, written as in mathematics: ``"[1, inf)"``, ``"(0, inf)"``,
    ``"[0, 1)"``. A field set to None is not set, so not checked. ``prefix`` names the flags (``--sft``)."""
    for name, interval in intervals.items():
        value = getattr(cfg, name)
        if value is None:
            continue
        opening, low, high, closing = _INTERVAL.fullmatch(interval).groups()
        low, high = float(low), float(high)
        above = value > low if opening == "(" else value >= low
        below = value < high if closing == ")" else value <= high
        if not (above and below):
            raise ConfigError(f"{prefix}.{name} must {_said(opening, low, high, closing)}, got {value}")


def _said(opening: str, low: float, high: float, closing: str) -> str:
    if math.isinf(high):
        if opening == "(":
            return "be positive" if low == 0 else f"be more than {low:g}"
        return "not be negative" if low == 0 else f"be at least {low:g}"
    return f"be in {opening}{low:g}, {high:g}{closing}"

"""One number grammar for logs, item-vector files and requests, checked in the type a number is stored in.

Integers: optional sign and ASCII digits only ("-12", "+7"), within int64.
Floats: optional sign, ASCII digits with an optional '.', an optional exponent ("1.5", ".5", "2e-3"),
finite once stored as float32 (3:1e39 is finite in Python's float64 but inf in a tf.Example).
Not accepted: Unicode digits ("٣"), underscores ("1_0"), "inf", "nan", hex, whitespace inside.
Texts longer than MAX_NUMBER_CHARS are refused before any conversion, so a 5,000-digit number
costs nothing.
"""
from __future__ import annotations

import math
import re
import struct

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
FLOAT32_MAX = 3.4028234663852886e38
MAX_NUMBER_CHARS = 64

_INT = re.compile(r"[+-]?[0-9]+", re.ASCII)
_FLOAT = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?", re.ASCII)


class NumberError(ValueError):
    """The text is not a number of the grammar, or does not fit the type it is stored in."""


def _show(text: str) -> str:
    return repr(text if len(text) <= 24 else text[:20] + "...")


def parse_int64(text: str) -> int:
    if len(text) > MAX_NUMBER_CHARS or not _INT.fullmatch(text):
        raise NumberError(f"{_show(text)} is not an integer (ASCII digits with an optional sign)")
    value = int(text)
    if not INT64_MIN <= value <= INT64_MAX:
        raise NumberError(f"{_show(text)} is outside the int64 range")
    return value


def float32_value(value: float) -> float:
    """`value`, once checked that float32 stores it as a finite number; NumberError otherwise."""
    try:
        (stored,) = struct.unpack("<f", struct.pack("<f", value))
    except (OverflowError, struct.error):
        raise NumberError(f"{value!r} is outside the float32 range (|x| <= {FLOAT32_MAX:.7g})") from None
    if not math.isfinite(stored):
        raise NumberError(f"{value!r} is not a finite number")
    return value


def parse_float32(text: str) -> float:
    if len(text) > MAX_NUMBER_CHARS or not _FLOAT.fullmatch(text):
        raise NumberError(f"{_show(text)} is not a number (ASCII digits, '.', an optional exponent)")
    return float32_value(nonzero_float(text))


def nonzero_float(text: str) -> float:
    """float(text), but a text with a nonzero digit before its exponent that reads as 0 (1e-400,
    below float64's smallest) is a NumberError, not a silent 0."""
    value = float(text)
    if value == 0.0 and re.search(r"[1-9]", re.split(r"[eE]", text)[0]):
        raise NumberError(f"{_show(text)} is too small to be stored: it would read as 0")
    return value


def check_number(value) -> float:
    """A number already decoded (JSON): bools refused, ints and floats must fit float32."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise NumberError(f"{value!r} is not a number")
    if isinstance(value, int) and abs(value) > 2**128:
        raise NumberError("an integer outside the float32 range")
    return float32_value(float(value))

"""The value kinds and range checks of params.json keys, and the `Key` row that combines them.

    from utils.base.schema import FLOAT, Key, bounds
    Key("weight", FLOAT, 0.04, "weight of the KL term", bounds(low=0))

utils/training/params.py holds the keys every run has; each method of methods/ adds its own rows. A kind
turns the JSON value into the typed value the scripts see, or raises `Problem` with the reason.
"""
import enum
import json
import math
import os
from typing import Any, Callable, NamedTuple, Optional

from utils.base.errors import did_you_mean


class Problem(Exception):
    """One problem with one key's value; its text already names the key."""


def show(value):
    # JSON spelling (true, null, 100.0) is what the user sees in the file; strings keep
    # quotes so an empty or blank string is visible. Huge values are cut to keep one line short.
    try:
        text = repr(value) if isinstance(value, str) else json.dumps(value)
    except (TypeError, ValueError):  # an override can be any Python object
        text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _is_int(value):
    # bool is a subclass of int in Python, but `true` is no epoch count
    return isinstance(value, int) and not isinstance(value, bool)


# ----------------------------------------------------------------------------- value kinds
# A kind turns the JSON value into the typed value the scripts see, or raises Problem
# with the reason (the caller adds the key and value).

class Kind(NamedTuple):
    name: str                        # shown by describe()
    parse: Callable[[Any], Any]


def _parse_int(value):
    if _is_int(value):
        return value
    if isinstance(value, float):
        raise Problem("must be an integer, not a float")
    raise Problem("must be an integer" + (", not a string" if isinstance(value, str) else ""))


def _parse_float(value):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Problem("must be a number" + (", not a string" if isinstance(value, str) else ""))
    if not math.isfinite(value):
        raise Problem("must be a finite number")
    return float(value)


def _parse_flag(value):
    # the original files write 0/1; true/false are accepted as the obvious spelling
    if isinstance(value, bool) or (_is_int(value) and value in (0, 1)):
        return bool(value)
    raise Problem("must be 0, 1, true or false")


def _parse_str(value):
    if isinstance(value, os.PathLike):   # overrides from code may pass a Path for a folder
        return os.fspath(value)
    if not isinstance(value, str):
        raise Problem("must be a string")
    return value


def _parse_model(value):
    if not isinstance(value, str):
        raise Problem("must be a model name (a string)")
    return value


def _parse_schedule(value):
    if not isinstance(value, list) or not all(_is_int(v) for v in value):
        raise Problem("must be a list of integers (epochs)")
    if any(v < 0 for v in value):
        raise Problem("must hold non-negative epochs")
    if any(a >= b for a, b in zip(value, value[1:])):
        raise Problem("must be strictly increasing")
    return list(value)


INT = Kind("int", _parse_int)
FLOAT = Kind("float", _parse_float)
FLAG = Kind("0/1", _parse_flag)
STR = Kind("str", _parse_str)
MODEL = Kind("model", _parse_model)      # also checked against the registry and the data set
SCHEDULE = Kind("epochs", _parse_schedule)


# ----------------------------------------------------------------------------- range checks
# A check returns the problem text for a typed value, or None when the value is fine.

def bounds(low=None, low_open=False, high=None, high_open=False):
    parts = []
    if low is not None:
        parts.append(f"{'>' if low_open else '>='} {low}")
    if high is not None:
        parts.append(f"{'<' if high_open else '<='} {high}")
    rule = "must be " + " and ".join(parts)

    def check(value):
        too_low = low is not None and (value <= low if low_open else value < low)
        too_high = high is not None and (value >= high if high_open else value > high)
        return rule if too_low or too_high else None
    return check


def one_of(choices, what):
    def check(value):
        if value in choices:
            return None
        # lower() so that 'CIFAR10', the folder spelling, still finds 'cifar10'
        return (f"is not a known {what}{did_you_mean(value.lower(), choices)}, "
                f"valid: {', '.join(choices)}")
    return check


REQUIRED = object()   # default of a key that must be in the file


class Word(str, enum.Enum):
    """An enum whose members are their str values: in f-strings, JSON and comparisons with the
    words results.json and the logs hold (roles, run states)."""
    __str__ = str.__str__
    __format__ = str.__format__


class Key(NamedTuple):
    name: str
    kind: Kind
    default: Any                     # REQUIRED; None: optional, absent unless needed
    why: str
    check: Optional[Callable[[Any], Optional[str]]] = None
    training: bool = False           # read only to train: an evaluation needs no value for it

    def default_text(self):
        if self.default is REQUIRED:
            return "required"
        return "if needed" if self.default is None else f"default {show(self.default)}"

"""How a config's values are checked: the problems found (one sentence each, with the key it
names), the checks most values need, what each type of a settings field accepts, and which
options of its group read a settings field where the group's options own no registry (``only``).

Every section of the config, and every dataset, sensitivity variant, optimizer and prune
schedule for its own settings, checks with these, so that all problems of a config are
collected and reported together (``run/config.py``: ``ConfigError``).
"""

from __future__ import annotations

import functools
import math
import operator
import os
import types
import typing
from collections.abc import Callable
from dataclasses import field, fields
from typing import Any


class Problems(list):
    """The problems found so far, one sentence each, and the key each one is about (None where
    it names no single key): a check that needs a valid value of another key asks ``has``, and
    a range check of a value whose type is wrong is dropped by ``without``, rather than either
    reading the sentences."""

    def __init__(self) -> None:
        super().__init__()
        self.owners: list[str | None] = []

    def append(self, message: str) -> None:
        self.add(None, message)

    def add(self, key: str | None, message: str) -> None:
        """A problem with ``key`` (``section.name``), said by ``message``."""
        super().append(message)
        self.owners.append(key)

    def __iadd__(self, messages):
        for message in messages:
            self.append(message)
        return self

    def has(self, *keys: str) -> bool:
        """Whether a problem was found with one of ``keys`` already."""
        return any(key in self.owners for key in keys)

    def without(self, keys) -> list[str]:
        """The sentences about no key of ``keys``."""
        return [message for message, key in zip(self, self.owners) if key not in keys]

    def choice(self, key: str, value: Any, known) -> None:
        if value not in known:
            self.add(key, f"{key}={value!r} is not one of: {', '.join(map(str, known))}.")

    def fraction(self, key: str, value: Any) -> None:
        """A position given as a float is a fraction of the run: it must lie in [0, 1]."""
        # (nan and the infinities are no numbers to place: the type check names them)
        if isinstance(value, float) and math.isfinite(value) and not 0.0 <= value <= 1.0:
            self.add(key, f"{key}={value!r}: a float is a fraction of the run and must lie between 0 and 1 "
                          f"(0.8: after 80 % of it); give an epoch as an integer ({round(value)}).")

    def at_least(self, key: str, value: Any, low: float, strict: bool = False) -> None:
        # value != value: nan, which every comparison would let through
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value != value or \
                (value <= low if strict else value < low):
            self.add(key, f"{key}={value!r} must be a number {'>' if strict else '>='} {low}.")


def only(*options: str, **default: Any) -> Any:
    """A settings field that only these options of its group read (``default=`` or
    ``default_factory=``): the config nodes of the group's other options leave it out, so that
    Hydra refuses it there (``run/config_groups.py``)."""
    return field(metadata={"options": options}, **default)


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """A finite number: nan would slip through every comparison, and no key means anything by an
    infinity."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# What each type of a settings field accepts, and how a problem is worded (a field of another
# type, or of none, is not checked here: its section's checks say what it takes).
TYPES: dict[Any, tuple[Callable[[Any], bool], str]] = {
    int: (is_int, "an integer"),
    float: (is_number, "a finite number"),
    bool: (lambda v: isinstance(v, bool), "true or false"),
    str: (lambda v: isinstance(v, str), "text"),
    list[int]: (lambda v: isinstance(v, (list, tuple)) and all(is_int(x) for x in v),
                "a list of integers, e.g. [30,60]"),
    # a position in the run (positions.py): an epoch, or a fraction of the run
    int | float: (is_number, "an epoch (an integer) or a fraction of the run (a number between 0 and 1)"),
    list[int | float]: (lambda v: isinstance(v, (list, tuple)) and all(is_number(x) for x in v),
                        "a list of epochs or of fractions of the run, e.g. [30,60] or [0.8]"),
    tuple[float, float]: (lambda v: isinstance(v, (list, tuple)) and len(v) == 2 and all(is_number(x) for x in v),
                          "two numbers, e.g. [0.9,0.999]"),
    dict[str, Any]: (lambda v: isinstance(v, dict) and all(isinstance(k, str) for k in v),
                     "keyword arguments, e.g. +model.kwargs.image_size=32"),
}


@functools.cache
def field_types(settings_class: type) -> dict[str, tuple[Any, bool]]:
    """Each field's type, without None, and whether None is allowed too (``int | None``)."""
    out = {}
    for name, hint in typing.get_type_hints(settings_class).items():
        args = typing.get_args(hint)
        optional = isinstance(hint, types.UnionType) and type(None) in args
        if optional:
            hint = functools.reduce(operator.or_, [a for a in args if a is not type(None)])
        out[name] = (hint, optional)
    return out


def type_problems(section: str, settings: Any) -> list[tuple[str, str]]:
    """(key, sentence) for every value of the dataclass ``settings`` whose type its field's type
    does not accept."""
    out = []
    for f in fields(settings):
        hint, optional = field_types(type(settings))[f.name]
        check = TYPES.get(hint)
        value = getattr(settings, f.name)
        if check is None or (optional and value is None) or check[0](value):
            continue
        key = f"{section}.{f.name}"
        out.append((key, f"{key}={value!r} must be {check[1]}{' (or null)' if optional else ''}."))
    return out


def registered(name: Any, registry: dict) -> bool:
    """Whether ``name`` names an entry of ``registry`` (a list given as a name names none)."""
    return isinstance(name, str) and name in registry


def memory_bytes() -> int | None:
    """This machine's physical memory (None where the system does not say)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None

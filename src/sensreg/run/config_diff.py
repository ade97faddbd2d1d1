"""What differs between a saved run's config and the config now: a resumed run must be the same
experiment (``lifecycle.py``), and the message names every key that is not."""

from __future__ import annotations

from typing import Any

from sensreg.records.config_keys import upgrade_config


def config_differences(saved: dict[str, Any], now: dict[str, Any],
                       ignore: tuple[tuple[str, str], ...] = ()) -> list[str]:
    """``section.key: saved -> now`` for every value that differs, except the ``ignore`` keys.

    ``saved`` is read through ``upgrade_config``.
    """
    saved = upgrade_config({section: dict(values or {}) for section, values in saved.items()})
    out = []
    for section in sorted(set(saved) | set(now)):
        a, b = saved.get(section) or {}, now.get(section) or {}
        for key in sorted(set(a) | set(b)):
            if (section, key) in ignore:
                continue
            if a.get(key) != b.get(key) and not _same_sequence(a.get(key), b.get(key)):
                out.append(f"{section}.{key}: {a.get(key)!r} in the saved run, {b.get(key)!r} now")
    return out


def _same_sequence(a: Any, b: Any) -> bool:
    # YAML and JSON give lists where the dataclasses hold tuples (betas).
    return isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and list(a) == list(b)


"""Typed, validated configuration.

Every config family declares a schema: ``{key: Field(type, default, help)}``. ``validate`` fills defaults, checks
types and rejects unknown keys with the list of valid ones (the Ultralytics ``check_cfg`` contract). No inheritance,
no ``eval``: a YAML file is plain data.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
REQUIRED = object()


class ConfigError(ValueError):
    """A configuration value is missing, unknown or of the wrong type."""


@dataclass(frozen=True)
class Field:
    """One config key: accepted type(s), default (``REQUIRED`` if none), what it means, and optionally the values it
    may take (``choices``) or the closed range of a number (``min`` / ``max``). For a list, ``size`` is its number
    of items and ``choices`` / ``min`` / ``max`` apply to each item. None values are not range-checked."""

    type: type | tuple[type, ...]
    default: Any
    help: str
    choices: tuple | None = None
    min: float | None = None
    max: float | None = None
    size: int | None = None

    def check(self, key: str, value: Any, where: str) -> None:
        """Raise ``ConfigError`` when ``value`` (or, for a list, its length or an item) is outside ``size``,
        ``choices`` or ``[min, max]``."""
        if value is None:
            return
        if isinstance(value, list):
            if self.size is not None and len(value) != self.size:
                raise ConfigError(f"{where}: key '{key}' must have {self.size} items, not {value!r} ({self.help})")
            items = value
        else:
            items = [value]
        for v in items:
            if self.choices is not None and v not in self.choices:
                raise ConfigError(f"{where}: key '{key}' must be one of {list(self.choices)}, not {value!r} "
                                  f"({self.help})")
            if self.min is None and self.max is None:
                continue
            if not isinstance(v, (int, float)) or isinstance(v, bool) or \
                    self.min is not None and v < self.min or self.max is not None and v > self.max:
                lo = "-inf" if self.min is None else self.min
                hi = "inf" if self.max is None else self.max
                raise ConfigError(f"{where}: key '{key}' must be in [{lo}, {hi}], not {value!r} ({self.help})")


def validate(cfg: dict | None, schema: dict[str, Field], where: str) -> dict:
    """Return ``cfg`` with defaults filled in; raise ``ConfigError`` on unknown, missing or mistyped keys."""
    import difflib

    cfg = dict(cfg or {})
    unknown = sorted(set(cfg) - set(schema))
    if unknown:
        hints = [f"'{k}' (did you mean '{m[0]}'?)" if (m := difflib.get_close_matches(k, schema, 1, 0.6)) else f"'{k}'"
                 for k in unknown]
        raise ConfigError(f"{where}: unknown key(s) {', '.join(hints)}; valid keys: {sorted(schema)}")
    out = {}
    for key, f in schema.items():
        if key not in cfg:
            if f.default is REQUIRED:
                raise ConfigError(f"{where}: missing required key '{key}' ({f.help})")
            out[key] = f.default
            continue
        value = cfg[key]
        types = f.type if isinstance(f.type, tuple) else (f.type,)
        if float in types and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if value is not None and not isinstance(value, types):
            names = "/".join(t.__name__ for t in types)
            raise ConfigError(f"{where}: key '{key}' must be {names}, got {type(value).__name__} {value!r} ({f.help})")
        f.check(key, value, where)
        out[key] = value
    return out


def load_yaml(path: str | os.PathLike) -> dict:
    """Read a YAML mapping; a clear error names the file when it is missing or not a mapping."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    with open(path) as f:
        data = yaml.safe_load(f)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def resolve_path(value: str | None, base: Path = REPO_ROOT) -> Path | None:
    """Resolve a path from a config: absolute as is, ``~`` expanded, otherwise relative to the repository root."""
    if value in (None, ""):
        return None
    p = Path(os.path.expanduser(str(value)))
    return p if p.is_absolute() else (base / p)


def data_root() -> Path:
    """Root of the real datasets: ``$LEUKODIFF_DATA`` or ``../shared/data`` next to the repository."""
    env = os.environ.get("LEUKODIFF_DATA")
    return Path(env) if env else (REPO_ROOT.parent / "shared" / "data")

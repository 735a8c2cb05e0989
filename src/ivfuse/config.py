"""One ``key=value`` parser and typed configuration checks, shared by ``--opt`` and ``ivfuse train``.

Values are read as YAML flow scalars/collections with one fix: numbers in exponent notation without a dot
(``5e-4``, ``1e3``) are floats, as in Python and JSON (YAML 1.1, which PyYAML implements, reads them as strings).

>>> parse_value("5e-4"), parse_value("[1, 2]"), parse_value("true"), parse_value("x")
(0.0005, [1, 2], True, 'x')

:func:`check_types` compares a configuration against its defaults: every key must exist there ("did you mean"
otherwise), and every value must have the default's type (``int`` / ``float`` / ``bool`` / ``str`` / ``list`` /
``dict``; an ``int`` is accepted and converted where the default is a ``float``; a default of ``null`` accepts
anything). Errors are :class:`~ivfuse.errors.InputError` with one line naming the key.

:func:`check_limits` adds ranges and shapes (:class:`Limit`: a lower/upper bound, a ``[height, width]`` list) that a
recipe declares for its keys (``Recipe.limits``), with the same one-line errors.

This module imports no torch, so the CLI can check options before anything heavy is loaded.
"""

from __future__ import annotations

import copy
import fnmatch
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .errors import InputError, suggest

__all__ = [
    "Loader",
    "parse_value",
    "parse_items",
    "read_yaml",
    "merge",
    "flatten",
    "check_types",
    "apply_overrides",
    "Limit",
    "check_limits",
]


class Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that reads ``5e-4`` as a float (YAML 1.2 / JSON / Python behaviour)."""


Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def parse_value(raw: str) -> Any:
    """A ``key=value`` value: YAML (with :class:`Loader`), or the raw string when it is not valid YAML."""
    try:
        return yaml.load(raw, Loader=Loader)  # noqa: S506 - Loader is a SafeLoader
    except yaml.YAMLError:
        return raw


def parse_items(items: Iterable[str] | None, what: str = "option") -> dict[str, Any]:
    """``["levels=5", "eps1=0.3", "name=x"]`` -> ``{"levels": 5, "eps1": 0.3, "name": "x"}`` (order kept)."""
    out: dict[str, Any] = {}
    for it in items or []:
        if "=" not in it:
            raise InputError(f"{what} '{it}' is not of the form key=value")
        k, v = it.split("=", 1)
        k = k.strip()
        if not k:
            raise InputError(f"{what} '{it}' has no key")
        out[k] = parse_value(v)
    return out


def read_yaml(path: Path | Any) -> dict:
    """A YAML mapping from a file (or importlib resource)."""
    try:
        data = yaml.load(path.read_text(), Loader=Loader)  # noqa: S506
    except yaml.YAMLError as e:
        raise InputError(f"{path}: invalid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: a config must be a mapping")
    return data


def merge(a: Mapping, b: Mapping) -> dict:
    """Recursive merge of mappings (``b`` wins)."""
    out = copy.deepcopy(dict(a))
    for k, v in b.items():
        out[k] = merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else copy.deepcopy(v)
    return out


def flatten(d: Mapping, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a": {"b": 1}, "a.b": 1}`` (every node, dotted keys)."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        out[key] = v
    return out


_TYPES = [
    (bool, "a boolean (true/false)"),
    (int, "an integer"),
    (float, "a number"),
    (str, "a string"),
    (list, "a list [a, b]"),
    (dict, "a mapping {k: v}"),
]


def _kind(v: Any) -> tuple[type, str] | None:
    for t, desc in _TYPES:  # bool before int: bool is a subclass of int
        if isinstance(v, t):
            return t, desc
    return None


def coerce(key: str, value: Any, default: Any, where: str = "config") -> Any:
    """``value`` checked against the type of ``default`` (int -> float allowed); InputError naming ``key``."""
    if default is None:
        return value
    kind = _kind(default)
    if kind is None:
        return value
    t, desc = kind
    if t is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, t) and not (t is int and isinstance(value, bool)):
        return value
    shown = f" (default {default!r})" if len(repr(default)) < 40 else ""
    raise InputError(f"{where} key '{key}' must be {desc}{shown}, got {value!r}")


def check_types(cfg: Mapping, defaults: Mapping, where: str = "config", prefix: str = "") -> dict:
    """``cfg`` with every key known in ``defaults`` and every value of the default's type (see module docstring)."""
    out = {}
    for k, v in cfg.items():
        key = f"{prefix}{k}"
        if k not in defaults:
            known = [f"{prefix}{x}" for x in defaults]
            raise suggest(key, known, f"{where} key")
        d = defaults[k]
        if isinstance(d, Mapping) and isinstance(v, Mapping):
            out[k] = check_types(v, d, where, key + ".")
        else:
            out[k] = coerce(key, v, d, where)
    return out


def apply_overrides(
    cfg: Mapping, overrides: Iterable[str] | Mapping[str, Any], defaults: Mapping | None = None, where: str = "config"
) -> dict:
    """``cfg`` with ``key.sub=value`` overrides applied; keys and types are checked against ``defaults``
    (default: ``cfg`` itself)."""
    cfg = copy.deepcopy(dict(cfg))
    defaults = cfg if defaults is None else defaults
    items = dict(overrides) if isinstance(overrides, Mapping) else parse_items(overrides, "override")
    known = flatten(defaults)
    for key, val in items.items():
        if key not in known:
            raise suggest(key, known, f"{where} key")
        default = known[key]
        if isinstance(default, Mapping) and isinstance(val, Mapping):
            val = check_types(val, default, where, key + ".")
        else:
            val = coerce(key, val, default, where)
        node = cfg
        parts = key.split(".")
        for p in parts[:-1]:
            if not isinstance(node.get(p), dict):
                node[p] = {}
            node = node[p]
        old = node.get(parts[-1])
        node[parts[-1]] = merge(old, val) if isinstance(old, Mapping) and isinstance(val, Mapping) else val
    return cfg


@dataclass(frozen=True)
class Limit:
    """Range and shape of one config value, checked after its type (:func:`check_limits`).

    Attributes:
        min: inclusive lower bound of a number, or of every item of a list;
        above: exclusive lower bound (``lr``: ``above=0``);
        max: inclusive upper bound;
        items: the names of a list's items: the value must be a list of that many numbers (``("height", "width")``);
        null: ``None`` is allowed too;
        why: a note for the message (``"VGG relu5"``).
    """

    min: float | None = None
    above: float | None = None
    max: float | None = None
    items: tuple[str, ...] | None = None
    null: bool = False
    why: str = ""

    def describe(self) -> str:
        """What the value must be: ``>= 0``, ``[height, width] with both >= 32 (VGG relu5)``, ``[height, width] or
        null``."""
        pairs = ((">=", self.min), (">", self.above), ("<=", self.max))
        bounds = [f"{op} {_num(b)}" for op, b in pairs if b is not None]
        if self.items is None:
            text = " and ".join(bounds)
        else:
            each = "both" if len(self.items) == 2 else "each"
            text = f"[{', '.join(self.items)}]" + (f" with {each} {' and '.join(bounds)}" if bounds else "")
        return text + (" or null" if self.null else "") + (f" ({self.why})" if self.why else "")

    def ok(self, value: Any) -> bool:
        if value is None:
            return self.null
        if self.items is not None:
            return isinstance(value, list) and len(value) == len(self.items) and all(map(self._in_range, value))
        return self._in_range(value)

    def _in_range(self, v: Any) -> bool:
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            return False
        low = (self.min is None or v >= self.min) and (self.above is None or v > self.above)
        return low and (self.max is None or v <= self.max)


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def check_limits(cfg: Mapping, limits: Mapping[str, Limit], where: str = "config") -> None:
    """Every value of ``cfg`` whose dotted key matches a key of ``limits`` (``epochs.*`` matches every key under
    ``epochs``; keys ``cfg`` lacks are skipped) within that :class:`Limit`; else a one-line :class:`InputError`:
    ``config key 'epochs.pretrain' must be >= 0, got -1``."""
    flat = flatten(cfg)
    for pattern, limit in limits.items():
        for key in [k for k in flat if fnmatch.fnmatchcase(k, pattern)] if "*" in pattern else [pattern]:
            if key in flat and not limit.ok(flat[key]):
                raise InputError(f"{where} key '{key}' must be {limit.describe()}, got {flat[key]}")

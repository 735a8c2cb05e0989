"""Training configuration: YAML files with ``base:`` inheritance and ``key.sub=value`` overrides.

>>> cfg = load_config("metafusion", preset="cpu", overrides=["epochs.pretrain=2", "levels=[1, 2]"])

Unknown keys are an error with a "did you mean" hint (a typo never silently trains the wrong thing).
"""

from __future__ import annotations

import copy
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ..errors import InputError, suggest

__all__ = ["load_config", "apply_overrides", "flatten"]


def _read(path: Path | Any) -> dict:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise InputError(f"{path}: invalid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: a config must be a mapping")
    base = data.pop("base", None)
    if base:
        parent = path.parent / base if isinstance(path, Path) else resources.files("ivfuse") / "configs" / base
        if not parent.is_file():
            parent = resources.files("ivfuse") / "configs" / base
        data = _merge(_read(parent), data)
    return data


def _merge(a: dict, b: dict) -> dict:
    out = copy.deepcopy(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        out[key] = v
    return out


def apply_overrides(cfg: dict, overrides: list[str]) -> dict:
    cfg = copy.deepcopy(cfg)
    known = flatten(cfg)
    for ov in overrides:
        if "=" not in ov:
            raise InputError(f"override '{ov}' is not of the form key=value")
        key, raw = ov.split("=", 1)
        key = key.strip()
        if key not in known:
            raise suggest(key, known, "config key")
        try:
            val = yaml.safe_load(raw)
        except yaml.YAMLError:
            val = raw
        node = cfg
        parts = key.split(".")
        for p in parts[:-1]:
            node = node[p]
        node[parts[-1]] = val
    return cfg


def load_config(method: str, preset: str | None = None, config: str | Path | None = None,
                overrides: list[str] | None = None) -> dict:  # fmt: skip
    """Defaults of ``method`` (``configs/<method>.yaml``), optionally a preset (``<method>_<preset>.yaml``) or a
    user file, then overrides."""
    root = resources.files("ivfuse") / "configs"
    if config is not None:
        p = Path(config)
        if not p.is_file():
            raise InputError(f"{p}: config file not found")
        cfg = _merge(_read(root / f"{method}.yaml"), _read(p))
    else:
        name = f"{method}_{preset}.yaml" if preset else f"{method}.yaml"
        f = root / name
        if not f.is_file():
            presets = sorted(x.name[len(method) + 1 : -5] for x in root.iterdir() if x.name.startswith(method + "_"))
            raise suggest(preset or method, presets or [method], f"preset of {method}")
        cfg = _read(f)
    return apply_overrides(cfg, overrides or [])

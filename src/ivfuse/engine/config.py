"""Training configuration: YAML files with ``base:`` inheritance and typed ``key.sub=value`` overrides.

>>> cfg = load_config("metafusion", preset="cpu", overrides=["epochs.pretrain=2", "optim.lr_f=5e-4"])

The method's ``configs/<method>.yaml`` is the schema: presets, user files and overrides may only use its keys
(unknown keys are an error with a "did you mean" hint) with the types of its values (``epochs.pretrain=abc`` or
``data.crop=96`` are errors naming the key; ``5e-4`` is a float). The method's recipe adds ranges and shapes
(``Recipe.limits``: ``{"epochs.*": Limit(min=0), "data.crop": CROP}``), checked here after the types and again by
:func:`~ivfuse.engine.train` (``epochs.pretrain=-1`` or ``data.crop=[96]`` are one-line errors naming the key), so
that recipes' ``check()`` keeps only what depends on several keys. Parsing is :mod:`ivfuse.config`'s, shared with
``--opt``.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from ..config import Limit, apply_overrides, check_limits, check_types, flatten, merge, parse_items, read_yaml
from ..errors import InputError, suggest

__all__ = [
    "load_config",
    "apply_overrides",
    "flatten",
    "defaults",
    "split_items",
    "limits",
    "RUN_KEYS",
    "ENGINE_KEYS",
    "Limit",
    "CROP",
    "check_limits",
]

#: ``ivfuse train`` items that are run options rather than config keys.
RUN_KEYS = ("preset", "config", "out", "export", "resume")

#: a ``[height, width]`` crop (two numbers)
CROP = Limit(items=("height", "width"))

#: Keys every method's config has (the engine's, see docs/engine.md "Distributed and mixed precision"): training
#: mixed precision ``amp: none|bf16|fp16`` and channels-last layout of modules and 4-D batch tensors.
ENGINE_KEYS = {"amp": "none", "channels_last": False}


def _root():
    return resources.files("ivfuse") / "configs"


def _read(path: Path | Any) -> dict:
    data = read_yaml(path)
    base = data.pop("base", None)
    if base:
        parent = path.parent / base if isinstance(path, Path) else _root() / base
        if not parent.is_file():
            parent = _root() / base
        data = merge(_read(parent), data)
    return data


def _defaults_file(method: str):
    """``configs/<method>.yaml`` of the package, or the file a recipe registered outside it names
    (``register_recipe(name, config=FILE)``); "did you mean" over both when there is neither."""
    f = _root() / f"{method}.yaml"
    if f.is_file():
        return f
    from .recipe import RECIPES

    if method in RECIPES.names() and getattr(RECIPES.get(method), "config_file", None):
        return Path(RECIPES.get(method).config_file)
    names = sorted(x.name[:-5] for x in _root().iterdir() if x.name.endswith(".yaml") and "_" not in x.name)
    raise suggest(method, sorted({*names, *RECIPES.names()}), "method config")


def defaults(method: str) -> dict:
    """The defaults (and type schema) of ``method``: ``configs/<method>.yaml``, or the ``config=`` file of a recipe
    registered outside the package."""
    return {**ENGINE_KEYS, **_read(_defaults_file(method))}


def limits(method: str) -> dict[str, Limit]:
    """The ranges and shapes that the recipe of ``method`` declares for its config keys (``{}`` without a recipe)."""
    from .recipe import RECIPES

    return dict(getattr(RECIPES.get(method), "limits", {})) if method in RECIPES.names() else {}


def load_config(
    method: str, preset: str | None = None, config: str | Path | None = None, overrides: list[str] | dict | None = None
) -> dict:
    """Defaults of ``method``, optionally a preset (``<method>_<preset>.yaml``) or a user file, then overrides;
    every layer is checked against the defaults' keys and types, the result against the recipe's :func:`limits`."""
    base = defaults(method)
    if config is not None:
        p = Path(config)
        if not p.is_file():
            raise InputError(f"{p}: config file not found")
        cfg = merge(base, check_types(_read(p), base, f"{p}"))
    elif preset:
        folder = _defaults_file(method).parent  # presets sit beside the defaults: <method>_<preset>.yaml
        f = folder / f"{method}_{preset}.yaml"
        if not f.is_file():
            presets = sorted(x.name[len(method) + 1 : -5] for x in folder.iterdir() if x.name.startswith(method + "_"))
            raise suggest(preset, presets or [method], f"preset of {method}")
        cfg = merge(base, check_types(_read(f), base, f"preset {preset}"))
    else:
        cfg = base
    cfg = apply_overrides(cfg, overrides or [], defaults=base)
    check_limits(cfg, limits(method))
    return cfg


def split_items(items: list[str]) -> tuple[dict[str, str], list[str]]:
    """``ivfuse train`` items -> (run options such as ``out``/``preset``, config overrides)."""
    run, overrides = {}, []
    for it in items:
        key = it.split("=", 1)[0].strip()
        if key in RUN_KEYS and "=" in it:
            run[key] = it.split("=", 1)[1]
        else:
            parse_items([it], "override")  # shape check (key=value) with the shared parser
            overrides.append(it)
    return run, overrides

"""Base class and registry for fusion methods (learned and classical).

Every method is an ``nn.Module`` called as ``model(ir, vis)`` with float tensors in [0, 1]:
``ir`` ``B×1×H×W``, ``vis`` ``B×1×H×W`` (gray) or ``B×3×H×W`` (RGB); it returns the fused image with the
visible input's channels and the input's size. Colour is handled here once for all methods: RGB visible
images are converted to YCbCr (BT.601, kornia), the method fuses Y with IR (:meth:`FusionModel.fuse_luma`)
and Cb/Cr are restored. A method that needs the colour image itself overrides :meth:`forward`.
"""

from __future__ import annotations

import difflib
import inspect
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import torch
from kornia.color import rgb_to_ycbcr, ycbcr_to_rgb
from torch import nn

from ..errors import InputError, UnknownNameError
from ..registry import Registry

__all__ = [
    "FusionModel",
    "MODELS",
    "register_model",
    "create_model",
    "list_models",
    "check_pair",
    "check_options",
    "method_options",
    "read_weights",
    "load_state",
    "Weights",
    "load_checked",
    "DEFAULT_WEIGHTS",
    "default_weights_path",
    "resolve_weights",
    "to_channels_last",
]


def _plugin(name: str, obj: Any) -> Any:
    """An ``ivfuse.methods`` entry point: a :class:`FusionModel` subclass (named ``name``) or a factory."""
    if isinstance(obj, type) and issubclass(obj, FusionModel):
        obj.name = name
    elif not callable(obj):
        raise TypeError(f"{obj!r} is neither a FusionModel class nor a factory")
    return obj


#: every fusion method; third-party packages add theirs through the entry-point group ``ivfuse.methods``
MODELS: Registry[Callable[..., FusionModel]] = Registry("method", entry_points="ivfuse.methods", on_plugin=_plugin)


def check_pair(ir: torch.Tensor, vis: torch.Tensor, min_size: int = 1, name: str = "method") -> None:
    """Validate a (ir, vis) batch: 4-D, 1-channel IR, 1/3-channel visible, same size, finite, >= min_size."""
    if ir.ndim != 4 or vis.ndim != 4:
        raise InputError(f"expected B×C×H×W tensors, got ir {tuple(ir.shape)} and vis {tuple(vis.shape)}")
    if ir.shape[1] != 1:
        raise InputError(f"infrared input must have 1 channel, got {ir.shape[1]}")
    if vis.shape[1] not in (1, 3):
        raise InputError(f"visible input must have 1 or 3 channels, got {vis.shape[1]}")
    if ir.shape[0] != vis.shape[0] or ir.shape[-2:] != vis.shape[-2:]:
        raise InputError(
            f"infrared {ir.shape[-1]}x{ir.shape[-2]} and visible {vis.shape[-1]}x{vis.shape[-2]} "
            "differ in size or batch"
        )
    if min(ir.shape[-2:]) < min_size:
        raise InputError(
            f"image {ir.shape[-1]}x{ir.shape[-2]} is smaller than the {min_size}x{min_size} minimum of '{name}'"
        )


class FusionModel(nn.Module):
    """Base of all fusion methods. Subclasses implement :meth:`fuse_luma` (or override :meth:`forward`).

    Attributes:
        name: registry name.
        min_size: smallest image side the method accepts.
    """

    name: str = "fusion"
    min_size: int = 1
    #: why ``ivfuse export`` refuses the method (``None``: it exports and is checked against PyTorch)
    onnx_unsupported: str | None = None
    #: :func:`create_model` stores the convolution weights in ``torch.channels_last`` memory format, so that oneDNN
    #: runs every convolution channels-last (1.2–1.7× less CPU time per 640×480 pair for 13 of the 16 learned
    #: methods, outputs within 2e-6; ``docs/deployment.md``); ``False`` where it does not help
    channels_last: bool = True

    def fuse_luma(self, ir: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """Fuse ``B×1×H×W`` infrared with ``B×1×H×W`` visible luminance -> ``B×1×H×W`` in [0, 1]."""
        raise NotImplementedError

    def forward(self, ir: torch.Tensor, vis: torch.Tensor) -> torch.Tensor:
        check_pair(ir, vis, self.min_size, self.name)
        if vis.shape[1] == 1:
            return self.fuse_luma(ir, vis).clamp(0, 1)
        ycc = rgb_to_ycbcr(vis)
        y = self.fuse_luma(ir, ycc[:, :1]).clamp(0, 1)
        return ycbcr_to_rgb(torch.cat([y, ycc[:, 1:]], 1)).clamp(0, 1)


#: method name -> file name of its shipped weights in the package's ``weights/`` folder (``register_model(name,
#: default_weights=FILE)``); :func:`resolve_weights` is the one place that finds them
DEFAULT_WEIGHTS: dict[str, str] = {}


def register_model(name: str, default_weights: str | None = None) -> Callable:
    """Register a :class:`FusionModel` subclass or factory under ``name``; ``default_weights``: the file name of the
    method's shipped weights in ``ivfuse/weights/`` (what ``weights="default"`` loads, see :func:`resolve_weights`)."""

    def deco(obj):
        if isinstance(obj, type):
            obj.name = name
        MODELS.add(name, obj)
        if default_weights:
            DEFAULT_WEIGHTS[name] = default_weights
        return obj

    return deco


def default_weights_path(method: str) -> Path:
    """The shipped weights file of ``method`` (registered with ``default_weights=``); an :class:`InputError` when the
    method ships none or the installed package lacks the file."""
    from importlib import resources

    if method not in DEFAULT_WEIGHTS:
        raise InputError(f"method '{method}' ships no default weights; pass weights=FILE")
    p = Path(str(resources.files("ivfuse") / "weights" / DEFAULT_WEIGHTS[method]))
    if not p.is_file():
        raise InputError(
            f"{p}: the shipped {method} model is missing from the package; train one (ivfuse train "
            f"{method} preset=cpu export=FILE) and pass weights=FILE"
        )
    return p


def resolve_weights(method: str, weights: str | os.PathLike | None) -> Path | None:
    """The one meaning of a learned method's ``weights`` option, for every method:

    * ``"default"`` (every factory's default) -> the shipped file (:func:`default_weights_path`);
    * ``None`` -> ``None``: an **untrained** network (for training code; the methods that cannot build one say so);
    * anything else -> that file, which must exist (a one-line :class:`InputError` naming it otherwise).
    """
    if weights is None:
        return None
    if isinstance(weights, str) and weights == "default":
        return default_weights_path(method)
    p = Path(weights)
    if not p.is_file():
        raise InputError(f"{p}: {method} weights file not found")
    return p


def _scalar_types(annotation: Any, default: Any) -> tuple[type, ...] | None:
    """Plain value types an option accepts (``int``, ``float``, ``bool``, ``str``, ``None``), from its annotation or,
    failing that, its default; ``None`` when they cannot be told (then any value is passed through)."""
    import types
    import typing

    plain = (bool, int, float, str, type(None))
    ann = annotation
    if ann is not inspect.Parameter.empty and not isinstance(ann, str):
        args = typing.get_args(ann) if typing.get_origin(ann) in (typing.Union, types.UnionType) else (ann,)
        args = tuple(type(None) if a is None else a for a in args)
        if all(a in plain for a in args):
            return args
        if all(isinstance(a, type) for a in args) and any(a in plain for a in args):
            return None  # e.g. str | os.PathLike: paths and other objects are allowed
        return None
    if default is inspect.Parameter.empty or default is None:
        return None
    return (type(default),) if type(default) in plain else None


def _type_ok(value: Any, types_: tuple[type, ...]) -> bool:
    if value is None:
        return type(None) in types_
    if isinstance(value, bool):
        return bool in types_
    if isinstance(value, int):
        return int in types_ or float in types_
    return isinstance(value, types_)


def method_options(name: str) -> dict[str, inspect.Parameter] | None:
    """Keyword options of the method ``name`` (from its factory/constructor signature); ``None`` if it takes
    arbitrary ``**kwargs``."""
    factory = MODELS.get(name)
    if isinstance(factory, type) and factory.__init__ is nn.Module.__init__:
        return {}  # no constructor of its own: no options (nn.Module's accepts and ignores anything)
    try:
        sig = inspect.signature(factory, eval_str=True)
    except (NameError, TypeError, ValueError):
        sig = inspect.signature(factory)
    params = {}
    for p in sig.parameters.values():
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            return None
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY):
            params[p.name] = p
    return params


def check_options(name: str, options: dict[str, Any]) -> None:
    """Validate method options against the method's signature: unknown names (with "did you mean"), values of the
    wrong type (``levels='five'``) and ``weights`` given to a method that has none raise one-line errors."""
    params = method_options(name)
    if params is None:
        return
    method = str(name).lower()
    for key, value in options.items():
        if key not in params:
            if key == "weights":
                learned = [n for n in MODELS.names() if "weights" in (method_options(n) or {})]
                raise InputError(
                    f"method '{method}' has no learned weights, so --weights (weights=) does not apply "
                    f"(methods with weights: {', '.join(learned) or 'none'})"
                )
            if not params:
                raise UnknownNameError(f"method '{method}' takes no options (got '{key}')")
            close = difflib.get_close_matches(key, list(params), n=1, cutoff=0.5)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise UnknownNameError(f"unknown option '{key}' for method '{method}'{hint} (options: {', '.join(params)})")
        p = params[key]
        types_ = _scalar_types(p.annotation, p.default)
        if types_ is not None and not _type_ok(value, types_):
            want = " or ".join("None" if t is type(None) else t.__name__ for t in types_)
            raise InputError(f"option '{key}' of method '{method}' must be {want}, got {value!r}")


def create_model(name: str, **kwargs: Any) -> FusionModel:
    """Instantiate the fusion method ``name`` (``ivfuse list methods``) with keyword options.

    Options are checked against the method's signature first (:func:`check_options`); a value the method itself
    refuses (``levels=0``) is an :class:`InputError` naming the method. The model is returned in eval mode, with its
    convolution weights channels-last where :attr:`FusionModel.channels_last` says so (never with
    ``preset="official"``)."""
    factory = MODELS.get(name)
    check_options(name, kwargs)
    try:
        model = factory(**kwargs)
    except (TypeError, ValueError) as e:
        if isinstance(e, InputError):
            raise
        raise InputError(f"method '{str(name).lower()}': {e}") from None
    if isinstance(model, FusionModel) and model.name == FusionModel.name:  # a factory's model: name it for messages
        model.name = str(name).lower()
    # the official presets keep the authors' layout: channels-last changes the summation order, which their 8-bit
    # round trips or train-mode BatchNorm (OCCO: 6e-3) can amplify; they stay bit-exact against the official code
    if isinstance(model, FusionModel) and model.channels_last and getattr(model, "preset", None) != "official":
        to_channels_last(model)
    return model.eval()


def to_channels_last(module: nn.Module) -> nn.Module:
    """``module`` (in place) with its 4-D weights in ``torch.channels_last`` memory format, so that oneDNN/cuDNN run
    its convolutions channels-last, while its ``state_dict()`` stays in the standard layout (:func:`_standard_layout`).
    The one conversion of :func:`create_model`, ``Runner(channels_last=True)`` and the training key
    ``channels_last=true``."""
    module.to(memory_format=torch.channels_last)
    if not getattr(module, "_standard_state_dict", False):
        module.register_state_dict_post_hook(_standard_layout)
        module._standard_state_dict = True
    return module


def _standard_layout(module: nn.Module, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    """``state_dict()`` of a channels-last model in the standard layout (copies of the 4-D weights), so that it saves
    with ``safetensors`` (which refuses non-contiguous tensors) and compares like any other state dict."""
    for k, v in state_dict.items():
        if isinstance(v, torch.Tensor) and not isinstance(v, nn.Parameter) and not v.is_contiguous():
            state_dict[k] = v.contiguous()


def list_models() -> list[str]:
    return MODELS.names()


def read_weights(path: str | os.PathLike, method: str) -> tuple[Any, dict[str, Any]]:
    """Read a learned method's weights file: ``(object, metadata)``.

    ``.safetensors``: the state dict and its string metadata with JSON values decoded (``config``, ``genotype`` ...).
    Anything else: ``torch.load(map_location="cpu", weights_only=True)`` and ``{}``. A missing or unreadable file is a
    one-line :class:`InputError` naming it.
    """
    import json
    from pathlib import Path

    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: {method} weights file not found")
    try:
        if p.suffix == ".safetensors":
            from safetensors import safe_open
            from safetensors.torch import load_file

            with safe_open(p, "pt") as f:
                raw = f.metadata() or {}
            meta = {}
            for k, v in raw.items():
                try:
                    meta[k] = json.loads(v)
                except ValueError:
                    meta[k] = v
            return load_file(p), meta
        return torch.load(p, map_location="cpu", weights_only=True), {}
    except Exception as e:  # noqa: BLE001 - any unreadable file is a user input problem
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:120]
        raise InputError(f"{p}: cannot read {method} weights ({type(e).__name__}: {first})") from None


class Weights(NamedTuple):
    """What :func:`load_state` read from a weights file."""

    #: the state dict (for a ``"raw"`` file: the whole object, e.g. an official container the model unpacks itself)
    state: Any
    #: the model configuration the file records (``None``: none)
    config: Any
    #: everything else it records: a safetensors export's metadata (JSON values decoded, ``config`` included), the
    #: other keys of a ``{"state_dict", ...}`` container (TIM's ``genotype``/``width``, an official file's ``meta``)
    meta: dict[str, Any]
    #: ``"export"`` (safetensors with metadata), ``"checkpoint"`` (an engine run's ``last.pt``/``final.pt``/
    #: ``after_<stage>.pt``), ``"container"`` (``{"state_dict", "config", ...}``) or ``"raw"`` (anything else: a bare
    #: state dict, safetensors without metadata, an official file)
    kind: str


def load_state(path: str | os.PathLike, method: str, module: str | None = None, section: str | None = None) -> Weights:
    """Unpack any ivfuse weights container, for every learned method (:class:`Weights`):

    * safetensors with metadata (``ivfuse train ... export=F``): the tensors, ``metadata["config"]``;
    * an engine checkpoint ``{"modules": {...}, "config": ...}``: ``modules[module]`` and the run's config (its
      ``section``, e.g. ``"fusion"``, when given). ``module=None``: the method does not load training checkpoints
      (a one-line :class:`InputError` that says to pass the run's export); a checkpoint without ``module`` too;
    * ``{"state_dict": ..., "config": ..., ...}``: the state dict, ``config`` and the other keys as ``meta``;
    * anything else (a bare state dict, safetensors without metadata, an official file): as read.

    Unreadable files are one-line :class:`InputError` naming the file (:func:`read_weights`); whether the state fits
    the network is the caller's check (:func:`load_checked`, an official key table)."""
    obj, meta = read_weights(path, method)
    if meta:
        return Weights(obj, meta.get("config"), meta, "export")
    if isinstance(obj, dict) and "modules" in obj and "state_dict" not in obj:
        mods = obj["modules"]
        if module is None or not isinstance(mods, dict) or module not in mods:
            has = ", ".join(map(str, mods)) if isinstance(mods, dict) else type(mods).__name__
            want = "does not load training checkpoints" if module is None else f"needs its network '{module}'"
            raise InputError(
                f"{path}: an ivfuse training checkpoint (networks: {has}); {method} {want}: pass the "
                "run's export (ivfuse train ... export=FILE)"
            )
        cfg = obj.get("config")
        if section is not None:
            cfg = cfg.get(section) if isinstance(cfg, dict) else None
        return Weights(mods[module], cfg, {}, "checkpoint")
    if isinstance(obj, dict) and "state_dict" in obj:
        rest = {k: v for k, v in obj.items() if k not in ("state_dict", "config")}
        return Weights(obj["state_dict"], obj.get("config"), rest, "container")
    return Weights(obj, None, {}, "raw")


def load_checked(model: nn.Module, state: Any, path: str | os.PathLike, method: str) -> nn.Module:
    """Load ``state`` into ``model`` requiring exactly its keys (one-line :class:`InputError` naming ``path``
    otherwise) and return it in eval mode."""
    if not isinstance(state, dict):
        raise InputError(f"{path}: expected a {method} state dict, found {type(state).__name__}")
    try:
        res = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatch
        raise InputError(f"{path}: not {method} weights ({' '.join(str(e).split())[:200]})") from None
    if res.missing_keys or res.unexpected_keys:
        raise InputError(
            f"{path}: keys do not match {method} (missing {res.missing_keys[:3]}, unexpected {res.unexpected_keys[:3]})"
        )
    return model.eval()

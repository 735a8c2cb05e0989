"""Inference with fused convolutions: the same result as running the modules one by one, with less memory traffic.

Used by TSJNet and TIM in eval mode (training mode runs their modules as they are):

* an eval-mode ``BatchNorm2d`` after a convolution is folded into the convolution's weights and bias (recomputed on
  every call, so they never go stale when the weights change);
* the activation after a convolution (ReLU, ReLU6, LeakyReLU, Sigmoid, and a one-parameter PReLU, which is a leaky
  ReLU with a learned slope), and a residual sum, run inside oneDNN's convolution as post-ops
  (``torch.ops.mkldnn._convolution_pointwise``): CPU float32 without autograd only, where the result is the same up
  to float rounding; everywhere else the same arithmetic runs as plain PyTorch ops;
* on CPU this also sends 1×1 convolutions to oneDNN on one thread, where PyTorch's own choice is its slower
  reference GEMM path (``_slow_conv2d_forward``).

:func:`run_folded` applies this to an ``nn.Sequential``; :class:`FoldedSequential` is an ``nn.Sequential`` (same
state-dict keys) that does so by itself in eval mode.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["RELU", "SIGMOID", "FoldedSequential", "act_of", "bn_foldable", "conv_fused", "mkldnn_fusable", "run_folded"]


def bn_foldable(bn: nn.Module) -> bool:
    """Whether ``bn`` is a BatchNorm2d that normalises with fixed (running) statistics and can be folded."""
    return isinstance(bn, nn.BatchNorm2d) and not bn.training and bn.running_var is not None and bn.affine


_MKLDNN_OK: bool | None = None


def mkldnn_fusable(x: torch.Tensor, conv: nn.Conv2d) -> bool:
    """Whether ``conv`` on ``x`` can run as a oneDNN convolution with fused post-ops (checked once for the op)."""
    global _MKLDNN_OK
    if (
        x.device.type != "cpu"
        or x.dtype != torch.float32
        or conv.padding_mode != "zeros"
        or isinstance(conv.padding, str)
        or torch.is_autocast_enabled("cpu")
        or torch.jit.is_tracing()
        or torch.jit.is_scripting()
        or (torch.is_grad_enabled() and (x.requires_grad or conv.weight.requires_grad))
    ):
        return False
    if _MKLDNN_OK is None:
        try:
            xs, ws = torch.arange(18.0).view(1, 2, 3, 3) / 9 - 1, torch.arange(36.0).view(2, 2, 3, 3) / 36 - 0.5
            got = torch.ops.mkldnn._convolution_pointwise(xs, ws, None, [1, 1], [1, 1], [1, 1], 1, "relu", [], "")
            _MKLDNN_OK = bool(torch.allclose(got, F.relu(F.conv2d(xs, ws, padding=1)), rtol=0, atol=1e-5))
        except Exception:  # noqa: BLE001 - no oneDNN or another signature: plain PyTorch ops
            _MKLDNN_OK = False
    return _MKLDNN_OK


#: an activation as (oneDNN post-op, its scalars, the plain PyTorch function)
Act = tuple[str, list[float], Any]


def act_of(m: nn.Module) -> Act | None:
    """The fusable form of the activation module ``m``, or ``None`` when it has none."""
    if isinstance(m, nn.ReLU):
        return "relu", [], F.relu
    if isinstance(m, nn.ReLU6):
        return "hardtanh", [0.0, 6.0], F.relu6
    if isinstance(m, nn.LeakyReLU):
        slope = m.negative_slope
        return "leaky_relu", [slope], lambda t: F.leaky_relu(t, slope)
    if (
        isinstance(m, nn.PReLU)
        and m.weight.numel() == 1
        and m.weight.device.type == "cpu"  # oneDNN's post-ops are CPU only; reading the slope on a GPU would sync
        and not (torch.is_grad_enabled() or torch.jit.is_tracing())
    ):
        # prelu(x) = x for x > 0, a·x otherwise: a leaky ReLU with slope a (the same product, so the same float)
        return "leaky_relu", [float(m.weight)], lambda t: F.prelu(t, m.weight)
    if isinstance(m, nn.Sigmoid):
        return "sigmoid", [], torch.sigmoid
    return None


RELU: Act = ("relu", [], F.relu)
SIGMOID: Act = ("sigmoid", [], torch.sigmoid)


def conv_fused(
    conv: nn.Conv2d,
    x: torch.Tensor,
    bn: nn.Module | None = None,
    act: Act | None = None,
    other: torch.Tensor | None = None,
) -> torch.Tensor:
    """``act(bn(conv(x)) + other)`` for inference: an eval ``bn`` folded into the weights, ``other`` (a residual
    of the output's shape) and ``act`` (an :func:`act_of` triple) fused into the oneDNN convolution when
    :func:`mkldnn_fusable`, else plain PyTorch ops."""
    w, b = conv.weight, conv.bias
    if bn is not None:
        scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
        b = bn.bias - bn.running_mean * scale + (b * scale if b is not None else 0)
        w = w * scale.view(-1, *[1] * (w.ndim - 1))
    if mkldnn_fusable(x, conv):
        args = (list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups)
        if other is not None:
            return torch.ops.mkldnn._convolution_pointwise(
                x,
                other.contiguous(memory_format=torch.channels_last),
                w,
                b,
                *args,
                "add",
                1.0,
                act[0] if act else None,
                act[1] if act else [],
                "",
            )
        return torch.ops.mkldnn._convolution_pointwise(
            x, w, b, *args, act[0] if act else "none", act[1] if act else [], ""
        )
    y = conv._conv_forward(x, w, b)
    if other is not None:
        y = y + other
    return act[2](y) if act else y


def _flat(seq: nn.Sequential) -> list[nn.Module]:
    """The modules of ``seq``, with nested sequentials that only chain their modules (no own ``forward``) opened."""
    out: list[nn.Module] = []
    for m in seq:
        if isinstance(m, nn.Sequential) and type(m).forward in (nn.Sequential.forward, FoldedSequential.forward):
            out.extend(_flat(m))
        else:
            out.append(m)
    return out


def run_folded(seq: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """Run ``seq`` for inference with every ``Conv2d [-> eval BatchNorm2d] [-> activation]`` as one
    :func:`conv_fused` call."""
    mods, i = _flat(seq), 0
    while i < len(mods):
        m = mods[i]
        if type(m) is nn.Conv2d:
            j, bn = i + 1, None
            if j < len(mods) and bn_foldable(mods[j]):
                bn, j = mods[j], j + 1
            act = act_of(mods[j]) if j < len(mods) else None
            x, i = conv_fused(m, x, bn, act), j + (act is not None)
        else:
            x, i = m(x), i + 1
    return x


class FoldedSequential(nn.Sequential):
    """An ``nn.Sequential`` (the same modules and state-dict keys) that runs through :func:`run_folded` in eval
    mode."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return super().forward(x)
        return run_folded(self, x)

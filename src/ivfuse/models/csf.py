"""CSF — classification-saliency-based fusion rule, from its official (TensorFlow) weights.

Paper: H. Xu, H. Zhang, J. Ma, "Classification Saliency-Based Rule for Visible and Infrared Image Fusion", IEEE
Transactions on Computational Imaging 7 (2021) 824–836 (§III: an auto-encoder (encoder E, decoder D) and a
classifier C trained to tell visible from infrared features; at test time the fusion weight of each feature is its
classification saliency, the gradient of C's class score with respect to the feature, taken along a path of inputs
interpolated between the two images).
Official code: https://github.com/hanna-xu/CSF (read in the VIF-Benchmark collection copy ``ycc568/my-seafusion``
@ cff58e5: ``CSF/CSF.py``, ``generate.py``, ``networks.py``). Licence: none stated in the official repository's
copy (the authors' terms apply to the weights).
Weights: ``peers/CSF_ED.npz`` (encoder + decoder, checkpoint ``ED.ckpt``) and ``peers/CSF_EC.npz`` (classifier,
checkpoint ``EC.ckpt``; its ``Encoder/*`` arrays equal ED's and, as in the official script, are not used; ``Variable``
is the training-step counter); 61,737 (encoder + decoder) + 123,330 (classifier convs) = 185,067 parameters and
520 batch-norm statistics (:data:`ivfuse.models._tf.TF_WEIGHTS` ``"csf_ed"``, ``"csf_ec"``).

What ivfuse reproduces (its own code; the TF layout conversion is :mod:`ivfuse.models._tf`):

* Encoder ``conv1_{1,4,6,8}``: 5×5 convs 1→16→24→24→24, reflect padding 2, LeakyReLU 0.2. Decoder ``conv1_{1..4}``
  24→16→16→16→1, LeakyReLU but the last, ``tanh``. Classifier ``conv1_{6,8,9,11}`` 24→32→64→32→2: 5×5 conv (reflect
  2), batch norm with the stored statistics (inference, TF eps 1e-3), LeakyReLU 0.2, 2×2 max pool (TF ``SAME``);
  spatial mean → two logits (0 = visible, 1 = infrared).
* Inputs: the PIL-YCbCr float luma, ``(x/255 − ½)·2``.
* Rule (``generate.py``, "CS-based strategy"), with ``μ`` the image means: ``vis' = vis − μ_vis + μ_ir``;
  ten inputs ``ir_k = vis' + (ir − vis')·k/10`` and ``vis_k = ir + (vis' − ir)·k/10`` (k = 1..10) are encoded as one
  batch, and the saliency is ``mean_k |∂ logit / ∂ feature_k| · 0.25^(k−1)``. **Official behaviour kept**: the
  gradient is taken of ``out[0, ·]``, the logit of the batch's *first* sample only, so every other sample's gradient
  is zero and the saliency is ``|∂ logit(ir_1)/∂ feature(ir_1)| / 10`` (likewise for visible); ivfuse computes that
  one gradient per image (exactly the official value, ten times cheaper). Then ``s_ir += mean(s_vis) − mean(s_ir)``,
  weights ``softmax(s_vis/c, s_ir/c)`` with ``c = 0.00015`` (computed as a sigmoid of the difference: the same
  numbers, no overflow), per pixel and channel; the weighted sum of the two images' 24-channel features is decoded.
* Output ``tanh/2 + ½``, ``imsave`` min–max stretch, PIL YCbCr colour with the visible chroma
  (:func:`ivfuse.models._tf.official_save`).

The saliency is a gradient, but ivfuse writes the classifier's backward pass out (:meth:`CSF.saliency`: max-pool
routing to the first maximum, LeakyReLU slopes, batch-norm scale, transposed convolutions, the adjoint of reflection
padding) instead of calling ``torch.autograd.grad``, so ``forward`` is a plain tensor graph: it runs under
``torch.no_grad``/``torch.inference_mode``, on any device, and traces to ONNX; the tests check it against autograd
(≤ 6e-8) and against the official ten-sample batch. The fusion weights are detached (a rule, not trained through),
so with ``preset="ivfuse"`` the output is differentiable through the features. Each image of a batch gets its own
saliency, so a batch gives the same result as its images alone. Because the weights are a softmax of gradient
differences divided by ``c = 0.00015``, float round-off is amplified: an onnxruntime export differs from PyTorch by
≈ 1e-3 (0.3 grey level) on random inputs, above the 1e-4 that ``ivfuse export`` accepts.

Presets (``preset=``, ``--opt preset=...``; see :mod:`ivfuse.models._tf`): ``"ivfuse"`` (default: float luminance
in, ``tanh/2+½`` out without stretch, ivfuse's BT.601 colour path — differentiable, device-agnostic) and
``"official"`` (8-bit Pillow I/O, the SciPy min–max stretch and Pillow's YCbCr colour: what the official script
writes, used for parity). Minimum size 17×17: the classifier reflect-pads by 2 after three 2× poolings
(⌈n/8⌉ ≥ 3). Parity with the official outputs: docs/peers.md.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ._tf import TFConv, TFPeer, assign_tf, load_tf_npz, lrelu, tf_batch_norm, tf_max_pool_same, tf_weights_path
from .base import register_model

__all__ = ["CSF"]

C_SOFTMAX = 0.00015
SAMPLES = 10


class _BN(nn.Module):
    """Stored TF batch-norm statistics (buffers, inference only; ``tf.layers.batch_normalization`` eps 1e-3)."""

    eps = 1e-3

    def __init__(self, ch: int) -> None:
        super().__init__()
        for n in ("gamma", "beta", "moving_mean", "moving_variance"):
            self.register_buffer(n, torch.ones(ch) if n in ("gamma", "moving_variance") else torch.zeros(ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return tf_batch_norm(x, dict(self.named_buffers()), self.eps)

    def scale(self) -> torch.Tensor:
        """``gamma / sqrt(var + eps)``: the derivative of the normalisation."""
        return self.gamma * torch.rsqrt(self.moving_variance + self.eps)


def _pool_with_argmax(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """TF ``max_pool(2×2, stride 2, 'SAME')`` (odd sizes padded at the end, padding never the max) and, per window,
    a one-hot ``B×C×4×h×w`` mask of its first maximum in row-major order (where TF's MaxPool gradient goes)."""
    a = F.pad(a, (0, a.shape[-1] % 2, 0, a.shape[-2] % 2), value=float("-inf"))
    b, c, h, w = a.shape
    win = F.pixel_unshuffle(a, 2).view(b, c, 4, h // 2, w // 2)  # window position dy*2+dx
    first = (torch.arange(4, device=a.device).view(1, 1, 4, 1, 1) == win.argmax(2, keepdim=True)).to(a.dtype)
    return win.amax(2), first


def _unpool(g: torch.Tensor, first: torch.Tensor) -> torch.Tensor:
    """Adjoint of :func:`_pool_with_argmax`: each pooled gradient back to its window's maximum (padded size)."""
    b, c, h, w = g.shape
    return F.pixel_shuffle((g.unsqueeze(2) * first).reshape(b, c * 4, h, w), 2)


def _reflect_pad_adjoint(g: torch.Tensor, p: int) -> torch.Tensor:
    """Adjoint of ``F.pad(x, (p,)*4, mode="reflect")``: fold the gradient of each reflected row/column back onto
    the row/column it copies (size ``n + 2p`` → ``n``)."""
    for dim in (-2, -1):
        n = g.shape[dim] - 2 * p
        body = g.narrow(dim, p, n)
        front = g.narrow(dim, 0, p).flip(dim)  # padded index p-1-k copies row k+1
        back = g.narrow(dim, n + p, p).flip(dim)  # padded index n+p+k copies row n-2-k
        pad_f = [0, 0, 0, 0]
        pad_b = [0, 0, 0, 0]
        i = 0 if dim == -1 else 2
        pad_f[i], pad_f[i + 1] = 1, n - 1 - p
        pad_b[i], pad_b[i + 1] = n - 1 - p, 1
        g = body + F.pad(front, pad_f) + F.pad(back, pad_b)
    return g


class CSF(TFPeer):
    """CSF (see module docstring). Build it with ``create_model("csf")``."""

    name = "csf"
    #: its gradient-based fusion weights amplify float summation order: channels-last weights move single pixels by up
    #: to 1.7e-3 (mean 5e-6) for 17 % less CPU time, so csf keeps the default layout (parity with the official output)
    channels_last = False
    min_size = 17
    onnx_unsupported = (
        "its fusion weights are a softmax of gradient differences divided by 0.00015, which amplifies "
        "float round-off: onnxruntime differs from PyTorch by about 1e-3, above the 1e-4 export check"
    )
    input_mode = "luma"

    def __init__(self, preset: str = "ivfuse") -> None:
        super().__init__(preset)
        self.encoder = nn.ModuleList([TFConv(a, b, 5, "reflect") for a, b in ((1, 16), (16, 24), (24, 24), (24, 24))])
        self.decoder = nn.ModuleList([TFConv(a, b, 5, "reflect") for a, b in ((24, 16), (16, 16), (16, 16), (16, 1))])
        chans = (24, 32, 64, 32, 2)
        self.classifier = nn.ModuleList([TFConv(a, b, 5, "reflect") for a, b in itertools.pairwise(chans)])
        self.bn = nn.ModuleList([_BN(b) for b in chans[1:]])

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.encoder:
            x = lrelu(conv(x))
        return x

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        for conv in self.decoder[:-1]:
            f = lrelu(conv(f))
        return torch.tanh(self.decoder[-1](f))

    def classify(self, f: torch.Tensor) -> torch.Tensor:
        """``B×24×H×W`` features → ``B×2`` logits (0 visible, 1 infrared)."""
        for conv, bn in zip(self.classifier, self.bn):
            f = tf_max_pool_same(lrelu(bn(conv(f))))
        return f.mean((2, 3))

    def saliency(self, x: torch.Tensor, cls: int) -> torch.Tensor:
        """``|∂ logit_cls / ∂ encode(x)|`` per image, by an explicit backward pass through the classifier (each
        image's logit depends on its own features only). Written out instead of ``torch.autograd.grad`` so that the
        rule is a plain forward graph (no autograd inside ``forward``; ONNX export); equal to autograd's gradient
        (``tests/test_peers_tf.py``). Pooling routes the gradient to the (first) maximum, as TF's MaxPool gradient;
        LeakyReLU passes 1 where its input is ≥ 0 and 0.2 elsewhere, as TF's ``maximum(x, 0.2x)``."""
        f = self.encode(x)
        saved = []
        for conv, bn in zip(self.classifier, self.bn):
            u = bn(conv(f))
            f, first = _pool_with_argmax(lrelu(u))
            saved.append((u, first, bn))
        cls_mask = (torch.arange(f.shape[1], device=f.device) == cls).to(f.dtype).view(1, -1, 1, 1)
        g = torch.ones_like(f) * cls_mask / (f.shape[-2] * f.shape[-1])  # d mean / d pooled map
        for conv, (u, first, bn) in zip(reversed(self.classifier), reversed(saved)):
            g = _unpool(g, first)[..., : u.shape[-2], : u.shape[-1]]
            g = g * torch.where(u >= 0, 1.0, 0.2) * bn.scale().view(1, -1, 1, 1)
            g = _reflect_pad_adjoint(F.conv_transpose2d(g, conv.weight), 2)
        return g.abs()

    def fusion_weights(self, ir: torch.Tensor, vis: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-pixel, per-channel fusion weights ``(w_vis, w_ir)`` of the official rule."""
        mi, mv = ir.mean((1, 2, 3), keepdim=True), vis.mean((1, 2, 3), keepdim=True)
        vis_shift = vis - mv + mi
        ir_1 = vis_shift + (ir - vis_shift) / SAMPLES  # official var_ir[0]
        vis_1 = ir + (vis_shift - ir) / SAMPLES  # official var_vis[0]
        # only the batch's first interpolated sample has a non-zero gradient (out[0, .]): mean over 10 = /10
        s_ir = self.saliency(ir_1, 1) / SAMPLES
        s_vis = self.saliency(vis_1, 0) / SAMPLES
        s_ir = s_ir + s_vis.mean((1, 2, 3), keepdim=True) - s_ir.mean((1, 2, 3), keepdim=True)
        return torch.sigmoid((s_vis - s_ir) / C_SOFTMAX), torch.sigmoid((s_ir - s_vis) / C_SOFTMAX)

    def network(self, ir: torch.Tensor, vis: torch.Tensor) -> torch.Tensor:
        w_vis, w_ir = self.fusion_weights(ir, vis)
        w_vis, w_ir = w_vis.detach(), w_ir.detach()  # the weights are a rule, not trained through
        return self.decode(w_vis * self.encode(vis) + w_ir * self.encode(ir)) / 2 + 0.5

    def scale_in(self, x255: torch.Tensor) -> torch.Tensor:
        return (x255 / 255 - 0.5) * 2

    def unit_out(self, raw: torch.Tensor) -> torch.Tensor:
        return raw

    def tf_targets_ed(self) -> dict[str, torch.Tensor]:
        t: dict[str, torch.Tensor] = {}
        for n, c in zip(("conv1_1", "conv1_4", "conv1_6", "conv1_8"), self.encoder):
            t[f"Encoder/encoder/{n}/kernel"], t[f"Encoder/encoder/{n}/bias"] = c.weight, c.bias
        for i, c in enumerate(self.decoder, 1):
            t[f"Decoder/decoder/conv1_{i}/kernel"], t[f"Decoder/decoder/conv1_{i}/bias"] = c.weight, c.bias
        return t

    def tf_targets_ec(self) -> dict[str, torch.Tensor]:
        t: dict[str, torch.Tensor] = {}
        for i, (n, c, bn) in enumerate(zip(("conv1_6", "conv1_8", "conv1_9", "conv1_11"), self.classifier, self.bn)):
            p = "Classification/classification"
            t[f"{p}/{n}/kernel"], t[f"{p}/{n}/bias"] = c.weight, c.bias
            for b, v in bn.named_buffers():
                t[f"{p}/b{i}/batch_normalization/{b}"] = v
        return t


def _pick(folder: str | os.PathLike, names: tuple[str, ...]) -> Path:
    """The first of ``names`` present in ``folder`` (else the first name, reported missing by the caller)."""
    for n in names:
        if (Path(folder) / n).is_file():
            return Path(folder) / n
    return Path(folder) / names[0]


@register_model("csf")
def csf(
    preset: str = "ivfuse", weights: str | os.PathLike | None = None, classifier: str | os.PathLike | None = None
) -> CSF:
    """CSF (Xu et al., IEEE TCI 2021; not task-driven; licence: none stated) from official TF weights
    (weights=ED, classifier=EC)."""
    ed, ec = weights, classifier
    if weights is not None and Path(weights).is_dir():  # a folder holding both files
        ed = _pick(weights, ("CSF_ED.npz", "ED.npz"))
        ec = classifier if classifier is not None else _pick(weights, ("CSF_EC.npz", "EC.npz"))
    path_ed = tf_weights_path("csf_ed", "csf", ed)
    path_ec = tf_weights_path("csf_ec", "csf", ec, opt="classifier")
    model = CSF(preset)
    assign_tf(model.tf_targets_ed(), load_tf_npz(path_ed, "csf"), path_ed, "CSF encoder/decoder", unused=("Variable",))
    assign_tf(
        model.tf_targets_ec(), load_tf_npz(path_ec, "csf"), path_ec, "CSF classifier", unused=("Variable", "Encoder/")
    )
    return model.eval()

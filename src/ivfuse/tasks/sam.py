"""Segment Anything with box prompts: MobileSAM (TinyViT ``vit_t`` image encoder) written in ivfuse.

The model (Kirillov et al., "Segment Anything", 2023; Zhang et al., "Faster Segment Anything: Towards Lightweight SAM
for Mobile Applications" — MobileSAM, 2023) has three parts, rebuilt here from the papers and the official
``ChaoningZhang/MobileSAM`` architecture (module names follow its checkpoint so ``mobile_sam.pt`` loads strictly):

* **Image encoder** (:class:`TinyViTEncoder`, MobileSAM's ``vit_t``): a conv stem (two stride-2 3×3 conv+BN, GELU
  between) to 1/4 resolution; stage 0 = two MBConv blocks (1×1 expand ×4, depthwise 3×3, 1×1, residual, GELU) at
  64 channels; stages 1-3 = windowed self-attention blocks (channels 128/160/320, heads 4/5/10, windows 7/14/7,
  depths 2/6/2) with LeViT-style learned relative attention biases, a depthwise 3×3 conv between attention and
  MLP; patch merging (1×1, depthwise 3×3 stride 2, 1×1) between stages — MobileSAM keeps stride 1 before the last
  stage so the output is 64×64 for a 1024×1024 input; neck 1×1 → LayerNorm2d → 3×3 → LayerNorm2d to 256 channels.
  The checkpoint also holds an unused ImageNet head (``norm_head``/``head``), kept so the load is strict.
* **Prompt encoder** (:class:`PromptEncoder`): random-Fourier positional encoding; a box is two corner tokens.
* **Mask decoder** (:class:`MaskDecoder`): a two-way transformer (depth 2, 8 heads, MLP 2048, attention to the image
  at half width), 4 mask tokens + 1 IoU token, ×4 transposed-conv upscaling, hypernetwork MLPs; masks at 256×256.

SAM ViT-B/L/H image encoders (``sam_vit_h_4b8939.pth`` and siblings) are taken from timm's
``samvit_{base,large,huge}_patch16`` — the prompt encoder and mask decoder are the same — so a user holding an
official SAM checkpoint can pass it as ``weights=`` (``ivfuse masks --sam-weights FILE``); the encoder kind is read
from the checkpoint's keys.

Pre-processing (SAM's ``ResizeLongestSide`` + ``Sam.preprocess``): RGB uint8 → long side resized to 1024 (bilinear,
antialiased), ``(x − mean) / std`` with ImageNet pixel statistics on 0-255, zero-padded to 1024×1024 at the
bottom/right. Boxes are scaled the same way; mask logits are upscaled to 1024, cropped to the resized image and
resized to the original size; a pixel is in the mask where the logit > 0. With ``multimask=True`` the decoder's
three masks are produced and the one with the highest predicted IoU is kept (SAM's advice for ambiguous prompts).

Speed: about 7.6 s per image embedding on 2 CPU cores (TinyViT at 1024²); the decoder is a few ms per box.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from ..weights import weights_path

__all__ = ["Sam", "SamPrediction", "TinyViTEncoder", "PromptEncoder", "MaskDecoder", "load_sam", "mask_box_stats"]

PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)
IMG_SIZE = 1024


# ---------------------------------------------------------------------------------------------------------------
# small blocks
# ---------------------------------------------------------------------------------------------------------------


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of a ``B×C×H×W`` map (eps 1e-6)."""

    def __init__(self, ch: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ch))
        self.bias = nn.Parameter(torch.zeros(ch))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x.permute(0, 2, 3, 1), x.shape[1:2], self.weight, self.bias, self.eps).permute(0, 3, 1, 2)


class ConvBN(nn.Sequential):
    """Bias-free conv followed by BatchNorm (children ``c`` and ``bn``, as in the checkpoint)."""

    def __init__(self, cin: int, cout: int, k: int = 1, stride: int = 1, groups: int = 1) -> None:
        super().__init__()
        self.add_module("c", nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False))
        self.add_module("bn", nn.BatchNorm2d(cout))


class _Stem(nn.Module):
    def __init__(self, cin: int, dim: int) -> None:
        super().__init__()
        self.seq = nn.Sequential(ConvBN(cin, dim // 2, 3, 2), nn.GELU(), ConvBN(dim // 2, dim, 3, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq(x)


class MBConv(nn.Module):
    """Inverted residual: 1×1 expand, depthwise 3×3, 1×1 project, residual, GELU after each and after the sum."""

    def __init__(self, dim: int, expand: float = 4.0) -> None:
        super().__init__()
        hid = int(dim * expand)
        self.conv1, self.conv2, self.conv3 = ConvBN(dim, hid), ConvBN(hid, hid, 3, groups=hid), ConvBN(hid, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.gelu(self.conv2(F.gelu(self.conv1(x))))
        return F.gelu(self.conv3(y) + x)


class PatchMerging(nn.Module):
    """1×1 → GELU → depthwise 3×3 (stride ``stride``) → GELU → 1×1; ``B×C×H×W`` in, ``B×C'×H'×W'`` out."""

    def __init__(self, dim: int, out: int, stride: int) -> None:
        super().__init__()
        self.conv1, self.conv2, self.conv3 = ConvBN(dim, out), ConvBN(out, out, 3, stride, groups=out), ConvBN(out, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv3(F.gelu(self.conv2(F.gelu(self.conv1(x)))))


class WindowAttention(nn.Module):
    """Multi-head attention inside a ``w×w`` window with a learned bias per head and |Δy|,|Δx| offset (LeViT)."""

    def __init__(self, dim: int, heads: int, window: int) -> None:
        super().__init__()
        self.heads, self.hd = heads, dim // heads
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        pts = list(itertools.product(range(window), range(window)))
        offsets: dict[tuple[int, int], int] = {}
        idx = [offsets.setdefault((abs(a[0] - b[0]), abs(a[1] - b[1])), len(offsets)) for a in pts for b in pts]
        self.attention_biases = nn.Parameter(torch.zeros(heads, len(offsets)))
        self.register_buffer("bias_idx", torch.tensor(idx).view(len(pts), len(pts)), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: N×L×C
        n, length, _ = x.shape
        q, k, v = self.qkv(self.norm(x)).view(n, length, self.heads, 3 * self.hd).permute(0, 2, 1, 3).split(self.hd, -1)
        bias = self.attention_biases[:, self.bias_idx]  # heads×L×L
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))
        return self.proj(out.transpose(1, 2).reshape(n, length, -1))


class TinyViTBlock(nn.Module):
    """Windowed attention (padded to whole windows) + residual, depthwise 3×3 conv, MLP + residual."""

    def __init__(self, dim: int, heads: int, window: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.window = window
        self.attn = WindowAttention(dim, heads, window)
        self.mlp = nn.Sequential()
        self.mlp.add_module("norm", nn.LayerNorm(dim))
        self.mlp.add_module("fc1", nn.Linear(dim, int(dim * mlp_ratio)))
        self.mlp.add_module("act", nn.GELU())
        self.mlp.add_module("fc2", nn.Linear(int(dim * mlp_ratio), dim))
        self.local_conv = ConvBN(dim, dim, 3, groups=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # B×C×H×W
        b, c, h, w = x.shape
        ws = self.window
        ph, pw = (-h) % ws, (-w) % ws
        t = F.pad(x.permute(0, 2, 3, 1), (0, 0, 0, pw, 0, ph))  # B×H'×W'×C
        nh, nw = (h + ph) // ws, (w + pw) // ws
        t = t.view(b, nh, ws, nw, ws, c).transpose(2, 3).reshape(b * nh * nw, ws * ws, c)
        t = self.attn(t).view(b, nh, nw, ws, ws, c).transpose(2, 3).reshape(b, nh * ws, nw * ws, c)[:, :h, :w]
        x = x + t.permute(0, 3, 1, 2)
        x = self.local_conv(x)
        t = x.flatten(2).transpose(1, 2)
        t = t + self.mlp(t)
        return t.transpose(1, 2).reshape(b, c, h, w)


class _Stage(nn.Module):
    def __init__(self, blocks: list[nn.Module], downsample: nn.Module | None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x)
        return x if self.downsample is None else self.downsample(x)


class TinyViTEncoder(nn.Module):
    """MobileSAM's ``vit_t`` image encoder: ``B×3×1024×1024`` (normalised) → ``B×256×64×64``.

    Args:
        dims, depths, heads, windows: per-stage widths, block counts, attention heads (stages 1-3) and windows.
    """

    img_size = IMG_SIZE

    def __init__(
        self, dims=(64, 128, 160, 320), depths=(2, 2, 6, 2), heads=(2, 4, 5, 10), windows=(7, 7, 14, 7)
    ) -> None:
        super().__init__()
        self.patch_embed = _Stem(3, dims[0])
        self.layers = nn.ModuleList()
        for i, (d, n) in enumerate(zip(dims, depths)):
            blocks = [MBConv(d) if i == 0 else TinyViTBlock(d, heads[i], windows[i]) for _ in range(n)]
            down = None
            if i < len(dims) - 1:  # MobileSAM: stride 1 into the last stage (64×64 output for 1024 input)
                down = PatchMerging(d, dims[i + 1], 1 if i + 1 == len(dims) - 1 else 2)
            self.layers.append(_Stage(blocks, down))
        self.norm_head = nn.LayerNorm(dims[-1])  # unused ImageNet head, present in the checkpoint
        self.head = nn.Linear(dims[-1], 1000)
        self.neck = nn.Sequential(
            nn.Conv2d(dims[-1], 256, 1, bias=False),
            LayerNorm2d(256),
            nn.Conv2d(256, 256, 3, padding=1, bias=False),
            LayerNorm2d(256),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        for layer in self.layers:
            x = layer(x)
        return self.neck(x)


class _TimmSamViT(nn.Module):
    """SAM ViT-B/L/H image encoder from timm (``samvit_*_patch16``), keys mapped from SAM's checkpoints."""

    img_size = IMG_SIZE

    def __init__(self, variant: str) -> None:
        super().__init__()
        import timm

        self.vit = timm.create_model(f"samvit_{variant}_patch16", pretrained=False, num_classes=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.vit.forward_features(x)

    @staticmethod
    def map_key(k: str) -> str:
        return "vit." + k.replace("mlp.lin", "mlp.fc")


# ---------------------------------------------------------------------------------------------------------------
# prompt encoder and mask decoder
# ---------------------------------------------------------------------------------------------------------------


class RandomFourierPE(nn.Module):
    """Positional encoding ``[sin, cos](2π (2p − 1) G)`` of points ``p`` in [0, 1]² with a fixed Gaussian ``G``."""

    def __init__(self, feats: int = 128) -> None:
        super().__init__()
        self.register_buffer("positional_encoding_gaussian_matrix", torch.randn(2, feats))

    def encode(self, p: torch.Tensor) -> torch.Tensor:
        p = (2 * p - 1) @ self.positional_encoding_gaussian_matrix * (2 * math.pi)
        return torch.cat([p.sin(), p.cos()], -1)

    def grid(self, h: int, w: int) -> torch.Tensor:
        """``C×h×w`` encoding of pixel centres of an ``h×w`` grid."""
        dev = self.positional_encoding_gaussian_matrix.device
        ys = (torch.arange(h, device=dev, dtype=torch.float32) + 0.5) / h
        xs = (torch.arange(w, device=dev, dtype=torch.float32) + 0.5) / w
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        return self.encode(torch.stack([xx, yy], -1)).permute(2, 0, 1)


class PromptEncoder(nn.Module):
    """Sparse (points/boxes) and dense (mask) prompt embeddings. Only box prompts are used by ivfuse.

    ``boxes``: ``N×4`` xyxy in the 1024-frame → sparse ``N×2×256`` (two corners), dense ``N×256×64×64``
    (the learned "no mask" embedding).
    """

    def __init__(self, dim: int = 256, grid: int = 64, image_size: int = IMG_SIZE, mask_ch: int = 16) -> None:
        super().__init__()
        self.grid_size, self.image_size = grid, image_size
        self.pe_layer = RandomFourierPE(dim // 2)
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, dim) for _ in range(4))  # neg, pos, corner 1, corner 2
        self.not_a_point_embed = nn.Embedding(1, dim)
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, mask_ch // 4, 2, 2),
            LayerNorm2d(mask_ch // 4),
            nn.GELU(),
            nn.Conv2d(mask_ch // 4, mask_ch, 2, 2),
            LayerNorm2d(mask_ch),
            nn.GELU(),
            nn.Conv2d(mask_ch, dim, 1),
        )
        self.no_mask_embed = nn.Embedding(1, dim)

    def dense_pe(self) -> torch.Tensor:
        return self.pe_layer.grid(self.grid_size, self.grid_size)[None]

    def forward(self, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        corners = (boxes.float() + 0.5).view(-1, 2, 2) / self.image_size
        sparse = self.pe_layer.encode(corners)
        sparse = sparse + torch.stack([self.point_embeddings[2].weight[0], self.point_embeddings[3].weight[0]])
        dense = self.no_mask_embed.weight.view(1, -1, 1, 1).expand(len(boxes), -1, self.grid_size, self.grid_size)
        return sparse, dense


class _Attention(nn.Module):
    """Attention with q/k/v projected to ``dim // down`` channels (SAM's decoder attention)."""

    def __init__(self, dim: int, heads: int, down: int = 1) -> None:
        super().__init__()
        inner = dim // down
        self.heads = heads
        self.q_proj, self.k_proj, self.v_proj = nn.Linear(dim, inner), nn.Linear(dim, inner), nn.Linear(dim, inner)
        self.out_proj = nn.Linear(inner, dim)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.view(b, n, self.heads, c // self.heads).transpose(1, 2)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        q, k, v = self._split(self.q_proj(q)), self._split(self.k_proj(k)), self._split(self.v_proj(v))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.out_proj(out.transpose(1, 2).flatten(2))


class _MLPBlock(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.lin1, self.lin2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin2(F.relu(self.lin1(x)))


class TwoWayBlock(nn.Module):
    """Token self-attention, token→image cross-attention, token MLP, image→token cross-attention (post-norm)."""

    def __init__(self, dim: int, heads: int, mlp: int, skip_first_pe: bool) -> None:
        super().__init__()
        self.skip_first_pe = skip_first_pe
        self.self_attn = _Attention(dim, heads)
        self.cross_attn_token_to_image = _Attention(dim, heads, 2)
        self.cross_attn_image_to_token = _Attention(dim, heads, 2)
        self.mlp = _MLPBlock(dim, mlp)
        self.norm1, self.norm2, self.norm3, self.norm4 = (nn.LayerNorm(dim) for _ in range(4))

    def forward(self, qr, keys, qpe, kpe):
        if self.skip_first_pe:
            qr = self.norm1(self.self_attn(qr, qr, qr))
        else:
            q = qr + qpe
            qr = self.norm1(qr + self.self_attn(q, q, qr))
        qr = self.norm2(qr + self.cross_attn_token_to_image(qr + qpe, keys + kpe, keys))
        qr = self.norm3(qr + self.mlp(qr))
        keys = self.norm4(keys + self.cross_attn_image_to_token(keys + kpe, qr + qpe, qr))
        return qr, keys


class TwoWayTransformer(nn.Module):
    def __init__(self, dim: int = 256, depth: int = 2, heads: int = 8, mlp: int = 2048) -> None:
        super().__init__()
        self.layers = nn.ModuleList(TwoWayBlock(dim, heads, mlp, i == 0) for i in range(depth))
        self.final_attn_token_to_image = _Attention(dim, heads, 2)
        self.norm_final_attn = nn.LayerNorm(dim)

    def forward(self, image: torch.Tensor, pe: torch.Tensor, tokens: torch.Tensor):
        keys, kpe = image.flatten(2).transpose(1, 2), pe.flatten(2).transpose(1, 2)
        qr = tokens
        for layer in self.layers:
            qr, keys = layer(qr, keys, tokens, kpe)
        qr = self.norm_final_attn(qr + self.final_attn_token_to_image(qr + tokens, keys + kpe, keys))
        return qr, keys


class _MLP(nn.Module):
    def __init__(self, cin: int, hidden: int, cout: int, n: int) -> None:
        super().__init__()
        dims = [cin] + [hidden] * (n - 1) + [cout]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else F.relu(layer(x))
        return x


class MaskDecoder(nn.Module):
    """Image embedding + prompt tokens → 4 mask logits at 4× the embedding size and 4 predicted IoUs.

    Mask 0 is the single-output mask; masks 1-3 are the multimask outputs.
    """

    def __init__(self, dim: int = 256, n_masks: int = 4) -> None:
        super().__init__()
        self.n_masks = n_masks
        self.transformer = TwoWayTransformer(dim)
        self.iou_token = nn.Embedding(1, dim)
        self.mask_tokens = nn.Embedding(n_masks, dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(dim, dim // 4, 2, 2),
            LayerNorm2d(dim // 4),
            nn.GELU(),
            nn.ConvTranspose2d(dim // 4, dim // 8, 2, 2),
            nn.GELU(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(_MLP(dim, dim, dim // 8, 3) for _ in range(n_masks))
        self.iou_prediction_head = _MLP(dim, 256, n_masks, 3)

    def forward(self, emb: torch.Tensor, pe: torch.Tensor, sparse: torch.Tensor, dense: torch.Tensor):
        n = sparse.shape[0]
        out_tok = torch.cat([self.iou_token.weight, self.mask_tokens.weight])[None].expand(n, -1, -1)
        tokens = torch.cat([out_tok, sparse], 1)
        src = emb.expand(n, -1, -1, -1) + dense
        b, c, h, w = src.shape
        hs, keys = self.transformer(src, pe.expand(n, -1, -1, -1), tokens)
        up = self.output_upscaling(keys.transpose(1, 2).reshape(b, c, h, w))
        hyper = torch.stack([mlp(hs[:, 1 + i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], 1)
        masks = (hyper @ up.flatten(2)).view(b, self.n_masks, *up.shape[-2:])
        return masks, self.iou_prediction_head(hs[:, 0])


# ---------------------------------------------------------------------------------------------------------------
# the model
# ---------------------------------------------------------------------------------------------------------------


class SamPrediction:
    """Masks for the boxes of one image: ``masks`` ``N×H×W`` bool, ``iou`` ``N`` predicted IoU, ``logits`` ``N×H×W``."""

    def __init__(self, masks: torch.Tensor, iou: torch.Tensor, logits: torch.Tensor) -> None:
        self.masks, self.iou, self.logits = masks, iou, logits

    def __len__(self) -> int:
        return int(self.iou.numel())


class Sam(nn.Module):
    """Image encoder + prompt encoder + mask decoder, with SAM's pre/post-processing (see module docstring).

    Use :meth:`embed` once per image and :meth:`predict_boxes` for its boxes, or :meth:`segment` for both.
    """

    def __init__(self, image_encoder: nn.Module) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = PromptEncoder()
        self.mask_decoder = MaskDecoder()
        self.register_buffer("pixel_mean", torch.tensor(PIXEL_MEAN).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(PIXEL_STD).view(-1, 1, 1), persistent=False)

    @staticmethod
    def resized_shape(h: int, w: int, long: int = IMG_SIZE) -> tuple[int, int]:
        s = long / max(h, w)
        return int(h * s + 0.5), int(w * s + 0.5)

    def preprocess(self, image: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """``C×H×W`` float in [0, 1] (1 or 3 channels) → ``1×3×1024×1024`` normalised input and its resized size."""
        if image.ndim != 3 or image.shape[0] not in (1, 3):
            raise InputError(f"SAM expects a 1- or 3-channel C×H×W image, got {tuple(image.shape)}")
        x = image.expand(3, -1, -1) if image.shape[0] == 1 else image
        x = (x.clamp(0, 1) * 255).round()  # SAM works on uint8 images
        rh, rw = self.resized_shape(*x.shape[-2:])
        x = F.interpolate(x[None].float(), (rh, rw), mode="bilinear", align_corners=False, antialias=True)
        x = x.round().clamp(0, 255)
        x = (x - self.pixel_mean) / self.pixel_std
        return F.pad(x, (0, IMG_SIZE - rw, 0, IMG_SIZE - rh)), (rh, rw)

    @torch.no_grad()
    def embed(self, image: torch.Tensor) -> dict:
        """Image embedding of a ``C×H×W`` image in [0, 1] (``{"emb", "size", "input_size"}``)."""
        x, rs = self.preprocess(image.to(self.pixel_mean.device))
        return {"emb": self.image_encoder(x), "size": tuple(image.shape[-2:]), "input_size": rs}

    @torch.no_grad()
    def predict_boxes(self, embedding: dict, boxes: torch.Tensor, multimask: bool = True) -> SamPrediction:
        """Masks for ``N×4`` pixel xyxy boxes of the embedded image; the best-IoU mask of three when ``multimask``."""
        h, w = embedding["size"]
        rh, rw = embedding["input_size"]
        boxes = torch.as_tensor(boxes, dtype=torch.float32, device=self.pixel_mean.device).reshape(-1, 4)
        if len(boxes) == 0:
            return SamPrediction(torch.zeros(0, h, w, dtype=torch.bool), torch.zeros(0), torch.zeros(0, h, w))
        scale = torch.tensor([rw / w, rh / h, rw / w, rh / h], device=boxes.device)
        sparse, dense = self.prompt_encoder(boxes * scale)
        low, iou = self.mask_decoder(embedding["emb"], self.prompt_encoder.dense_pe(), sparse, dense)
        low, iou = (low[:, 1:], iou[:, 1:]) if multimask else (low[:, :1], iou[:, :1])
        best = iou.argmax(1)
        ar = torch.arange(len(boxes), device=boxes.device)
        low, iou = low[ar, best][:, None], iou[ar, best]
        up = F.interpolate(low, (IMG_SIZE, IMG_SIZE), mode="bilinear", align_corners=False)[..., :rh, :rw]
        logits = F.interpolate(up, (h, w), mode="bilinear", align_corners=False)[:, 0].cpu()
        return SamPrediction(logits > 0, iou.cpu(), logits)

    def segment(self, image: torch.Tensor, boxes: torch.Tensor, multimask: bool = True) -> SamPrediction:
        return self.predict_boxes(self.embed(image), boxes, multimask)


def _encoder_for(sd: dict, path: Path) -> tuple[nn.Module, dict]:
    if "image_encoder.patch_embed.seq.0.c.weight" in sd:
        return TinyViTEncoder(), sd
    key = "image_encoder.patch_embed.proj.weight"
    if key in sd:
        variant = {768: "base", 1024: "large", 1280: "huge"}.get(sd[key].shape[0])
        if variant is None:
            raise InputError(f"{path}: SAM ViT image encoder of width {sd[key].shape[0]} is not ViT-B/L/H")
        enc = _TimmSamViT(variant)
        pre = "image_encoder."
        mapped = {(pre + _TimmSamViT.map_key(k[len(pre) :]) if k.startswith(pre) else k): v for k, v in sd.items()}
        return enc, mapped
    raise InputError(f"{path}: not a SAM/MobileSAM checkpoint (no image_encoder.patch_embed weights)")


def load_sam(weights: str | Path | None = None, device: str | torch.device = "cpu") -> Sam:
    """Build SAM from a checkpoint: MobileSAM (``mobile_sam.pt``, the default from the shared weights) or an
    official SAM ViT-B/L/H checkpoint; loaded strictly with ``torch.load(weights_only=True)``."""
    path = weights_path("mobile_sam", weights)
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is a user error
        why = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}" if str(e) else type(e).__name__
        raise InputError(f"{path}: cannot read SAM checkpoint ({why})") from None
    if isinstance(sd, dict) and "model" in sd and isinstance(sd["model"], dict):
        sd = sd["model"]
    if not isinstance(sd, dict):
        raise InputError(f"{path}: expected a state dict, got {type(sd).__name__}")
    enc, sd = _encoder_for(sd, path)
    model = Sam(enc)
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        why = str(e).splitlines()[1][:160] if len(str(e).splitlines()) > 1 else str(e)[:160]
        raise InputError(f"{path}: checkpoint does not match the SAM architecture ({why})") from None
    return model.eval().to(device)


def mask_box_stats(mask: np.ndarray | torch.Tensor, box) -> dict:
    """Area of a mask, and the fraction of it inside ``box`` (xyxy) and of the box it covers."""
    m = torch.as_tensor(mask).bool()
    x1, y1, x2, y2 = (int(round(float(v))) for v in box)
    inside = m[max(y1, 0) : max(y2, 0), max(x1, 0) : max(x2, 0)].sum().item()
    area = int(m.sum().item())
    box_area = max((x2 - x1) * (y2 - y1), 1)
    return {"area": area, "in_box": inside / max(area, 1), "box_cover": inside / box_area}

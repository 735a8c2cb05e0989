"""Semantic segmenters as fusion guides and judges: ESPNetv2 (EdgeNets, Cityscapes weights) and DeepLabV3+.

Both take RGB (or gray, replicated) float images in [0, 1], ``B×{1,3}×H×W``, normalise them with the
ImageNet mean/std internally, and return logits ``B×K×H×W`` at the input resolution, differentiable with
respect to the input (so a segmentation loss can drive a fusion network).

* :class:`ESPNetv2Seg` reproduces the EdgeNets ``ESPNetv2Segmentation`` module tree (Mehta et al., CVPR 2019)
  so the official ``espnetv2_s_2.0_city_1024x512.pth`` state dict loads with every key matched. Cityscapes
  checkpoints predict 20 classes: the 19 train ids and "background" (id 19). EdgeNets resizes the image to
  the training resolution (1024×512) before inference; :meth:`ESPNetv2Seg.predict` does the same.
* :class:`DeepLabV3Plus` (Chen et al., ECCV 2018): any timm backbone (``features_only``), ASPP from
  torchvision, a low-level skip at stride 4, output stride 16.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from ..registry import Registry

__all__ = [
    "ESPNetv2Seg",
    "DeepLabV3Plus",
    "CITYSCAPES_CLASSES",
    "CITYSCAPES_PALETTE",
    "segmentation_loss",
    "SEGMENTERS",
    "DEFAULT_SEGMENTER",
    "PRETRAINED",
    "create_segmenter",
    "list_segmenters",
]

CITYSCAPES_CLASSES = (
    "road",
    "sidewalk",
    "building",
    "wall",
    "fence",
    "pole",
    "traffic light",
    "traffic sign",
    "vegetation",
    "terrain",
    "sky",
    "person",
    "rider",
    "car",
    "truck",
    "bus",
    "train",
    "motorcycle",
    "bicycle",
    "background",
)
CITYSCAPES_PALETTE = (
    (128, 64, 128),
    (244, 35, 232),
    (70, 70, 70),
    (102, 102, 156),
    (190, 153, 153),
    (153, 153, 153),
    (250, 170, 30),
    (220, 220, 0),
    (107, 142, 35),
    (152, 251, 152),
    (70, 130, 180),
    (220, 20, 60),
    (255, 0, 0),
    (0, 0, 142),
    (0, 0, 70),
    (0, 60, 100),
    (0, 80, 100),
    (0, 0, 230),
    (119, 11, 32),
    (0, 0, 0),
)
_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)


def _normalise(x: torch.Tensor) -> torch.Tensor:
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise InputError(f"segmenter expects B×1×H×W or B×3×H×W images, got {tuple(x.shape)}")
    x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
    mean = torch.tensor(_MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(_STD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


def segmentation_loss(logits: torch.Tensor, masks: torch.Tensor, ignore_index: int = 255) -> torch.Tensor:
    """Pixel-wise cross-entropy on class-id masks (``B×H×W`` int64), logits resized to the mask size."""
    if logits.shape[-2:] != masks.shape[-2:]:
        logits = F.interpolate(logits, size=masks.shape[-2:], mode="bilinear", align_corners=False)
    return F.cross_entropy(logits, masks.long(), ignore_index=ignore_index)


# ----------------------------------------------------------------------------------------------- ESPNetv2
class _CBR(nn.Module):  # conv-bn-prelu with attribute names conv/bn/act (EdgeNets espnet_utils)
    def __init__(self, cin, cout, k, stride=1, groups=1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, bias=False, groups=groups)
        self.bn = nn.BatchNorm2d(cout)
        self.act = nn.PReLU(cout)

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class _CB(nn.Module):
    def __init__(self, cin, cout, k, stride=1, groups=1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, bias=False, groups=groups)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        return self.bn(self.conv(x))


class _BR(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.bn = nn.BatchNorm2d(c)
        self.act = nn.PReLU(c)

    def forward(self, x):
        return self.act(self.bn(x))


class _DConv(nn.Module):
    def __init__(self, c, stride, d):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, stride, d, dilation=d, groups=c, bias=False)

    def forward(self, x):
        return self.conv(x)


class _EESP(nn.Module):
    """Extremely efficient spatial pyramid unit: group 1×1 reduce, k dilated depth-wise branches with
    hierarchical feature fusion, group 1×1 expand, residual."""

    def __init__(self, cin, cout, stride=1, k=4, r_lim=7, avg_down=False):
        super().__init__()
        n = cout // k
        if n * k != cout:
            raise ValueError("EESP: output channels must be divisible by the branch count")
        self.stride, self.avg_down = stride, avg_down
        self.proj_1x1 = _CBR(cin, n, 1, groups=k)
        ksizes = sorted(3 + 2 * i if 3 + 2 * i <= r_lim else 3 for i in range(k))
        self.spp_dw = nn.ModuleList(_DConv(n, stride, (ks - 1) // 2) for ks in ksizes)
        self.conv_1x1_exp = _CB(cout, cout, 1, groups=k)
        self.br_after_cat = _BR(cout)
        self.module_act = nn.PReLU(cout)

    def forward(self, x):
        y = self.proj_1x1(x)
        outs = [self.spp_dw[0](y)]
        for conv in self.spp_dw[1:]:
            outs.append(conv(y) + outs[-1])
        e = self.conv_1x1_exp(self.br_after_cat(torch.cat(outs, 1)))
        if self.stride == 2 and self.avg_down:
            return e
        if e.shape == x.shape:
            e = e + x
        return self.module_act(e)


class _DownSampler(nn.Module):
    def __init__(self, cin, cout, k=4, r_lim=9, reinf=True):
        super().__init__()
        self.eesp = _EESP(cin, cout - cin, stride=2, k=k, r_lim=r_lim, avg_down=True)
        self.avg = nn.AvgPool2d(3, 2, 1)
        if reinf:
            self.inp_reinf = nn.Sequential(_CBR(3, 3, 3), _CB(3, cout, 1))
        self.act = nn.PReLU(cout)

    def forward(self, x, img=None):
        a = self.avg(x)
        out = torch.cat([a, self.eesp(x)], 1)
        if img is not None:
            while img.shape[2] != a.shape[2]:
                img = F.avg_pool2d(img, 3, 2, 1)
            out = out + self.inp_reinf(img)
        return self.act(out)


class _EESPNet(nn.Module):
    """ESPNetv2 encoder (levels 1-4 of the ImageNet model; level 5 is unused by segmentation)."""

    CHANNELS = {
        0.5: (16, 32, 64, 128),
        1.0: (32, 64, 128, 256),
        1.25: (32, 80, 160, 320),
        1.5: (32, 96, 192, 384),
        2.0: (32, 128, 256, 512),
    }

    def __init__(self, s: float = 2.0):
        super().__init__()
        if s not in self.CHANNELS:
            raise InputError(f"ESPNetv2: unsupported scale s={s} (choose from {sorted(self.CHANNELS)})")
        c = self.CHANNELS[s]
        reps, r_lim, k = (0, 3, 7, 3), (13, 11, 9, 7, 5), 4
        self.config = c
        self.level1 = _CBR(3, c[0], 3, 2)
        self.level2_0 = _DownSampler(c[0], c[1], k, r_lim[0])
        self.level3_0 = _DownSampler(c[1], c[2], k, r_lim[1])
        self.level3 = nn.ModuleList(_EESP(c[2], c[2], 1, k, r_lim[2]) for _ in range(reps[1]))
        self.level4_0 = _DownSampler(c[2], c[3], k, r_lim[2])
        self.level4 = nn.ModuleList(_EESP(c[3], c[3], 1, k, r_lim[3]) for _ in range(reps[2]))


class _Shuffle(nn.Module):
    def __init__(self, groups):
        super().__init__()
        self.groups = groups

    def forward(self, x):
        b, c, h, w = x.shape
        return x.view(b, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class _CBRSeq(nn.Module):  # conv-bn-prelu stored as Sequential 'cbr' (EdgeNets cnn_utils)
    def __init__(self, cin, cout, k, groups=1):
        super().__init__()
        self.cbr = nn.Sequential(
            nn.Conv2d(cin, cout, k, 1, (k - 1) // 2, bias=False, groups=groups), nn.BatchNorm2d(cout), nn.PReLU(cout)
        )

    def forward(self, x):
        return self.cbr(x)


class _BRSeq(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.br = nn.Sequential(nn.BatchNorm2d(c), nn.PReLU(c))

    def forward(self, x):
        return self.br(x)


class _EfficientPyrPool(nn.Module):
    def __init__(self, cin, proj, cout, scales=(2.0, 1.5, 1.0, 0.5, 0.1), last_br=True):
        super().__init__()
        self.scales = sorted(scales, reverse=True)
        self.projection_layer = _CBRSeq(cin, proj, 1)
        self.stages = nn.ModuleList(nn.Conv2d(proj, proj, 3, 1, 1, bias=False, groups=proj) for _ in self.scales)
        n = len(self.scales)
        self.merge_layer = nn.Sequential(
            _BRSeq(proj * n),
            _Shuffle(n),
            _CBRSeq(proj * n, proj, 3, groups=proj),
            nn.Conv2d(proj, cout, 1, bias=not last_br),
        )
        if last_br:
            self.br = _BRSeq(cout)
        self.last_br = last_br

    def forward(self, x):
        x = self.projection_layer(x)
        h, w = x.shape[2:]
        hs = []
        for s, stage in zip(self.scales, self.stages):
            hh, ww = max(int(math.ceil(h * s)), 5), max(int(math.ceil(w * s)), 5)
            if s < 1.0:
                y = F.interpolate(
                    stage(F.adaptive_avg_pool2d(x, (hh, ww))), (h, w), mode="bilinear", align_corners=True
                )
            elif s > 1.0:
                y = F.adaptive_avg_pool2d(
                    stage(F.interpolate(x, (hh, ww), mode="bilinear", align_corners=True)), (h, w)
                )
            else:
                y = stage(x)
            hs.append(y)
        out = self.merge_layer(torch.cat(hs, 1))
        return self.br(out) if self.last_br else out


class _EfficientPWConv(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.wt_layer = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(cin, cout, 1, bias=False), nn.Sigmoid())
        self.expansion_layer = _CBRSeq(cin, cout, 3, groups=math.gcd(cin, cout))

    def forward(self, x):
        return self.expansion_layer(x) * self.wt_layer(x)


class ESPNetv2Seg(nn.Module):
    """ESPNetv2 semantic segmentation (EdgeNets layout). ``forward`` returns logits at the input size.

    Args:
        num_classes: output classes (20 for the Cityscapes checkpoint: 19 train ids + background).
        s: width scale of the encoder (0.5, 1.0, 1.25, 1.5, 2.0).
        dataset: decoder width preset of EdgeNets ("city"/"pascal": 16, "coco": 32).
        class_names: names of the output classes.
    """

    def __init__(
        self,
        num_classes: int = 20,
        s: float = 2.0,
        dataset: str = "city",
        class_names: Sequence[str] | None = None,
        train_size: tuple[int, int] = (512, 1024),
    ) -> None:
        super().__init__()
        self.base_net = _EESPNet(s)
        c = self.base_net.config
        base = {"pascal": 16, "city": 16, "coco": 32}[dataset]
        dec = [4 * base, 3 * base, 2 * base, num_classes]
        proj = min(num_classes // 2, base)
        self.bu_dec_l1 = _EfficientPyrPool(c[3], proj, dec[0])
        self.bu_dec_l2 = _EfficientPyrPool(dec[0], proj, dec[1])
        self.bu_dec_l3 = _EfficientPyrPool(dec[1], proj, dec[2])
        self.bu_dec_l4 = _EfficientPyrPool(dec[2], proj, dec[3], last_br=False)
        self.merge_enc_dec_l2 = _EfficientPWConv(c[2], dec[0])
        self.merge_enc_dec_l3 = _EfficientPWConv(c[1], dec[1])
        self.merge_enc_dec_l4 = _EfficientPWConv(c[0], dec[2])
        self.bu_br_l2 = nn.Sequential(nn.BatchNorm2d(dec[0]), nn.PReLU(dec[0]))
        self.bu_br_l3 = nn.Sequential(nn.BatchNorm2d(dec[1]), nn.PReLU(dec[1]))
        self.bu_br_l4 = nn.Sequential(nn.BatchNorm2d(dec[2]), nn.PReLU(dec[2]))
        self.num_classes = num_classes
        self.class_names = (
            tuple(class_names)
            if class_names
            else (CITYSCAPES_CLASSES if num_classes == 20 else tuple(f"class{i}" for i in range(num_classes)))
        )
        self.train_size = train_size
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    @staticmethod
    def _up(x):
        return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        x = _normalise(x)
        b = self.base_net
        l1 = b.level1(x)
        l2 = b.level2_0(l1, x)
        l3 = b.level3_0(l2, x)
        for layer in b.level3:
            l3 = layer(l3)
        l4 = b.level4_0(l3, x)
        for layer in b.level4:
            l4 = layer(l4)
        y = self._up(self.bu_dec_l1(l4))
        y = self.bu_dec_l2(self.bu_br_l2(self.merge_enc_dec_l2(l3) + y))
        y = self.bu_dec_l3(self.bu_br_l3(self.merge_enc_dec_l3(l2) + self._up(y)))
        y = self.bu_dec_l4(self.bu_br_l4(self.merge_enc_dec_l4(l1) + self._up(y)))
        return F.interpolate(y, size=size, mode="bilinear", align_corners=True)

    @torch.inference_mode()
    def predict(self, x: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        """Class-id maps ``B×H×W`` at the input size; the image is first resized to ``size`` (default: the
        training resolution, as EdgeNets' test script does)."""
        h, w = x.shape[-2:]
        size = size or self.train_size
        xi = F.interpolate(x, size=size, mode="bilinear", align_corners=False) if tuple(size) != (h, w) else x
        logits = self(xi)
        return F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False).argmax(1)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, num_classes: int | None = None, s: float = 2.0) -> ESPNetv2Seg:
        p = Path(path)
        if not p.is_file():
            raise InputError(f"{p}: ESPNetv2 weights file not found")
        sd = torch.load(p, map_location="cpu", weights_only=True)
        sd = {k.removeprefix("module."): v for k, v in sd.items()}
        nc = num_classes or sd["bu_dec_l4.merge_layer.3.weight"].shape[0]
        model = cls(nc, s)
        res = model.load_state_dict(sd, strict=False)
        if res.missing_keys or res.unexpected_keys:
            raise InputError(
                f"{p}: keys do not match ESPNetv2 (missing {res.missing_keys[:3]}, "
                f"unexpected {res.unexpected_keys[:3]})"
            )
        return model.eval()


# ----------------------------------------------------------------------------------------------- DeepLabV3+
class DeepLabV3Plus(nn.Module):
    """DeepLabV3+ with a timm backbone (``features_only``), torchvision's ASPP and a stride-4 decoder.

    Args:
        num_classes: output classes.
        backbone: any timm model name with feature extraction (``resnet50`` as in the paper's ResNet variant,
            ``resnet18``, ``mobilenetv3_large_100``, ...).
        backbone_weights: optional local file with timm backbone weights (state dict).
        atrous_rates: ASPP rates (output stride 16: 6, 12, 18).
    """

    def __init__(
        self,
        num_classes: int,
        backbone: str = "resnet50",
        backbone_weights: str | None = None,
        atrous_rates: Sequence[int] = (6, 12, 18),
        class_names: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        import timm
        from torchvision.models.segmentation.deeplabv3 import ASPP

        self.backbone = timm.create_model(backbone, pretrained=False, features_only=True, out_indices=(1, 4))
        if backbone_weights:
            sd = torch.load(backbone_weights, map_location="cpu", weights_only=True)
            missing = self.backbone.load_state_dict(sd, strict=False).missing_keys
            if missing:
                raise InputError(f"{backbone_weights}: backbone weights miss {len(missing)} keys (e.g. {missing[0]})")
        low_c, high_c = self.backbone.feature_info.channels()
        self.aspp = ASPP(high_c, list(atrous_rates), 256)
        self.low_proj = nn.Sequential(nn.Conv2d(low_c, 48, 1, bias=False), nn.BatchNorm2d(48), nn.ReLU(inplace=True))
        self.decoder = nn.Sequential(
            nn.Conv2d(256 + 48, 256, 3, padding=1, bias=False),
            nn.BatchNorm2d(256),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, 3, padding=1, bias=False),
            nn.BatchNorm2d(256),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, num_classes, 1),
        )
        self.num_classes = num_classes
        self.class_names = tuple(class_names) if class_names else tuple(f"class{i}" for i in range(num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        low, high = self.backbone(_normalise(x))
        y = F.interpolate(self.aspp(high), size=low.shape[-2:], mode="bilinear", align_corners=False)
        y = self.decoder(torch.cat([y, self.low_proj(low)], 1))
        return F.interpolate(y, size=size, mode="bilinear", align_corners=False)

    @torch.inference_mode()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self(x).argmax(1)


# ----------------------------------------------------------------------------------------------- registry
SEGMENTERS: Registry = Registry("segmenter")
#: segmenter used when none is named (``ivfuse segment``, ``downstream segment``)
DEFAULT_SEGMENTER = "espnetv2"
#: segmenter name -> its default weights (:func:`ivfuse.weights.weights_path` name) where it has some
PRETRAINED = {"espnetv2": "espnetv2_city"}


@SEGMENTERS.register("espnetv2")
def _espnetv2(
    weights: str | os.PathLike | None = None,
    num_classes: int | None = None,
    class_names: Sequence[str] | None = None,
    s: float = 2.0,
) -> ESPNetv2Seg:
    """ESPNetv2 (EdgeNets); default weights: the Cityscapes checkpoint (shared weights folder or EdgeNets download).
    ``weights=None`` with ``num_classes`` builds an untrained network."""
    if weights is None and num_classes:
        return ESPNetv2Seg(num_classes, s=s, class_names=class_names)
    from ..weights import weights_path

    path = weights_path(PRETRAINED["espnetv2"], None if weights in (None, "default") else weights)
    return ESPNetv2Seg.from_checkpoint(path, s=s)


@SEGMENTERS.register("deeplabv3plus")
def _deeplabv3plus(
    weights: str | os.PathLike | None = None,
    num_classes: int | None = None,
    class_names: Sequence[str] | None = None,
    backbone: str = "resnet50",
) -> DeepLabV3Plus:
    """DeepLabV3+ with a timm backbone; ``weights`` = a state dict saved from this class (no public default)."""
    k = num_classes or (len(class_names) if class_names else None)
    if not k:
        raise InputError("deeplabv3plus needs the number of classes (--num-classes) or their names (--names)")
    m = DeepLabV3Plus(k, backbone, class_names=class_names)
    if weights not in (None, "default"):
        p = Path(weights)
        if not p.is_file():
            raise InputError(f"{p}: DeepLabV3+ weights file not found")
        try:
            res = m.load_state_dict(torch.load(p, map_location="cpu", weights_only=True), strict=False)
        except RuntimeError as e:
            raise InputError(
                f"{p}: does not fit deeplabv3plus/{backbone} with {k} classes ({str(e).splitlines()[1].strip()})"
            ) from None
        if res.missing_keys:
            raise InputError(f"{p}: {len(res.missing_keys)} keys missing (e.g. {res.missing_keys[0]})")
    return m


def create_segmenter(name: str, **kwargs) -> nn.Module:
    """Create a registered segmenter (``espnetv2``, ``deeplabv3plus``); keyword options as the factories take them
    (``weights``, ``num_classes``, ``class_names``, ``backbone``). Returned in eval mode."""
    factory = SEGMENTERS.get(name)
    try:
        return factory(**kwargs).eval()
    except TypeError as e:
        raise InputError(f"segmenter '{name}': {e}") from None


def list_segmenters() -> list[str]:
    return SEGMENTERS.names()

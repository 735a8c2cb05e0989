"""OCCO training (Li et al., arXiv 2503.18635) as a registered recipe of :func:`ivfuse.engine.train`.

One stage ``train``: FIFN (:class:`~ivfuse.models.occo.OCCONet`) with ``L = L_pixel + ω6·L_CCL``
(:class:`~ivfuse.losses.occo.OCCOLoss`, the paper's ω1..ω6 = 0.5, 0.5, 0.5, 10, 1, 10), Adam (paper: 1e-4), on
random crops that contain objects (:class:`ObjectCrop`).

**Object masks are read offline.** Before training, :meth:`BatchSource.prepare` attaches to every training pair an
extra ``objects`` = ``2×H×W`` uint8 (``m_ir``, ``m_vis``), from, in this order:

* ``masks.dir`` — a folder written by ``ivfuse masks`` (``<stem>.png`` class maps; a pair without one is an
  error), or
* ``masks.cache`` — one safetensors file per pair; missing ones are computed once with
  :class:`~ivfuse.masks.MaskGenerator` (detector boxes → MobileSAM, ``masks.detector``/``conf``/``sam_weights``)
  and written there, so a second run (or a resumed one) reads them. ``masks.cache: null`` means
  ``$IVFUSE_CACHE/occo_masks/<detector>_conf<conf>`` (default ``~/.cache/ivfuse``).

The network output used in the loss is the raw 1×1 convolution (no per-batch min-max normalisation as in the
official code; inference clamps to [0, 1]).

**One process only with the contrastive loss.** L_CCL is not a mean of per-sample terms: a sample's negatives are
the other modality of *other samples of the batch* (shifts k·B/4) and the mean runs over the samples whose region is
not empty. Under ``torchrun`` each process would see B/W samples, so the objective itself would change with the
number of processes (not only the summation order, as for batch-mean losses), so :meth:`OCCORecipe.check` refuses
``WORLD_SIZE`` > 1 unless ``loss.contrastive=false`` (the pixel loss is a batch mean and trains data-parallel).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from kornia.color import rgb_to_ycbcr

from ..errors import InputError
from ..losses.occo import OMEGAS, OCCOLoss
from ..models.occo import OCCONet
from .checkpoint import export_safetensors
from .config import Limit
from .data import BatchSource, RandomFlip, load_samples
from .distributed import refuse_distributed
from .recipe import Recipe, register_recipe
from .step import OptimStep
from .trainer import Stage

__all__ = ["OCCORecipe", "ObjectCrop", "mask_cache_dir", "masks_from_dir"]


class ObjectCrop:
    """Random ``h×w`` crop (all spatial tensors of a sample) that contains object pixels when the sample has any.

    An object pixel is drawn uniformly from the union of the masks in ``sample[key]`` (``K×H×W``), then the crop
    position uniformly among the windows that contain it (clamped to the image). Without objects (or
    ``p_object`` not drawn) the position is uniform. Images smaller than the crop are zero-padded bottom/right.
    """

    def __init__(self, size, key: str = "objects", p_object: float = 1.0) -> None:
        self.h, self.w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        self.key, self.p_object = key, float(p_object)

    def __call__(self, s: dict, g: torch.Generator) -> dict:
        H, W = s["ir"].shape[-2:]
        keys = [k for k, v in s.items() if torch.is_tensor(v) and v.ndim >= 2 and tuple(v.shape[-2:]) == (H, W)]
        out = dict(s)
        if H < self.h or W < self.w:
            ph, pw = max(0, self.h - H), max(0, self.w - W)
            for k in keys:
                out[k] = torch.nn.functional.pad(s[k], (0, pw, 0, ph))
            H, W = H + ph, W + pw
        use_obj = float(torch.rand((), generator=g)) < self.p_object
        obj = out.get(self.key)
        idx = torch.nonzero(obj.reshape(-1, H, W).any(0).flatten()).flatten() if (use_obj and obj is not None) else None
        if idx is not None and len(idx):
            p = int(idx[int(torch.randint(0, len(idx), (1,), generator=g))])
            y, x = divmod(p, W)
            t_lo, t_hi = max(0, y - self.h + 1), min(y, H - self.h)
            l_lo, l_hi = max(0, x - self.w + 1), min(x, W - self.w)
            top = int(torch.randint(t_lo, t_hi + 1, (1,), generator=g))
            left = int(torch.randint(l_lo, l_hi + 1, (1,), generator=g))
        else:
            top = int(torch.randint(0, H - self.h + 1, (1,), generator=g))
            left = int(torch.randint(0, W - self.w + 1, (1,), generator=g))
        for k in keys:
            out[k] = out[k][..., top : top + self.h, left : left + self.w]
        out["boxes"] = None  # OCCO trains without boxes (these would not follow the crop)
        return out


def mask_cache_dir(m: dict) -> Path:
    """The safetensors mask cache of a config's ``masks`` section."""
    if m.get("cache"):
        return Path(m["cache"]).expanduser()
    root = Path(os.environ.get("IVFUSE_CACHE", "~/.cache/ivfuse")).expanduser()
    return root / "occo_masks" / f"{m['detector']}_conf{m['conf']}"


def masks_from_dir(folder: str | Path, sample: dict) -> torch.Tensor:
    """``2×H×W`` uint8 (``m_ir``, ``m_vis``) of ``sample`` from an ``ivfuse masks`` folder (``<stem>.png``)."""
    import numpy as np
    from PIL import Image

    from ..regions import object_masks_from_class_map

    stem = str(sample["name"]).split("/")[-1]
    f = Path(folder) / f"{stem}.png"
    if not f.is_file():
        raise InputError(
            f"{f}: no mask for training pair '{sample['name']}' (run `ivfuse masks` on the training pairs)"
        )
    cm = torch.from_numpy(np.asarray(Image.open(f)).copy())
    if cm.ndim != 2 or int(cm.max()) > 3:
        raise InputError(f"{f}: not an ivfuse class map (2-D, values 0..3)")
    m_ir, m_vis = object_masks_from_class_map(cm)
    m = torch.stack([m_ir, m_vis]).to(torch.uint8)
    hw = tuple(sample["ir"].shape[-2:])
    if tuple(m.shape[-2:]) != hw:
        m = torch.nn.functional.interpolate(m[None].float(), size=hw, mode="nearest")[0].to(torch.uint8)
    return m


@register_recipe("occo")
class OCCORecipe(Recipe):
    """FIFN, OCCOLoss, Adam and the object-crop batch source from a config dict (configs/occo.yaml)."""

    limits = {
        "crop": Limit(min=32, items=("height", "width"), why="VGG relu5"),
        "epochs": Limit(min=0),
        "lr": Limit(above=0),
    }

    @classmethod
    def check(cls, cfg: dict) -> list[str]:
        if cfg["loss"]["vgg"] not in ("vgg16", "vgg19"):
            raise InputError(f"config key 'loss.vgg' must be vgg16 or vgg19, got {cfg['loss']['vgg']!r}")
        if cfg["loss"]["vgg"] == "vgg19" and cfg["loss"]["contrastive"] and not cfg["loss"]["vgg_weights"]:
            raise InputError("loss.vgg=vgg19 needs loss.vgg_weights=FILE (torchvision VGG19 weights; none are shipped)")
        md = cfg["masks"].get("dir")
        if md and not Path(md).is_dir():
            raise InputError(f"{md}: config key 'masks.dir' is not a folder")
        if cfg["loss"]["contrastive"]:
            refuse_distributed(
                "occo",
                "its contrastive loss takes each sample's negatives from the other samples of "
                "the batch, which torchrun would split over the processes (the loss would change with "
                "their number); train with one process, or with loss.contrastive=false",
            )
        return []

    def build(self) -> None:
        c, dev = self.cfg, self.device
        self.net = OCCONet(c["model"]["channels"], c["model"]["heads"]).to(dev)
        lc = c["loss"]
        omega = {k: float(lc[k]) for k in OMEGAS}
        self.loss = OCCOLoss(lc["vgg"], lc["vgg_weights"], omega, contrastive=lc["contrastive"]).to(dev)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=c["lr"])
        self.step = OptimStep(self.opt, clip=c["clip"] or None)
        self.modules, self.optimizers = {"F": self.net}, {"F": self.opt}
        samples = load_samples(c["data"])
        n = c["max_pairs"]
        if n and n < len(samples):  # evenly spaced subset (keeps MSRS's day/night mix)
            samples = [samples[round(i * len(samples) / n)] for i in range(n)]
        self.samples = samples
        tf = [ObjectCrop(c["crop"], p_object=c["object_crop_p"])] + ([RandomFlip()] if c["flip"] else [])
        self.batches = BatchSource(samples, c["batch"], tf, c["max_batches"], c["seed"])
        self.prepare_masks()

    def prepare_masks(self) -> None:
        m = self.cfg["masks"]
        if m.get("dir"):
            self.batches.prepare("objects", lambda s: masks_from_dir(m["dir"], s), progress=self.progress)
            return
        gen = {}

        def compute(s: dict) -> torch.Tensor:
            if "g" not in gen:
                from ..tasks.pseudo import MaskGenerator

                gen["g"] = MaskGenerator(m["detector"], None, m["sam_weights"], m["conf"], device=str(self.device))
            r = gen["g"](s["ir"], s["vis"])
            return torch.stack([r["m_ir"], r["m_vis"]]).to(torch.uint8)

        self.batches.prepare("objects", compute, mask_cache_dir(m), progress=self.progress)

    @staticmethod
    def luma(vis: torch.Tensor) -> torch.Tensor:
        """BT.601 Y of the visible batch (gray visible passes through), as FusionModel.forward fuses it."""
        return vis if vis.shape[1] == 1 else rgb_to_ycbcr(vis)[:, :1]

    def train_step(self, batch: dict, ctx) -> dict:
        ir, vis, obj = self.on_device(batch, "ir", "vis", "objects")
        obj = obj.float()
        y = self.luma(vis)
        out = self.net.fuse_luma(ir, y)  # raw output: no min-max normalisation
        loss, parts = self.loss(out, ir, y, obj[:, :1], obj[:, 1:2])
        self.step(loss)
        return parts

    def stages(self) -> list[Stage]:
        return [Stage("train", self.cfg["epochs"], self.batches, self.train_step)]

    def export(self, path: str | Path) -> Path:
        c = self.cfg
        config = {"channels": list(c["model"]["channels"]), "heads": list(c["model"]["heads"])}
        meta = self.export_metadata(
            config,
            max_pairs=c["max_pairs"],
            masks=c["masks"],
            crop=c["crop"],
            batch=c["batch"],
            lr=c["lr"],
            max_batches=c["max_batches"],
            loss=c["loss"],
        )
        return export_safetensors(path, self.net.state_dict(), meta)

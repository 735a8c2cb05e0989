"""Object masks for OCCO (``ivfuse masks``): detector boxes → SAM masks per modality → region partition.

OCCO (Li et al., arXiv 2503.18635, §3.2) prompts Grounding-DINO with "The scene captures a group of pedestrians or
cars." and feeds its boxes to SAM (ViT-H), on the visible and on the infrared image separately. Neither model's
weights can be had here, so ivfuse prompts with boxes from a COCO detector (``yolov5n`` by default, classes
person, bicycle, car, motorcycle, bus, truck) run on each modality, and segments with MobileSAM
(:mod:`ivfuse.tasks.sam`; :class:`~ivfuse.tasks.pseudo.MaskGenerator`); an official SAM ViT-B/L/H checkpoint can
replace MobileSAM (``--sam-weights FILE``).
Grounding-DINO is not available in ivfuse (no weights or package reachable here): users who have its boxes can
turn them into masks with :meth:`MaskGenerator.masks_for_boxes`.

Per pair, with ``m_vis``/``m_ir`` the union of the object masks found in each modality:

* shared ``s = m_vis · m_ir``, unique ``u_vis = m_vis − s``, ``u_ir = m_ir − s``, background
  ``bg = 1 − s − u_vis − u_ir`` (:func:`ivfuse.regions.partition`; the four are disjoint and sum to 1);
* ``MASKS/<stem>.png`` — 8-bit class map: **0 background, 1 shared, 2 IR-unique, 3 visible-unique**
  (:data:`~ivfuse.regions.CLASS_NAMES`; :func:`~ivfuse.regions.object_masks_from_class_map` gives ``m_ir``, ``m_vis``
  back);
* ``MASKS/<stem>.json`` — the instances (modality, class, score, box xyxy in pixels, mask area, SAM's predicted
  IoU), region areas, the settings used;
* ``MASKS/preview/<stem>.png`` — visible with its boxes | infrared with its boxes | the partition in colour over
  the gray image (shared yellow, IR-unique red, visible-unique cyan), for people to look at.

Outputs are written atomically; a pair whose three files exist is skipped unless ``overwrite``.

**Segmentation pseudo-masks** (``ivfuse masks --kind seg``, :func:`generate_seg_masks`): for datasets without
segmentation labels, TSJNet's pseudo-labeller (:func:`ivfuse.tasks.pseudo.pseudo_mask`: the Cityscapes ESPNetv2 on
the visible image by day and on ½(IR + visible) by night, classes merged to MSRS' nine) written as
``MASKS/<stem>.png`` class-id maps that ``ivfuse bench --seg-masks MASKS`` and ``ivfuse downstream segment --masks``
read.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .regions import CLASS_NAMES, class_map, object_masks_from_class_map, partition  # re-exported (public here before)
from .tasks.detectors import DEFAULT_DETECTOR, DETECT_CONF
from .tasks.pseudo import DEFAULT_CLASSES, MaskGenerator  # re-exported (public here before)

__all__ = [
    "CLASS_NAMES",
    "DEFAULT_CLASSES",
    "partition",
    "class_map",
    "object_masks_from_class_map",
    "MaskGenerator",
    "generate_masks",
    "generate_seg_masks",
]

_COLOURS = {1: (255, 220, 0), 2: (255, 40, 40), 3: (0, 220, 255)}


def _png_bytes(arr: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def preview(ir: torch.Tensor, vis: torch.Tensor, result: dict) -> torch.Tensor:
    """``3×H×3W`` uint8: visible + its boxes | IR + its boxes | coloured partition over the gray image."""
    from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

    def u8(x):
        return (x.clamp(0, 1).expand(3, -1, -1) * 255).round().to(torch.uint8)

    def boxes(img, mod, colour):
        inst = [i for i in result["instances"] if i["modality"] == mod]
        if not inst:
            return img
        b = torch.tensor([i["box"] for i in inst], dtype=torch.float32)
        return draw_bounding_boxes(img, b, [f"{i['class']} {i['score']:.2f}" for i in inst], colors=colour, width=2)

    gray = u8((ir + (vis.mean(0, keepdim=True) if vis.shape[0] == 3 else vis)) / 2)
    cm = result["class_map"]
    present = [c for c in (1, 2, 3) if bool((cm == c).any())]
    part = gray
    if present:
        stack = torch.stack([cm == c for c in present])
        part = draw_segmentation_masks(gray, stack, alpha=0.6, colors=[_COLOURS[c] for c in present])
    return torch.cat([boxes(u8(vis), "vis", "cyan"), boxes(u8(ir), "ir", "red"), part], 2)


def _outputs(out: Path, stem: str) -> tuple[Path, Path, Path]:
    return out / f"{stem}.png", out / f"{stem}.json", out / "preview" / f"{stem}.png"


def generate_masks(
    ir_dir: str | Path,
    vis_dir: str | Path,
    out_dir: str | Path,
    *,
    detector: str = DEFAULT_DETECTOR,
    detector_weights: str | None = None,
    sam_weights: str | None = None,
    conf: float = DETECT_CONF,
    classes: Sequence[str] | None = DEFAULT_CLASSES,
    overwrite: bool = False,
    device: str = "cpu",
    progress: bool = False,
    ir_norm: str = "minmax",
) -> dict:
    """Run :class:`MaskGenerator` on every pair of two folders (matched by stem); returns ``{"written", "skipped"}``
    lists of stems. Existing outputs are skipped unless ``overwrite``."""
    from tqdm.auto import tqdm

    from .data.pairing import pair_by_stem
    from .data.images import read_pair
    from .utils import atomic_write_bytes, atomic_write_text

    pairs = pair_by_stem(ir_dir, vis_dir)
    out = Path(out_dir)
    todo = [(k, i, v) for k, i, v in pairs if overwrite or not all(p.is_file() for p in _outputs(out, k))]
    done = {"written": [], "skipped": sorted(set(k for k, _, _ in pairs) - set(k for k, _, _ in todo))}
    if not todo:
        return done
    gen = MaskGenerator(detector, detector_weights, sam_weights, conf, classes, device)
    for key, ip, vp in tqdm(todo, desc="masks", disable=not progress):
        ir, vis = read_pair(ip, vp, ir_norm)
        res = gen(ir, vis)
        cm = res["class_map"]
        meta = {
            "ir": str(ip),
            "vis": str(vp),
            "size": [int(cm.shape[0]), int(cm.shape[1])],
            "classes": {str(k): v for k, v in CLASS_NAMES.items()},
            "areas": {CLASS_NAMES[c]: int((cm == c).sum()) for c in CLASS_NAMES},
            "prompt_detector": gen.detector_name,
            "conf": gen.conf,
            "sam": gen.sam_name,
            "instances": res["instances"],
        }
        p_map, p_json, p_prev = _outputs(out, key)
        atomic_write_bytes(p_map, _png_bytes(cm.numpy()))
        atomic_write_bytes(p_prev, _png_bytes(preview(ir, vis, res).permute(1, 2, 0).numpy()))
        atomic_write_text(p_json, json.dumps(meta, indent=1))  # written last: its presence marks a finished pair
        done["written"].append(key)
    return done


def generate_seg_masks(
    ir_dir: str | Path,
    vis_dir: str | Path,
    out_dir: str | Path,
    *,
    source: str = "auto",
    night: float = 0.2,
    weights: str | None = None,
    overwrite: bool = False,
    device: str = "cpu",
    progress: bool = False,
    ir_norm: str = "minmax",
) -> dict:
    """Segmentation pseudo-masks (``H×W`` uint8 PNG of MSRS class ids, :data:`ivfuse.tasks.pseudo.MSRS_SEG_CLASSES`)
    of every pair of two folders (matched by stem) from the Cityscapes ESPNetv2 (``weights``: its checkpoint,
    default the shared one), as TSJNet's ``seg.pseudo: espnetv2`` makes them; ``source``/``night`` as in
    :func:`ivfuse.tasks.pseudo.pseudo_mask`. Returns ``{"written", "skipped"}`` lists of stems; existing masks are
    skipped unless ``overwrite``."""
    from tqdm.auto import tqdm

    from .data.pairing import pair_by_stem
    from .data.images import read_pair
    from .errors import suggest
    from .tasks.pseudo import PSEUDO_SOURCES, pseudo_mask
    from .tasks.segmenters import create_segmenter
    from .utils import atomic_write_bytes

    if source not in PSEUDO_SOURCES:
        raise suggest(source, PSEUDO_SOURCES, "pseudo-mask source")
    pairs = pair_by_stem(ir_dir, vis_dir)
    out = Path(out_dir)
    todo = [(k, i, v) for k, i, v in pairs if overwrite or not (out / f"{k}.png").is_file()]
    done = {"written": [], "skipped": sorted(set(k for k, _, _ in pairs) - set(k for k, _, _ in todo))}
    if not todo:
        return done
    seg = create_segmenter("espnetv2", **({"weights": weights} if weights else {})).to(device).eval()
    for key, ip, vp in tqdm(todo, desc="seg masks", disable=not progress):
        ir, vis = read_pair(ip, vp, ir_norm)
        m = pseudo_mask(ir, vis, seg, source, night)
        atomic_write_bytes(out / f"{key}.png", _png_bytes(m.to(torch.uint8).numpy()))
        done["written"].append(key)
    return done

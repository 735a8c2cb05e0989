"""Results files (``results.json|csv|md``) and the HTML report (``report.html`` + ``assets/``) of a bench run.

Ranking tables mark the best value of each column among the fusion methods (the reference rows ``ir`` and
``vis`` are shown in italics below them and are not ranked). Plots are drawn with matplotlib (Agg); image grids
show IR, visible and every method on deterministically chosen pairs (darkest and brightest visible image, i.e.
night and day; among labelled pairs when labels exist) with zoomed crops around the largest labelled person
(else object; unlabelled data: around the hottest IR region).
"""

from __future__ import annotations

import csv
import html
import io
import json
import math
from pathlib import Path

import numpy as np

from ..metrics import create_metric
from ..utils import atomic_write_bytes, atomic_write_text

__all__ = ["write_results", "write_report", "tables", "markdown"]

DET_COLS = (("mAP50", "mAP50"), ("mAP50_95", "mAP50:95"))


# ------------------------------------------------------------------------------------------------ tables
def _fmt(v, digits=4) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def _pm(r: dict, k: str) -> str:
    """``mean ± std`` over seeds (just the value for one seed)."""
    return _fmt(r[k]) + (f" ± {_fmt(r[k + '_std'])}" if r.get("n_seeds", 1) > 1 else "")


def _clean(obj):
    """NaN/inf -> None so that results.json is strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def _order(methods: list[str], refs: set[str], score) -> list[str]:
    """Methods by descending ``score`` (None last), references after them in their given order."""
    main = [m for m in methods if m not in refs]
    main.sort(key=lambda m: (score(m) is None or not math.isfinite(score(m)), -(score(m) or 0.0)))
    return main + [m for m in methods if m in refs]


def _table(title, head, rows, higher, refs, note=""):
    """rows: [(method, [values], [cell strings])]; marks the best numeric value per column among non-references."""
    best = []
    for j, hb in enumerate(higher):
        if hb is None:
            best.append(None)
            continue
        vals = [(r[1][j], r[0]) for r in rows if r[0] not in refs and r[1][j] is not None and math.isfinite(r[1][j])]
        if not vals:
            best.append(None)
            continue
        target = max(v for v, _ in vals) if hb else min(v for v, _ in vals)
        best.append({m for v, m in vals if v == target})
    out_rows = [{"method": m, "ref": m in refs, "cells": cells, "best": [bool(b and m in b) for b in best]} for m, _, cells in rows]
    return {"title": title, "head": head, "rows": out_rows, "note": note}


def tables(results: dict) -> list[tuple[str, list[dict]]]:
    """``[(dataset tag, [table, ...]), ...]``: the ranking tables of every dataset and protocol and the speed table."""
    meta = results["meta"]
    refs = set(meta.get("references", []))
    out = []
    for tag, e in results["datasets"].items():
        tabs = []
        methods = list(meta["methods"])
        if e["fusion"]:
            ms = meta["metrics"]
            lower = {m: create_metric(m).lower_better for m in ms}
            ranks: dict[str, list[float]] = {m: [] for m in methods if m not in refs and m in e["fusion"]}
            for k in ms:
                vals = {m: e["fusion"][m]["mean"][k] for m in ranks}
                fin = sorted((v if lower[k] else -v) for v in vals.values() if math.isfinite(v))
                for m, v in vals.items():
                    ranks[m].append(1 + fin.index(v if lower[k] else -v) if math.isfinite(v) else len(ranks))
            mean_rank = {m: sum(r) / len(r) for m, r in ranks.items()}
            order = _order([m for m in methods if m in e["fusion"]], refs, lambda m: -mean_rank[m] if m in mean_rank else None)
            rows = []
            for m in order:
                vals = [e["fusion"][m]["mean"][k] for k in ms] + [mean_rank.get(m)]
                rows.append((m, vals, [_fmt(v) for v in vals[:-1]] + [_fmt(vals[-1], 2)]))
            head = ["method"] + [k + (" ↓" if lower[k] else " ↑") for k in ms] + ["mean rank ↓"]
            tabs.append(_table(f"{tag} · fusion metrics (mean of {e['n_pairs']} pairs)", head, rows,
                               [not lower[k] for k in ms] + [False], refs, "ranked by mean rank over the metrics"))  # fmt: skip
        cls = e.get("class_names", [])
        if e["zero"]:
            order = _order([m for m in methods if m in e["zero"]], refs, lambda m: e["zero"][m]["mAP50_95"])
            rows = []
            for m in order:
                r = e["zero"][m]
                vals = [r["mAP50"], r["mAP50_95"]] + [r["per_class"][c]["AP50"] for c in cls]
                rows.append((m, vals, [_fmt(v) for v in vals]))
            head = ["method", "mAP50 ↑", "mAP50:95 ↑"] + [f"AP50 {c} ↑" for c in cls]
            tabs.append(_table(f"{tag} · zero: frozen {meta['judge']} ({e['labels']} labels)", head, rows, [True] * (2 + len(cls)), refs,
                               "ranked by mAP50:95"))  # fmt: skip
        if e["retrain"]:
            order = _order([m for m in methods if m in e["retrain"]], refs, lambda m: e["retrain"][m]["mAP50_95"])
            rows = []
            for m in order:
                r = e["retrain"][m]
                vals = [r["mAP50"], r["mAP50_95"]] + [r["per_class_AP50"][c] for c in cls]
                cells = [_pm(r, "mAP50"), _pm(r, "mAP50_95")]
                cells += [_fmt(v) for v in vals[2:]]
                rows.append((m, vals, cells))
            rc = meta["recipe"]
            head = ["method", "mAP50 ↑", "mAP50:95 ↑"] + [f"AP50 {c} ↑" for c in cls]
            tabs.append(_table(
                f"{tag} · retrain: {meta['judge']} fine-tuned on each method's fused {e['train_split']} ({e['n_train']} pairs), "
                f"{meta['seeds']} seed(s)", head, rows, [True] * (2 + len(cls)), refs,
                f"preset {meta['preset']}: {rc['epochs']} epochs, batch {rc['batch_size']}, lr {rc['lr']}, imgsz {rc['imgsz']}, "
                f"horizontal flips; mean ± std over seeds; ranked by mAP50:95"))  # fmt: skip
        if e["seg"]:
            order = _order([m for m in methods if m in e["seg"]], refs, lambda m: e["seg"][m]["mIoU"])
            pc = [c for c in e["seg"][order[0]].get("per_class_IoU", {})
                  if any(math.isfinite(e["seg"][m]["per_class_IoU"][c]) for m in order)]  # classes that occur
            rows = []
            for m in order:
                vals = [e["seg"][m]["mIoU"]] + [e["seg"][m]["per_class_IoU"][c] for c in pc]
                rows.append((m, vals, [_pm(e["seg"][m], "mIoU")] + [_fmt(v) for v in vals[1:]]))
            src = f"pseudo-masks {meta['seg_masks']}" if meta.get("seg_masks") else "the dataset's masks"
            judge = "ESPNetv2" + (" (Cityscapes, classes merged)" if meta.get("seg_judge") == "merged" else "")
            how = ("frozen" if meta["recipe"]["seg_epochs"] == 0
                   else f"fine-tuned on each method's fused {e['train_split']}")  # fmt: skip
            tabs.append(_table(f"{tag} · seg: {judge} {how} ({src}), mIoU",
                               ["method", "mIoU ↑"] + [f"IoU {c} ↑" for c in pc], rows, [True] * (1 + len(pc)), refs,
                               "mean ± std over seeds; ranked by mIoU"))  # fmt: skip
        if e["speed"]:
            order = _order([m for m in methods if m in e["speed"]], refs, lambda m: -e["speed"][m]["s_per_image"])
            rows = []
            for m in order:
                s = e["speed"][m]
                vals = [s["s_per_image"], None, None, None, None]
                rows.append((m, vals, [f"{s['s_per_image']:.4f}", f"{s['params']:,}", s["size"], s["device"], str(s["threads"])]))
            tabs.append(_table(f"{tag} · speed (warm, one image at a time)", ["method", "s/image ↓", "params", "size", "device", "threads"],
                               rows, [False, None, None, None, None], refs, "median of ≥3 calls after one warm-up call"))  # fmt: skip
        out.append((tag, tabs))
    return out


def _md_table(t: dict) -> str:
    lines = [f"### {t['title']}", "", "| " + " | ".join(t["head"]) + " |", "|" + "---|" + "---:|" * (len(t["head"]) - 1)]
    for r in t["rows"]:
        name = f"*{r['method']}* (reference)" if r["ref"] else r["method"]
        cells = [f"**{c}**" if b else c for c, b in zip(r["cells"], r["best"])]
        lines.append("| " + " | ".join([name] + cells) + " |")
    if t["note"]:
        lines += ["", t["note"] + "; **bold** = best fusion method per column."]
    return "\n".join(lines) + "\n"


def markdown(results: dict) -> str:
    meta = results["meta"]
    parts = [f"# ivfuse bench\n\nmethods: {', '.join(meta['methods'])} · protocols: {', '.join(meta['protocols'])} · "
             f"preset {meta['preset']} · judge {meta['judge']} · device {meta['device']} ({meta['torch_threads']} threads) · "
             f"wall {meta.get('wall_seconds', 0):.0f} s\n"]  # fmt: skip
    for tag, tabs in tables(results):
        e = results["datasets"][tag]
        parts.append(f"## {tag} ({e['n_pairs']} pairs)\n")
        for p, why in e["skipped"].items():
            parts.append(f"- `{p}` skipped: {why}")
        if e["skipped"]:
            parts.append("")
        parts += [_md_table(t) for t in tabs]
    return "\n".join(parts)


def write_results(results: dict, out: str | Path) -> None:
    """``results.json`` (everything), ``results.csv`` (long format, one mean per row) and ``results.md``."""
    out = Path(out)
    atomic_write_text(out / "results.json", json.dumps(_clean(results), indent=1, default=float, allow_nan=False) + "\n")
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["dataset", "protocol", "method", "measure", "value", "std", "n"])
    for tag, e in results["datasets"].items():
        for m, r in e["fusion"].items():
            for k, v in r["mean"].items():
                w.writerow([tag, "fusion", m, k, repr(float(v)) if math.isfinite(v) else "", "", r["n_images"]])
        for m, r in e["zero"].items():
            for k in ("mAP50", "mAP50_95"):
                w.writerow([tag, "zero", m, k, repr(r[k]), "", r["n_images"]])
            for c, pc in r["per_class"].items():
                w.writerow([tag, "zero", m, f"AP50_{c}", repr(pc["AP50"]) if pc["AP50"] is not None else "", "", pc["n_gt"]])
        for m, r in e["retrain"].items():
            for k in ("mAP50", "mAP50_95"):
                w.writerow([tag, "retrain", m, k, repr(r[k]), repr(r[k + "_std"]) if r["n_seeds"] > 1 else "", r["n_seeds"]])
            for c, v in r["per_class_AP50"].items():
                w.writerow([tag, "retrain", m, f"AP50_{c}", repr(v), "", r["n_seeds"]])
        for m, r in e["seg"].items():
            w.writerow([tag, "seg", m, "mIoU", repr(r["mIoU"]), repr(r["mIoU_std"]) if r["n_seeds"] > 1 else "", r["n_seeds"]])
        for m, r in e["speed"].items():
            w.writerow([tag, "speed", m, "s_per_image", repr(r["s_per_image"]), "", r["calls"]])
            w.writerow([tag, "speed", m, "params", r["params"], "", ""])
    atomic_write_text(out / "results.csv", buf.getvalue())
    atomic_write_text(out / "results.md", markdown(results))


# ------------------------------------------------------------------------------------------------ plots
def _slug(s: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in s)


def _save_fig(fig, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def _plots(results: dict, tag: str, assets: Path) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    meta, e = results["meta"], results["datasets"][tag]
    methods = [m for m in meta["methods"] if m in e["fusion"]]
    colours = {m: plt.cm.tab20(i % 20) for i, m in enumerate(meta["methods"])}
    out = []
    if e["fusion"]:
        ms = meta["metrics"]
        ncol = 4
        nrow = math.ceil(len(ms) / ncol)
        fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 2.9 * nrow), squeeze=False)
        for ax, k in zip(axes.flat, ms):
            data = [[v[k] for v in e["fusion"][m]["per_image"].values() if math.isfinite(v[k])] for m in methods]
            bp = ax.boxplot(data, showmeans=True, patch_artist=True, widths=0.6,
                            meanprops={"marker": "D", "markerfacecolor": "white", "markeredgecolor": "black", "markersize": 4},
                            flierprops={"markersize": 2})  # fmt: skip
            for patch, m in zip(bp["boxes"], methods):
                patch.set_facecolor(colours[m])
            ax.set_title(k + (" ↓" if create_metric(k).lower_better else " ↑"), fontsize=10)
            ax.set_xticks(range(1, len(methods) + 1), methods, rotation=60, fontsize=7)
            ax.tick_params(axis="y", labelsize=7)
        for ax in list(axes.flat)[len(ms):]:
            ax.axis("off")
        fig.suptitle(f"{tag}: per-image fusion metrics (box: quartiles, ◇ mean)", fontsize=11)
        fig.tight_layout()
        out.append((f"{tag}: fusion metrics per image", _save_fig(fig, assets / f"{_slug(tag)}_fusion_box.png").name))
        # bar plot of the means, one panel per metric
        fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 2.6 * nrow), squeeze=False)
        for ax, k in zip(axes.flat, ms):
            vals = [e["fusion"][m]["mean"][k] for m in methods]
            ax.bar(range(len(methods)), vals, color=[colours[m] for m in methods])
            ax.set_title(k + (" ↓" if create_metric(k).lower_better else " ↑"), fontsize=10)
            ax.set_xticks(range(len(methods)), methods, rotation=60, fontsize=7)
            ax.tick_params(axis="y", labelsize=7)
        for ax in list(axes.flat)[len(ms):]:
            ax.axis("off")
        fig.suptitle(f"{tag}: mean fusion metrics", fontsize=11)
        fig.tight_layout()
        out.append((f"{tag}: mean fusion metrics", _save_fig(fig, assets / f"{_slug(tag)}_fusion_bar.png").name))
    if e["zero"] or e["retrain"]:
        dm = [m for m in meta["methods"] if m in e["zero"] or m in e["retrain"]]
        fig, axes = plt.subplots(1, 2, figsize=(max(8, 1.1 * len(dm) * 2), 3.6), squeeze=False)
        x = np.arange(len(dm))
        for ax, (k, lab) in zip(axes[0], DET_COLS):
            w = 0.38
            if e["zero"]:
                ax.bar(x - w / 2, [e["zero"].get(m, {}).get(k, np.nan) for m in dm], w, label="zero (frozen)", color="#8fa9c9")
            if e["retrain"]:
                ax.bar(x + w / 2, [e["retrain"].get(m, {}).get(k, np.nan) for m in dm], w,
                       yerr=[np.nan_to_num(e["retrain"].get(m, {}).get(k + "_std", 0.0)) for m in dm], capsize=3,
                       label=f"retrain (mean ± std, {meta['seeds']} seed(s))", color="#d98c5f")  # fmt: skip
            ax.set_xticks(x, dm, rotation=45, fontsize=8)
            ax.set_title(f"{tag}: {lab}", fontsize=10)
            ax.legend(fontsize=7)
        fig.tight_layout()
        out.append((f"{tag}: detection mAP", _save_fig(fig, assets / f"{_slug(tag)}_map.png").name))
    if e["speed"]:
        sm = [m for m in meta["methods"] if m in e["speed"]]
        fig, ax = plt.subplots(figsize=(max(6, 0.8 * len(sm)), 3.2))
        ax.bar(range(len(sm)), [e["speed"][m]["s_per_image"] for m in sm], color=[colours[m] for m in sm])
        ax.set_yscale("log")
        ax.set_ylabel("s / image (log)")
        ax.set_xticks(range(len(sm)), sm, rotation=45, fontsize=8)
        s0 = e["speed"][sm[0]]
        ax.set_title(f"{tag}: speed at {s0['size']} on {s0['device']} ({s0['threads']} threads)", fontsize=10)
        fig.tight_layout()
        out.append((f"{tag}: speed", _save_fig(fig, assets / f"{_slug(tag)}_speed.png").name))
    return out


# ------------------------------------------------------------------------------------------------ image grids
def _pick_pairs(e: dict, k: int) -> list[tuple[str, str]]:
    """Deterministic choice: darkest ("night") and brightest ("day") visible image, then evenly spaced ones;
    among the pairs with labelled objects when the dataset has labels."""
    from ..data.datasets import load_dataset
    from ..data.images import read_gray_u8

    ds = load_dataset(e["dataset"], root=e["root"], split=e["split"], det_labels=e["labels"] if e["labels"] else None)
    wanted = set(e["names"])
    cands = []
    for n, ip, vp in ds.pairs:
        if n not in wanted:
            continue
        nb = 0
        if e["labels"]:
            from PIL import Image

            with Image.open(ip) as im:
                b = ds.read_boxes(n, *im.size)
            nb = len(b.xyxy) if b is not None else 0
        cands.append((float(read_gray_u8(vp).mean()), n, nb))
    labelled = [c for c in cands if c[2] > 0]
    pool = sorted(labelled or cands)
    if not pool:
        return []
    idx = [0, len(pool) - 1] + [round(i * (len(pool) - 1) / (k - 1)) for i in range(1, k - 1)] if k > 1 else [0]
    seen, out = set(), []
    for j, i in enumerate(idx[:k]):
        if pool[i][1] in seen:
            continue
        seen.add(pool[i][1])
        kind = "night (darkest visible)" if j == 0 else "day (brightest visible)" if j == 1 else "intermediate"
        out.append((pool[i][1], f"{kind}, mean visible luma {pool[i][0]:.0f}"))
    return out


def _crop_box(e: dict, name: str, ir_path: Path) -> tuple[int, int, int, int]:
    """Square crop around the largest labelled person (else object; ×2 margin, 64 px to half the short image side),
    else around the hottest IR region."""
    import torch
    from PIL import Image

    from ..data.datasets import load_dataset
    from ..data.images import read_gray_u8

    ir = read_gray_u8(ir_path)
    H, W = ir.shape
    box = None
    if e["labels"]:
        ds = load_dataset(e["dataset"], root=e["root"], split=e["split"], det_labels=e["labels"])
        b = ds.read_boxes(name, W, H)
        if b is not None and len(b.xyxy):
            a = (b.xyxy[:, 2] - b.xyxy[:, 0]) * (b.xyxy[:, 3] - b.xyxy[:, 1])
            names = [n.lower() for n in b.names]
            if "person" in names and (b.labels == names.index("person")).any():  # people first: the small, hard objects
                a = torch.where(b.labels == names.index("person"), a, torch.zeros_like(a))
            box = [float(v) for v in b.xyxy[int(a.argmax())]]
    if box is not None:
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        side = min(max(64.0, 2.0 * max(box[2] - box[0], box[3] - box[1])), min(H, W) / 2)
    else:
        side = min(H, W) / 3
        k = max(3, int(side) // 2)
        small = np.asarray(Image.fromarray(ir.astype(np.uint8)).resize((max(1, W // k), max(1, H // k)), Image.BILINEAR), float)
        yy, xx = np.unravel_index(int(small.argmax()), small.shape)
        cx, cy = (xx + 0.5) * W / small.shape[1], (yy + 0.5) * H / small.shape[0]
    side = min(side, H, W)
    x0 = int(round(min(max(cx - side / 2, 0), W - side)))
    y0 = int(round(min(max(cy - side / 2, 0), H - side)))
    return x0, y0, x0 + int(side), y0 + int(side)


def _grid(results: dict, tag: str, assets: Path, k: int) -> list[dict]:
    from PIL import Image, ImageDraw

    from ..data.datasets import load_dataset

    e = results["datasets"][tag]
    ds = load_dataset(e["dataset"], root=e["root"], split=e["split"], det_labels=None)
    src = {n: (ip, vp) for n, ip, vp in ds.pairs}
    methods = [m for m in results["meta"]["methods"] if m not in results["meta"].get("references", [])]
    rows = []
    for name, why in _pick_pairs(e, k):
        ip, vp = src[name]
        crop = _crop_box(e, name, ip)
        cols = [("infrared", ip), ("visible", vp)] + [(m, Path(e["fused_dirs"][m]) / f"{name}.png") for m in methods]
        cells = []
        for lab, p in cols:
            with Image.open(p) as im:
                im = im.convert("RGB")
                W, H = im.size
                thumb = im.resize((320, max(1, round(H * 320 / W))), Image.BILINEAR)
                s = 320 / W
                ImageDraw.Draw(thumb).rectangle([crop[0] * s, crop[1] * s, crop[2] * s - 1, crop[3] * s - 1], outline=(255, 220, 0), width=2)
                zoom = im.crop(crop).resize((200, 200), Image.LANCZOS)
            base = f"{_slug(tag)}_{_slug(name)}_{_slug(lab)}"
            for img, suffix in ((thumb, "full"), (zoom, "zoom")):
                buf = io.BytesIO()
                img.save(buf, format="JPEG", quality=88)
                atomic_write_bytes(assets / f"{base}_{suffix}.jpg", buf.getvalue())
            cells.append({"label": lab, "full": f"{base}_full.jpg", "zoom": f"{base}_zoom.jpg"})
        rows.append({"name": name, "why": why, "crop": crop, "cells": cells})
    return rows


# ------------------------------------------------------------------------------------------------ HTML
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;max-width:1800px}
h1{margin-bottom:4px} h2{border-bottom:2px solid #ccc;padding-bottom:4px;margin-top:40px}
table.rank{border-collapse:collapse;margin:8px 0 4px 0;font-size:13px}
table.rank th,table.rank td{border:1px solid #ddd;padding:3px 7px;text-align:right}
table.rank th:first-child,table.rank td:first-child{text-align:left}
table.rank th{background:#f2f4f7;position:sticky;top:0}
td.best{background:#d8f0d0;font-weight:bold}
tr.ref td{color:#666;font-style:italic;background:#fafafa}
.note{font-size:12px;color:#555;margin:0 0 18px 0}
.skip{background:#fff6e0;border-left:4px solid #e0a800;padding:6px 10px;margin:6px 0;font-size:13px}
img.plot{max-width:100%;border:1px solid #eee;margin:6px 0}
.grid{display:grid;gap:6px;margin:8px 0 24px 0}
.grid figure{margin:0;text-align:center;font-size:12px}
.grid img{width:100%;display:block;border:1px solid #ccc}
.meta{font-size:13px;color:#444} code{background:#f3f3f3;padding:1px 4px}
"""

_JS = """
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var broken = imgs.filter(function (i) { return !i.complete || i.naturalWidth === 0; })
                   .map(function (i) { return i.getAttribute('src'); });
  document.body.setAttribute('data-images', String(imgs.length));
  document.body.setAttribute('data-broken', JSON.stringify(broken));
  document.body.setAttribute('data-checked', 'yes');
  broken.forEach(function (s) { var d = document.createElement('div'); d.className = 'skip';
    d.textContent = 'broken image: ' + s; document.body.insertBefore(d, document.body.firstChild); });
});
"""


def _html_table(t: dict) -> str:
    e = html.escape
    h = [f"<h3>{e(t['title'])}</h3>", "<table class='rank'><tr>" + "".join(f"<th>{e(c)}</th>" for c in t["head"]) + "</tr>"]
    for r in t["rows"]:
        name = e(r["method"]) + (" <small>(reference)</small>" if r["ref"] else "")
        tds = "".join(f"<td class='best'>{e(c)}</td>" if b else f"<td>{e(c)}</td>" for c, b in zip(r["cells"], r["best"]))
        h.append(f"<tr class='{'ref' if r['ref'] else ''}'><td>{name}</td>{tds}</tr>")
    h.append("</table>")
    if t["note"]:
        h.append(f"<p class='note'>{e(t['note'])}; green = best fusion method per column; grey italics = reference inputs (not ranked).</p>")
    return "\n".join(h)


def write_report(results: dict, out: str | Path, grid_pairs: int = 2) -> Path:
    """Write ``out/report.html`` with its images in ``out/assets/`` (relative links; open the file in a browser)."""
    out = Path(out)
    assets = out / "assets"
    assets.mkdir(parents=True, exist_ok=True)
    meta = results["meta"]
    e_ = html.escape
    rc = meta["recipe"]
    body = [
        "<h1>ivfuse bench</h1>",
        f"<p class='meta'>finished {e_(meta.get('finished', ''))} · wall {meta.get('wall_seconds', 0):.0f} s · device "
        f"<code>{e_(meta['device'])}</code>, {meta['torch_threads']} torch threads · torch {e_(meta['torch'])} · judge "
        f"<code>{e_(meta['judge'])}</code> ({e_(str(meta['judge_weights']))}) · detection labels <code>{e_(meta['labels'])}</code></p>",
        f"<p class='meta'>methods: {e_(', '.join(meta['methods']))} (<i>ir</i>, <i>vis</i>: the source images as reference rows) · "
        f"protocols: {e_(', '.join(meta['protocols']))} · retrain preset <code>{e_(meta['preset'])}</code>: {rc['epochs']} epochs, batch "
        f"{rc['batch_size']}, lr {rc['lr']}, imgsz {rc['imgsz']}, horizontal flips, seeds 0..{meta['seeds'] - 1}</p>",
    ]  # fmt: skip
    if meta.get("command"):
        body.append(f"<p class='meta'>command: <code>{e_(meta['command'])}</code></p>")
    for tag, tabs in tables(results):
        e = results["datasets"][tag]
        body.append(f"<h2>{e_(tag)} — {e['n_pairs']} pairs" + (f", {e['labels']} labels" if e["labels"] else ", no labels") + "</h2>")
        for p, why in e["skipped"].items():
            body.append(f"<div class='skip'><b>{e_(p)}</b> skipped: {e_(why)}</div>")
        body += [_html_table(t) for t in tabs]
        for caption, fname in _plots(results, tag, assets):
            body.append(f"<figure><img class='plot' src='assets/{e_(fname)}' alt='{e_(caption)}'><figcaption class='note'>{e_(caption)}</figcaption></figure>")
        rows = _grid(results, tag, assets, grid_pairs)
        if rows:
            ncol = len(rows[0]["cells"])
            body.append(f"<h3>{e_(tag)} · images (yellow square: the zoomed crop)</h3>")
            for r in rows:
                body.append(f"<p class='note'><b>{e_(r['name'])}</b>: {e_(r['why'])}; crop x {r['crop'][0]}–{r['crop'][2]}, y {r['crop'][1]}–{r['crop'][3]}</p>")
                body.append(f"<div class='grid' style='grid-template-columns:repeat({ncol},1fr)'>")
                for kind in ("full", "zoom"):
                    for c in r["cells"]:
                        body.append(f"<figure><img src='assets/{e_(c[kind])}' alt='{e_(c['label'])} {kind}'>"
                                    f"<figcaption>{e_(c['label'])}{' (zoom)' if kind == 'zoom' else ''}</figcaption></figure>")  # fmt: skip
                body.append("</div>")
    page = (f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>ivfuse bench</title><style>{_CSS}</style>"
            f"<script>{_JS}</script></head><body>\n" + "\n".join(body) + "\n</body></html>\n")  # fmt: skip
    return atomic_write_text(out / "report.html", page)

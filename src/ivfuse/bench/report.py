"""Results files (``results.json|csv|md|tex``, ``results_per_image.csv``) and the HTML report (``report.html`` +
``assets/``) of a bench run.

Ranking tables mark the best value of each column among the fusion methods (the reference rows ``ir`` and
``vis`` are shown in italics below them and are not ranked; ``results.tex`` also underlines the second best).
Where the run compared every row with a baseline (``entry["significance"]``, :mod:`ivfuse.bench.stats`), every
ranking table gains "Δ vs <baseline> [95 % CI]" columns (the fusion table: how many metrics are better / worse
with a CI excluding 0, and a second table with the Δ [CI] of every metric); a ``†`` marks a CI that excludes 0, the
baseline row reads "baseline". The report adds one paired plot per protocol (per-image value of each method
against the baseline's, with the y = x line; for detection also the Δ mAP with its CI per method).

Plots are drawn with matplotlib (Agg); image grids show IR, visible and every method on deterministically chosen
pairs (darkest and brightest visible image, i.e. night and day; among labelled pairs when labels exist) with zoomed
crops around the largest labelled person (else object; unlabelled data: around the hottest IR region). A method's
fused image is found by its stem (``<pair>.png``, or ``.jpg``/``.jpeg``/``.bmp``/``.tif``/``.tiff`` in a user's
folder); a missing one shows as a grey placeholder.
"""

from __future__ import annotations

import csv
import html
import io
import json
import math
import re
from pathlib import Path

import numpy as np

from ..metrics import create_metric
from ..utils import atomic_write_bytes, atomic_write_text
from .methods import FOLDER_EXTS as _IMG_EXTS  # the extensions a user's folder of fused images may use

__all__ = ["latex", "markdown", "per_image_csv", "tables", "write_report", "write_results"]

DET_COLS = (("mAP50", "mAP50"), ("mAP50_95", "mAP50:95"))
SIG_MARK = "†"  # a paired CI vs the baseline that excludes 0


# ------------------------------------------------------------------------------------------------ tables
def _fmt(v, digits=4) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def _num(v) -> float:
    """A value of the results dict as a float (``None``, i.e. JSON ``null``, -> NaN)."""
    return math.nan if v is None else float(v)


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


def _table(title, head, rows, higher, refs, note="", kind="", sig_note=""):
    """rows: ``[(method, [values], [cell strings])]`` or ``(method, values, cells, sig)`` with ``sig`` one of ``None``,
    ``"better"``, ``"worse"``, ``"mixed"`` per cell (a Δ cell whose CI excludes 0) or ``"baseline"``; marks the best
    and the second best numeric value per column among non-references."""
    best, second = [], []
    for j, hb in enumerate(higher):
        vals = (
            []
            if hb is None
            else [(r[1][j], r[0]) for r in rows if r[0] not in refs and r[1][j] is not None and math.isfinite(r[1][j])]
        )
        distinct = sorted({v for v, _ in vals}, reverse=bool(hb))
        best.append({m for v, m in vals if v == distinct[0]} if distinct else set())
        second.append({m for v, m in vals if v == distinct[1]} if len(distinct) > 1 else set())
    out_rows = []
    for r in rows:
        m, cells = r[0], r[2]
        sig = list(r[3]) if len(r) > 3 and r[3] is not None else [None] * len(cells)
        out_rows.append(
            {
                "method": m,
                "ref": m in refs,
                "cells": cells,
                "best": [m in b for b in best],
                "second": [m in b for b in second],
                "sig": sig,
                "baseline": "baseline" in sig,
            }
        )
    return {"title": title, "head": head, "rows": out_rows, "note": note, "kind": kind, "sig_note": sig_note}


# ------------------------------------------------------------------------------------------------ significance
def _finite(v) -> bool:
    if v is None or isinstance(v, (bool, str)):
        return False
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def _ci_digits(d: float, lo: float, hi: float) -> int | None:
    """Decimals that give the CI's width about three significant digits (0 to 6; ``None``: use ``.2e``)."""
    w = hi - lo if _finite(lo) and _finite(hi) and hi > lo else abs(d)
    if not _finite(w) or w <= 0:
        return 4
    n = max(0, 2 - math.floor(math.log10(w)))
    return None if n > 6 else int(n)


def _delta_cell(vb: dict | None, higher_better: bool, digits: int | None = None) -> tuple[str, str | None]:
    """``"+0.123 [0.045, 0.201] †"`` and ``"better"``/``"worse"`` when the CI excludes 0 (else ``None``)."""
    if not vb or not _finite(vb.get("delta")):
        return "–", None
    d = vb["delta"]
    lo, hi = (vb.get("ci") or [None, None])[:2]
    n = digits if digits is not None else _ci_digits(d, lo, hi)
    f = ".2e" if n is None else f".{n}f"
    if not (_finite(lo) and _finite(hi)):
        return f"{d:+{f}} [–]", None
    text = f"{d:+{f}} [{lo:{f}}, {hi:{f}}]"
    if not vb.get("excludes_zero"):
        return text, None
    return f"{text} {SIG_MARK}", "better" if (d > 0) == higher_better else "worse"


def _sig_info(e: dict) -> tuple[str | None, str, str]:
    """``(baseline, "95 %", note)`` of a dataset entry (``(None, "", "")`` without significance)."""
    sig = e.get("significance")
    if not sig or not sig.get("baseline"):
        return None, "", ""
    conf = f"{100 * float(sig.get('confidence', 0.95)):g} %"
    return sig["baseline"], conf, f"{SIG_MARK} {conf} CI of the paired difference vs {sig['baseline']} excludes 0"


def _sig_note(e: dict, protocol: str) -> str:
    b, _, note = _sig_info(e)
    if b is None:
        return ""
    sig = e["significance"]
    how = sig.get("how", {}).get(protocol, "")
    n = sig.get("n_resamples", {}).get(protocol)
    extra = "; ".join(x for x in (how, f"{n} resamples" if n else "", f"bootstrap seed {sig.get('seed')}") if x)
    return f"{note} ({extra})" if extra else note


def tables(results: dict) -> list[tuple[str, list[dict]]]:
    """``[(dataset tag, [table, ...]), ...]``: the ranking tables of every dataset and protocol and the speed table."""
    meta = results["meta"]
    refs = set(meta.get("references", []))
    out = []
    for tag, e in results["datasets"].items():
        tabs = []
        methods = list(meta["methods"])
        base, conf, _ = _sig_info(e)
        if e["fusion"]:
            ms = meta["metrics"]
            lower = {m: create_metric(m).lower_better for m in ms}
            ranks: dict[str, list[float]] = {m: [] for m in methods if m not in refs and m in e["fusion"]}
            for k in ms:
                vals = {m: _num(e["fusion"][m]["mean"][k]) for m in ranks}
                fin = sorted((v if lower[k] else -v) for v in vals.values() if math.isfinite(v))
                for m, v in vals.items():
                    ranks[m].append(1 + fin.index(v if lower[k] else -v) if math.isfinite(v) else len(ranks))
            mean_rank = {m: sum(r) / len(r) for m, r in ranks.items()}
            order = _order(
                [m for m in methods if m in e["fusion"]], refs, lambda m: -mean_rank[m] if m in mean_rank else None
            )
            rows, drows = [], []
            for m in order:
                vals = [_num(e["fusion"][m]["mean"][k]) for k in ms] + [mean_rank.get(m)]
                cells = [_fmt(v) for v in vals[:-1]] + [_fmt(vals[-1], 2)]
                sig = [None] * len(cells)
                if base is not None:  # how many metrics are better / worse than the baseline with a CI excluding 0
                    vals.append(None)
                    vb = e["fusion"][m].get("vs_baseline")
                    if m == base:
                        cells.append("baseline")
                        sig.append("baseline")
                        drows.append((m, [None] * len(ms), ["baseline"] * len(ms), ["baseline"] * len(ms)))
                    elif not vb:
                        cells.append("–")
                        sig.append(None)
                        drows.append((m, [None] * len(ms), ["–"] * len(ms), [None] * len(ms)))
                    else:
                        dc = [_delta_cell(vb.get(k), not lower[k]) for k in ms]
                        nb, nw = sum(f == "better" for _, f in dc), sum(f == "worse" for _, f in dc)
                        cells.append(f"{nb} better / {nw} worse" + (f" {SIG_MARK}" if nb + nw else ""))
                        sig.append(None if nb + nw == 0 else "better" if nb > nw else "worse" if nw > nb else "mixed")
                        drows.append((m, [None] * len(ms), [c for c, _ in dc], [f for _, f in dc]))
                rows.append((m, vals, cells, sig))
            head = ["method"] + [k + (" ↓" if lower[k] else " ↑") for k in ms] + ["mean rank ↓"]
            higher = [not lower[k] for k in ms] + [False]
            if base is not None:
                head.append(f"Δ vs {base} [{conf} CI]: metrics better / worse")
                higher.append(None)
            tabs.append(
                _table(
                    f"{tag} · fusion metrics (mean of {e['n_pairs']} pairs)",
                    head,
                    rows,
                    higher,
                    refs,
                    "ranked by mean rank over the metrics",
                    "fusion",
                    _sig_note(e, "fusion"),
                )
            )
            if base is not None:
                tabs.append(
                    _table(
                        f"{tag} · fusion · Δ vs {base} [{conf} CI] (paired, per image)",
                        ["method"] + [f"Δ {k}" + (" ↓" if lower[k] else " ↑") for k in ms],
                        drows,
                        [None] * len(ms),
                        refs,
                        f"mean over the pairs of (method − {base}) per image, same order as the ranking",
                        "fusion_delta",
                        _sig_note(e, "fusion"),
                    )
                )
        cls = e.get("class_names", [])
        for proto in ("zero", "retrain"):
            if not e[proto]:
                continue
            order = _order([m for m in methods if m in e[proto]], refs, lambda m, rs=e[proto]: _num(rs[m]["mAP50_95"]))
            rows = []
            for m in order:
                r = e[proto][m]
                pc = (
                    [r["per_class"][c]["AP50"] for c in cls]
                    if proto == "zero"
                    else [r["per_class_AP50"][c] for c in cls]
                )
                vals = [_num(r["mAP50"]), _num(r["mAP50_95"])]
                cells = [_fmt(v) for v in vals] if proto == "zero" else [_pm(r, "mAP50"), _pm(r, "mAP50_95")]
                sig = [None, None]
                if base is not None:
                    vals += [None, None]
                    if m == base:
                        cells += ["baseline", "baseline"]
                        sig += ["baseline", "baseline"]
                    else:
                        for k, _ in DET_COLS:
                            c, f = _delta_cell((r.get("vs_baseline") or {}).get(k), True, 4)
                            cells.append(c)
                            sig.append(f)
                vals += [_num(v) for v in pc]
                cells += [_fmt(_num(v)) for v in pc]
                sig += [None] * len(pc)
                rows.append((m, vals, cells, sig))
            head = ["method", "mAP50 ↑", "mAP50:95 ↑"]
            higher = [True, True]
            if base is not None:
                head += [f"Δ {lab} vs {base} [{conf} CI]" for _, lab in DET_COLS]
                higher += [None, None]
            head += [f"AP50 {c} ↑" for c in cls]
            higher += [True] * len(cls)
            if proto == "zero":
                title = f"{tag} · zero: frozen {meta['judge']} ({e['labels']} labels)"
                note = "ranked by mAP50:95"
            else:
                rc = meta["recipe"]
                title = (
                    f"{tag} · retrain: {meta['judge']} fine-tuned on each method's fused {e['train_split']} "
                    f"({e['n_train']} pairs), {meta['seeds']} seed(s)"
                )
                note = (
                    f"preset {meta['preset']}: {rc['epochs']} epochs, batch {rc['batch_size']}, lr {rc['lr']}, "
                    f"imgsz {rc['imgsz']}, horizontal flips; mean ± std over seeds; ranked by mAP50:95"
                )
            tabs.append(_table(title, head, rows, higher, refs, note, proto, _sig_note(e, proto)))
            if e.get("scenes") and all("by_scene" in e[proto][m] for m in order):
                tabs.append(_scene_table(e, proto, order, refs, title))
        if e["seg"]:
            order = _order([m for m in methods if m in e["seg"]], refs, lambda m: e["seg"][m]["mIoU"])
            pc = [  # classes that occur
                c
                for c in e["seg"][order[0]].get("per_class_IoU", {})
                if any(math.isfinite(e["seg"][m]["per_class_IoU"][c]) for m in order)
            ]
            rows = []
            for m in order:
                vals = [e["seg"][m]["mIoU"]] + [e["seg"][m]["per_class_IoU"][c] for c in pc]
                rows.append((m, vals, [_pm(e["seg"][m], "mIoU")] + [_fmt(v) for v in vals[1:]]))
            src = f"pseudo-masks {meta['seg_masks']}" if meta.get("seg_masks") else "the dataset's masks"
            judge = "ESPNetv2" + (" (Cityscapes, classes merged)" if meta.get("seg_judge") == "merged" else "")
            how = (
                "frozen"
                if meta["recipe"]["seg_epochs"] == 0
                else f"fine-tuned on each method's fused {e['train_split']}"
            )
            tabs.append(
                _table(
                    f"{tag} · seg: {judge} {how} ({src}), mIoU",
                    ["method", "mIoU ↑"] + [f"IoU {c} ↑" for c in pc],
                    rows,
                    [True] * (1 + len(pc)),
                    refs,
                    "mean ± std over seeds; ranked by mIoU",
                    "seg",
                )
            )
        if e["speed"]:
            order = _order([m for m in methods if m in e["speed"]], refs, lambda m: -e["speed"][m]["s_per_image"])
            rows = []
            for m in order:
                s = e["speed"][m]
                vals = [s["s_per_image"], None, None, None, None]
                rows.append(
                    (
                        m,
                        vals,
                        [f"{s['s_per_image']:.4f}", f"{s['params']:,}", s["size"], s["device"], str(s["threads"])],
                    )
                )
            tabs.append(
                _table(
                    f"{tag} · speed (warm, one image at a time)",
                    ["method", "s/image ↓", "params", "size", "device", "threads"],
                    rows,
                    [False, None, None, None, None],
                    refs,
                    "median of ≥3 calls after one warm-up call",
                    "speed",
                )
            )
        out.append((tag, tabs))
    return out


def _scene_table(e: dict, proto: str, order: list[str], refs: set, title: str) -> dict:
    """Day / night breakdown of a zero or retrain table: mAP50 and per-class AP50 per scene (``by_scene``)."""
    scenes = list(e[proto][order[0]]["by_scene"])
    cls = e.get("class_names", [])
    head, rows = ["method"], []
    for sc in scenes:
        n = e[proto][order[0]]["by_scene"][sc]["n_images"]
        head += [f"mAP50 {sc} ({n}) ↑"] + [f"AP50 {c} {sc} ↑" for c in cls]
    for m in order:
        vals = []
        for sc in scenes:
            b = e[proto][m]["by_scene"][sc]
            vals += [_num(b["mAP50"])] + [_num(b["per_class_AP50"].get(c)) for c in cls]
        rows.append((m, vals, [_fmt(v) for v in vals]))
    note = "each scene's images judged alone (COCOeval on that subset; MSRS names ending in D / N)" + (
        "; mean over seeds" if proto == "retrain" else ""
    )
    return _table(f"{title} · by scene", head, rows, [True] * (len(head) - 1), refs, note, f"{proto}_scene")


def _best_note(t: dict) -> str:
    return "" if t["kind"] == "fusion_delta" else "**bold** = best fusion method per column"


def _md_table(t: dict) -> str:
    lines = [
        f"### {t['title']}",
        "",
        "| " + " | ".join(t["head"]) + " |",
        "|" + "---|" + "---:|" * (len(t["head"]) - 1),
    ]
    for r in t["rows"]:
        m = r["method"].replace("|", "\\|")
        name = f"*{m}* (reference)" if r["ref"] else m
        cells = [f"**{c}**" if b else c for c, b in zip(r["cells"], r["best"])]
        lines.append("| " + " | ".join([name] + [c.replace("|", "\\|") for c in cells]) + " |")
    notes = [x for x in (t["note"], _best_note(t), t["sig_note"]) if x]
    if notes:
        lines += ["", "; ".join(notes) + "."]
    return "\n".join(lines) + "\n"


def markdown(results: dict) -> str:
    meta = results["meta"]
    base = meta.get("baseline")
    parts = [
        f"# ivfuse bench\n\nmethods: {', '.join(meta['methods'])} · protocols: {', '.join(meta['protocols'])} · "
        f"preset {meta['preset']} · judge {meta['judge']} · device {meta['device']} "
        f"({meta['torch_threads']} threads) · wall {meta.get('wall_seconds', 0):.0f} s"
        + (f" · baseline {base} (paired bootstrap CIs)" if base else "")
        + "\n"
    ]
    for tag, tabs in tables(results):
        e = results["datasets"][tag]
        parts.append(f"## {tag} ({e['n_pairs']} pairs)\n")
        for p, why in e["skipped"].items():
            parts.append(f"- `{p}` skipped: {why}")
        if e["skipped"]:
            parts.append("")
        parts += [_md_table(t) for t in tabs]
    return "\n".join(parts)


# ------------------------------------------------------------------------------------------------ LaTeX
_TEX_CHARS = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "<": r"\textless{}",
    ">": r"\textgreater{}",
    "|": r"\textbar{}",
    "↑": r"$\uparrow$",
    "↓": r"$\downarrow$",
    "±": r"$\pm$",
    "–": "--",
    "—": "---",
    "−": "$-$",
    "·": r"$\cdot$",
    "Δ": r"$\Delta$",
    SIG_MARK: r"$^{\dagger}$",
    "×": r"$\times$",
    "≥": r"$\geq$",
    "≤": r"$\leq$",
    "◇": r"$\diamond$",
    "é": r"\'e",
    "è": r"\`e",
    "ü": r"\"u",
    "ö": r"\"o",
    "ä": r"\"a",
    "\u00a0": "~",
}


def _tex(s) -> str:
    """LaTeX-escape plain text (``_ % & # $ { } ~ ^ \\``), ASCII only: known symbols become math, others ``?``;
    a minus sign before a number is typeset as one."""
    s = re.sub(r"(?<![\w.])-(?=\d)", "−", str(s))
    return "".join(_TEX_CHARS.get(c, c if c.isascii() else "?") for c in s)


def _tex_label(t: dict) -> str:
    """An ASCII label: ``<dataset tag>-<table kind>`` (``msrs-dev-val-zero``)."""
    tag = t["title"].split(" · ")[0]
    return re.sub(r"[^A-Za-z0-9]+", "-", f"{tag}-{t['kind'] or 'table'}").strip("-")


def _tex_table(t: dict) -> str:
    n = len(t["head"])
    lines = [
        "\\begin{table}[htbp]",
        "\\centering",
        f"\\caption{{{_tex(t['title'])}}}",
        f"\\label{{tab:{_tex_label(t)}}}",
    ]
    wide = n > 8
    if wide:
        lines.append("\\resizebox{\\linewidth}{!}{%")
    lines += [
        f"\\begin{{tabular}}{{l{'r' * (n - 1)}}}",
        "\\toprule",
        " & ".join(_tex(h) for h in t["head"]) + " \\\\",
        "\\midrule",
    ]
    was_ref = False
    for r in t["rows"]:
        if r["ref"] and not was_ref and any(not x["ref"] for x in t["rows"]):
            lines.append("\\midrule")
        was_ref = r["ref"]
        name = f"\\textit{{{_tex(r['method'])}}} (reference)" if r["ref"] else _tex(r["method"])
        cells = []
        for c, b, s2 in zip(r["cells"], r["best"], r["second"]):
            c = _tex(c)
            cells.append(f"\\textbf{{{c}}}" if b else f"\\underline{{{c}}}" if s2 else c)
        lines.append(" & ".join([name] + cells) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}" + ("}" if wide else "")]
    marks = "" if t["kind"] == "fusion_delta" else "bold: best, underlined: second best fusion method per column"
    notes = [x for x in (t["note"], marks, t["sig_note"]) if x]
    if notes:
        lines += ["\\par\\smallskip", f"{{\\footnotesize {_tex('; '.join(notes) + '.')}}}"]
    lines.append("\\end{table}")
    return "\n".join(lines) + "\n"


def latex(results: dict) -> str:
    """``results.tex``: a standalone document (``pdflatex results.tex``) with one booktabs table per ranking table;
    each ``table`` environment can be copied into a paper (needs ``booktabs`` and ``graphicx``)."""
    meta = results["meta"]
    parts = [
        "% ivfuse bench: ranking tables (booktabs). Compile with pdflatex, or copy a table environment into a paper",
        "% (\\usepackage{booktabs,graphicx}).",
        "\\documentclass[10pt]{article}",
        "\\usepackage[T1]{fontenc}",
        "\\usepackage[utf8]{inputenc}",
        "\\usepackage[margin=1.5cm,landscape]{geometry}",
        "\\usepackage{booktabs}",
        "\\usepackage{graphicx}",
        "\\begin{document}",
        "\\section*{ivfuse bench}",
        _tex(
            f"methods: {', '.join(meta['methods'])} · protocols: {', '.join(meta['protocols'])} · "
            f"preset {meta['preset']} · judge {meta['judge']}"
            + (f" · baseline {meta['baseline']}" if meta.get("baseline") else "")
        )
        + "\n",
    ]
    for tag, tabs in tables(results):
        e = results["datasets"][tag]
        parts.append(f"\\subsection*{{{_tex(tag)} ({e['n_pairs']} pairs)}}")
        for p, why in e["skipped"].items():
            parts.append(_tex(f"{p} skipped: {why}") + "\n")
        parts += [_tex_table(t) for t in tabs]
        parts.append("\\clearpage")
    parts.append("\\end{document}")
    return "\n".join(parts) + "\n"


# ------------------------------------------------------------------------------------------------ per-image CSV
def _csv_value(v) -> str:
    return repr(float(v)) if _finite(v) else ""


def per_image_csv(results: dict) -> str:
    """``results_per_image.csv``: ``dataset,protocol,method,image,measure,value`` — every fusion metric of every
    judged image, and the per-image AP50 of ``zero`` and ``retrain`` (mean over seeds; empty for an image without
    ground truth). Non-finite values are written empty."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["dataset", "protocol", "method", "image", "measure", "value"])
    ms = results["meta"].get("metrics")
    for tag, e in results["datasets"].items():
        for m, r in e.get("fusion", {}).items():
            for name, vals in r.get("per_image", {}).items():
                for k in ms or vals:
                    if k in vals:
                        w.writerow([tag, "fusion", m, name, k, _csv_value(vals[k])])
        for proto in ("zero", "retrain"):
            for m, r in e.get(proto, {}).items():
                per = r.get("per_image_AP50")
                if per is None:
                    continue
                if len(per) != len(e["names"]):
                    raise ValueError(
                        f"{tag} {proto} {m}: {len(per)} per-image AP50 values for {len(e['names'])} images"
                    )
                for name, v in zip(e["names"], per):
                    w.writerow([tag, proto, m, name, "AP50", _csv_value(v)])
    return buf.getvalue()


def write_results(results: dict, out: str | Path) -> None:
    """``results.json`` (everything), ``results.csv`` (long format, one mean per row), ``results.md``,
    ``results.tex`` (booktabs tables) and ``results_per_image.csv`` (long format, one image per row)."""
    out = Path(out)
    atomic_write_text(
        out / "results.json", json.dumps(_clean(results), indent=1, default=float, allow_nan=False) + "\n"
    )
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["dataset", "protocol", "method", "measure", "value", "std", "n"])
    for tag, e in results["datasets"].items():
        for m, r in e["fusion"].items():
            for k, v in r["mean"].items():
                w.writerow([tag, "fusion", m, k, _csv_value(v), "", r["n_images"]])
        for m, r in e["zero"].items():
            for k in ("mAP50", "mAP50_95"):
                w.writerow([tag, "zero", m, k, repr(r[k]), "", r["n_images"]])
            for c, pc in r["per_class"].items():
                w.writerow(
                    [tag, "zero", m, f"AP50_{c}", repr(pc["AP50"]) if pc["AP50"] is not None else "", "", pc["n_gt"]]
                )
        for m, r in e["retrain"].items():
            for k in ("mAP50", "mAP50_95"):
                w.writerow(
                    [tag, "retrain", m, k, repr(r[k]), repr(r[k + "_std"]) if r["n_seeds"] > 1 else "", r["n_seeds"]]
                )
            for c, v in r["per_class_AP50"].items():
                w.writerow([tag, "retrain", m, f"AP50_{c}", repr(v), "", r["n_seeds"]])
        for m, r in e["seg"].items():
            w.writerow(
                [tag, "seg", m, "mIoU", repr(r["mIoU"]), repr(r["mIoU_std"]) if r["n_seeds"] > 1 else "", r["n_seeds"]]
            )
        for m, r in e["speed"].items():
            w.writerow([tag, "speed", m, "s_per_image", repr(r["s_per_image"]), "", r["calls"]])
            w.writerow([tag, "speed", m, "params", r["params"], "", ""])
    atomic_write_text(out / "results.csv", buf.getvalue())
    atomic_write_text(out / "results.md", markdown(results))
    atomic_write_text(out / "results.tex", latex(results))
    atomic_write_text(out / "results_per_image.csv", per_image_csv(results))


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
            data = [[float(v[k]) for v in e["fusion"][m]["per_image"].values() if _finite(v[k])] for m in methods]
            bp = ax.boxplot(
                data,
                showmeans=True,
                patch_artist=True,
                widths=0.6,
                meanprops={"marker": "D", "markerfacecolor": "white", "markeredgecolor": "black", "markersize": 4},
                flierprops={"markersize": 2},
            )
            for patch, m in zip(bp["boxes"], methods):
                patch.set_facecolor(colours[m])
            ax.set_title(k + (" ↓" if create_metric(k).lower_better else " ↑"), fontsize=10)
            ax.set_xticks(range(1, len(methods) + 1), methods, rotation=60, fontsize=7)
            ax.tick_params(axis="y", labelsize=7)
        for ax in list(axes.flat)[len(ms) :]:
            ax.axis("off")
        fig.suptitle(f"{tag}: per-image fusion metrics (box: quartiles, ◇ mean)", fontsize=11)
        fig.tight_layout()
        out.append((f"{tag}: fusion metrics per image", _save_fig(fig, assets / f"{_slug(tag)}_fusion_box.png").name))
        # bar plot of the means, one panel per metric
        fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 2.6 * nrow), squeeze=False)
        for ax, k in zip(axes.flat, ms):
            vals = [_num(e["fusion"][m]["mean"][k]) for m in methods]
            ax.bar(range(len(methods)), vals, color=[colours[m] for m in methods])
            ax.set_title(k + (" ↓" if create_metric(k).lower_better else " ↑"), fontsize=10)
            ax.set_xticks(range(len(methods)), methods, rotation=60, fontsize=7)
            ax.tick_params(axis="y", labelsize=7)
        for ax in list(axes.flat)[len(ms) :]:
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
                ax.bar(
                    x - w / 2,
                    [e["zero"].get(m, {}).get(k, np.nan) for m in dm],
                    w,
                    label="zero (frozen)",
                    color="#8fa9c9",
                )
            if e["retrain"]:
                ax.bar(
                    x + w / 2,
                    [e["retrain"].get(m, {}).get(k, np.nan) for m in dm],
                    w,
                    yerr=[np.nan_to_num(e["retrain"].get(m, {}).get(k + "_std", 0.0)) for m in dm],
                    capsize=3,
                    label=f"retrain (mean ± std, {meta['seeds']} seed(s))",
                    color="#d98c5f",
                )
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
    out += _paired_plots(results, tag, assets, colours)
    return out


def _xy_line(ax, xs, ys) -> None:
    """The y = x line over the range of the points (and equal axis ranges)."""
    vals = [v for v in (*xs, *ys) if math.isfinite(v)]
    if not vals:
        return
    lo, hi = min(vals), max(vals)
    pad = 0.05 * (hi - lo) if hi > lo else max(abs(lo) * 0.05, 0.05)
    lo, hi = lo - pad, hi + pad
    ax.plot([lo, hi], [lo, hi], color="0.45", lw=0.8, ls="--", zorder=0)
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)


def _paired_plots(results: dict, tag: str, assets: Path, colours: dict) -> list[tuple[str, str]]:
    """One paired plot per protocol against the baseline: fusion — per metric, every row's per-image value against
    the baseline's on the same image (y = x dashed; above it = higher than the baseline); zero / retrain — Δ mAP50
    and Δ mAP50:95 with their CI per row (filled: CI excludes 0), and per row its per-image AP50 against the
    baseline's."""
    import matplotlib.pyplot as plt

    meta, e = results["meta"], results["datasets"][tag]
    base, conf, _ = _sig_info(e)
    if base is None:
        return []
    refs = set(meta.get("references", []))
    out = []
    fus = e.get("fusion", {})
    others = [m for m in meta["methods"] if m in fus and m != base and fus[m].get("per_image")]
    if base in fus and others:
        ms = meta["metrics"]
        ncol = min(4, len(ms))
        nrow = math.ceil(len(ms) / ncol)
        fig, axes = plt.subplots(nrow, ncol, figsize=(3.6 * ncol, 3.4 * nrow), squeeze=False)
        bpi = fus[base]["per_image"]
        for ax, k in zip(axes.flat, ms):
            xs_all, ys_all = [], []
            for m in others:
                pi = fus[m]["per_image"]
                pts = [(_num(bpi[n][k]), _num(pi[n][k])) for n in bpi if n in pi]
                pts = [(x, y) for x, y in pts if math.isfinite(x) and math.isfinite(y)]
                if not pts:
                    continue
                xs, ys = zip(*pts)
                xs_all += xs
                ys_all += ys
                vb = (fus[m].get("vs_baseline") or {}).get(k) or {}
                ax.scatter(
                    xs,
                    ys,
                    s=12,
                    color=colours[m],
                    marker="x" if m in refs else "o",
                    alpha=0.8,
                    lw=0.8,
                    label=m + (f" {SIG_MARK}" if vb.get("excludes_zero") else ""),
                )
            _xy_line(ax, xs_all, ys_all)
            ax.set_title(k + (" ↓" if create_metric(k).lower_better else " ↑"), fontsize=10)
            ax.set_xlabel(f"{base} (baseline)", fontsize=8)
            ax.set_ylabel("method", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.legend(fontsize=6, loc="best")
        for ax in list(axes.flat)[len(ms) :]:
            ax.axis("off")
        fig.suptitle(
            f"{tag}: per-image fusion metrics, each method vs {base} (same image; dashed y = x; "
            f"{SIG_MARK} {conf} CI of the mean difference excludes 0)",
            fontsize=10,
        )
        fig.tight_layout()
        out.append(
            (
                f"{tag}: fusion, paired per image vs {base}",
                _save_fig(fig, assets / f"{_slug(tag)}_paired_fusion.png").name,
            )
        )
    names = e.get("names", [])
    for proto in ("zero", "retrain"):
        rs = e.get(proto, {})
        # methods, then refs
        cand = sorted((m for m in meta["methods"] if m in rs and m != base), key=lambda m: m in refs)
        rows = [m for m in cand if rs[m].get("vs_baseline")]
        scat = [m for m in cand if rs[m].get("per_image_AP50") is not None]
        have_base = base in rs and rs[base].get("per_image_AP50") is not None
        if not rows and not (have_base and scat):
            continue
        panels = (1 if rows else 0) + (len(scat) if have_base else 0)
        ncol = min(4, panels)
        nrow = math.ceil(panels / ncol)
        fig, axes = plt.subplots(nrow, ncol, figsize=(3.6 * ncol, 3.4 * nrow), squeeze=False)
        flat = list(axes.flat)
        i = 0
        if rows:  # forest plot of the Δ with its CI
            ax = flat[0]
            i = 1
            y = np.arange(len(rows))[::-1]
            for off, (k, lab), col in ((0.15, DET_COLS[0], "#2b6cb0"), (-0.15, DET_COLS[1], "#c05621")):
                for yy, m in zip(y, rows):
                    vb = rs[m]["vs_baseline"].get(k) or {}
                    if not _finite(vb.get("delta")):
                        continue
                    lo, hi = vb.get("ci") or [math.nan, math.nan]
                    d = vb["delta"]
                    err = [[d - lo], [hi - d]] if _finite(lo) and _finite(hi) else None
                    ax.errorbar(
                        [d],
                        [yy + off],
                        xerr=err,
                        fmt="o",
                        color=col,
                        ms=5,
                        capsize=3,
                        lw=1.2,
                        mfc=col if vb.get("excludes_zero") else "white",
                        label=f"Δ {lab}" if yy == y[0] else None,
                    )
            ax.axvline(0, color="0.4", lw=0.8, ls="--")
            ax.set_yticks(y, [m + (" (ref)" if m in refs else "") for m in rows], fontsize=8)
            ax.set_xlabel(f"Δ vs {base} [{conf} CI]", fontsize=8)
            ax.set_title(f"{proto}: Δ mAP (filled: CI excludes 0)", fontsize=9)
            ax.tick_params(axis="x", labelsize=7)
            ax.legend(fontsize=6, loc="best")
        if have_base:
            bap = [_num(v) for v in rs[base]["per_image_AP50"]]
            for m in scat:
                ax = flat[i]
                i += 1
                map_ = [_num(v) for v in rs[m]["per_image_AP50"]]
                pts = [(x, yv) for x, yv in zip(bap, map_) if math.isfinite(x) and math.isfinite(yv)]
                if pts:
                    xs, ys = zip(*pts)
                    ax.scatter(xs, ys, s=14, color=colours[m], marker="x" if m in refs else "o", alpha=0.8, lw=0.8)
                ax.plot([-0.02, 1.02], [-0.02, 1.02], color="0.45", lw=0.8, ls="--", zorder=0)
                ax.set_xlim(-0.02, 1.02)
                ax.set_ylim(-0.02, 1.02)
                vb = (rs[m].get("vs_baseline") or {}).get("mAP50")
                txt, _ = _delta_cell(vb, True, 3)
                ax.set_title(f"{m}: Δ mAP50 {txt}" if vb else m, fontsize=8)
                ax.set_xlabel(f"{base} AP50 per image", fontsize=8)
                ax.set_ylabel(f"{m} AP50 per image", fontsize=8)
                ax.tick_params(labelsize=7)
        for ax in flat[i:]:
            ax.axis("off")
        what = "frozen judge" if proto == "zero" else f"fine-tuned judge, mean over {meta.get('seeds', 1)} seed(s)"
        fig.suptitle(
            f"{tag}: {proto} ({what}) vs {base}: paired per image ({len(names)} images; dashed y = x)", fontsize=10
        )
        fig.tight_layout()
        out.append(
            (
                f"{tag}: {proto}, paired per image vs {base}",
                _save_fig(fig, assets / f"{_slug(tag)}_paired_{proto}.png").name,
            )
        )
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
        small = np.asarray(
            Image.fromarray(ir.astype(np.uint8)).resize((max(1, W // k), max(1, H // k)), Image.BILINEAR), float
        )
        yy, xx = np.unravel_index(int(small.argmax()), small.shape)
        cx, cy = (xx + 0.5) * W / small.shape[1], (yy + 0.5) * H / small.shape[0]
    side = min(side, H, W)
    x0 = int(round(min(max(cx - side / 2, 0), W - side)))
    y0 = int(round(min(max(cy - side / 2, 0), H - side)))
    return x0, y0, x0 + int(side), y0 + int(side)


def _fused_image(folder, name: str, index: dict) -> Path | None:
    """The fused image of pair ``name`` in ``folder`` found by its stem: ``<name>.png`` first, else any of the
    extensions a user's folder may hold (``.jpg``, ``.jpeg``, ``.bmp``, ``.tif``, ``.tiff``; any case)."""
    if not folder:
        return None
    folder = Path(folder)
    if folder not in index:
        index[folder] = {}
        if folder.is_dir():
            rank = {x: i for i, x in enumerate(_IMG_EXTS)}
            for f in sorted(folder.iterdir(), key=lambda f: (rank.get(f.suffix.lower(), 99), f.name)):
                if f.suffix.lower() in rank and f.is_file():
                    index[folder].setdefault(f.stem, f)
    return index[folder].get(name)


def _open_or_placeholder(p: Path | None, like: Path):
    """``Image.open(p)``, or a grey "no image" placeholder of ``like``'s size when ``p`` is missing."""
    from PIL import Image, ImageDraw

    if p is not None:
        return Image.open(p)
    with Image.open(like) as ref:
        size = ref.size
    im = Image.new("RGB", size, (200, 200, 200))
    ImageDraw.Draw(im).text((10, 10), "no fused image", fill=(90, 90, 90))
    return im


def _grid(results: dict, tag: str, assets: Path, k: int) -> list[dict]:
    from PIL import Image, ImageDraw

    from ..data.datasets import load_dataset

    e = results["datasets"][tag]
    ds = load_dataset(e["dataset"], root=e["root"], split=e["split"], det_labels=None)
    src = {n: (ip, vp) for n, ip, vp in ds.pairs}
    methods = [m for m in results["meta"]["methods"] if m not in results["meta"].get("references", [])]
    index: dict[Path, dict[str, Path]] = {}
    rows = []
    for name, why in _pick_pairs(e, k):
        ip, vp = src[name]
        crop = _crop_box(e, name, ip)
        cols = [("infrared", ip), ("visible", vp)] + [
            (m, _fused_image(e.get("fused_dirs", {}).get(m), name, index)) for m in methods
        ]
        cells = []
        for lab, p in cols:
            with _open_or_placeholder(p, ip) as im:
                im = im.convert("RGB")
                W, H = im.size
                thumb = im.resize((320, max(1, round(H * 320 / W))), Image.BILINEAR)
                s = 320 / W
                ImageDraw.Draw(thumb).rectangle(
                    [crop[0] * s, crop[1] * s, crop[2] * s - 1, crop[3] * s - 1], outline=(255, 220, 0), width=2
                )
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
td.sig.better{color:#13702b;font-weight:600} td.sig.worse{color:#b3261e;font-weight:600}
td.base{color:#777;font-style:italic} tr.baseline td:first-child{font-weight:600}
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
    h = [
        f"<h3>{e(t['title'])}</h3>",
        f"<table class='rank {e(t['kind'])}'><tr>" + "".join(f"<th>{e(c)}</th>" for c in t["head"]) + "</tr>",
    ]
    for r in t["rows"]:
        name = e(r["method"]) + (" <small>(reference)</small>" if r["ref"] else "")
        tds = []
        for c, b, f in zip(r["cells"], r["best"], r["sig"]):
            cls = " ".join(
                x
                for x in (
                    "best" if b else "",
                    f"sig {f}" if f in ("better", "worse", "mixed") else "",
                    "base" if f == "baseline" else "",
                )
                if x
            )
            tds.append(f"<td class='{cls}'>{e(c)}</td>" if cls else f"<td>{e(c)}</td>")
        tr = " ".join(x for x in ("ref" if r["ref"] else "", "baseline" if r["baseline"] else "") if x)
        h.append(f"<tr class='{tr}'><td>{name}</td>{''.join(tds)}</tr>")
    h.append("</table>")
    notes = [t["note"]] if t["note"] else []
    if t["kind"] != "fusion_delta":
        notes.append("green = best fusion method per column; grey italics = reference inputs (not ranked)")
    if t["sig_note"]:
        notes.append(t["sig_note"] + "; green / red text: better / worse than the baseline")
    if notes:
        h.append(f"<p class='note'>{e('; '.join(notes))}.</p>")
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
        f"<code>{e_(meta['judge'])}</code> ({e_(str(meta['judge_weights']))}) · detection labels "
        f"<code>{e_(meta['labels'])}</code></p>",
        f"<p class='meta'>methods: {e_(', '.join(meta['methods']))} (<i>ir</i>, <i>vis</i>: the source images as "
        f"reference rows) · protocols: {e_(', '.join(meta['protocols']))} · retrain preset "
        f"<code>{e_(meta['preset'])}</code>: {rc['epochs']} epochs, batch "
        f"{rc['batch_size']}, lr {rc['lr']}, imgsz {rc['imgsz']}, horizontal flips, seeds 0..{meta['seeds'] - 1}</p>",
    ]
    if meta.get("baseline"):
        body.append(
            f"<p class='meta'>baseline <code>{e_(meta['baseline'])}</code>: every other row is compared with it on "
            f"the same images (paired bootstrap 95 % CIs of the difference, <code>ivfuse.bench.stats</code>); "
            f"{SIG_MARK} marks a CI that excludes 0</p>"
        )
    if meta.get("command"):
        body.append(f"<p class='meta'>command: <code>{e_(meta['command'])}</code></p>")
    for tag, tabs in tables(results):
        e = results["datasets"][tag]
        body.append(
            f"<h2>{e_(tag)} — {e['n_pairs']} pairs"
            + (f", {e['labels']} labels" if e["labels"] else ", no labels")
            + "</h2>"
        )
        for p, why in e["skipped"].items():
            body.append(f"<div class='skip'><b>{e_(p)}</b> skipped: {e_(why)}</div>")
        body += [_html_table(t) for t in tabs]
        for caption, fname in _plots(results, tag, assets):
            body.append(
                f"<figure><img class='plot' src='assets/{e_(fname)}' alt='{e_(caption)}'>"
                f"<figcaption class='note'>{e_(caption)}</figcaption></figure>"
            )
        rows = _grid(results, tag, assets, grid_pairs)
        if rows:
            ncol = len(rows[0]["cells"])
            body.append(f"<h3>{e_(tag)} · images (yellow square: the zoomed crop)</h3>")
            for r in rows:
                body.append(
                    f"<p class='note'><b>{e_(r['name'])}</b>: {e_(r['why'])}; "
                    f"crop x {r['crop'][0]}–{r['crop'][2]}, y {r['crop'][1]}–{r['crop'][3]}</p>"
                )
                body.append(f"<div class='grid' style='grid-template-columns:repeat({ncol},1fr)'>")
                for kind in ("full", "zoom"):
                    for c in r["cells"]:
                        body.append(
                            f"<figure><img src='assets/{e_(c[kind])}' alt='{e_(c['label'])} {kind}'>"
                            f"<figcaption>{e_(c['label'])}{' (zoom)' if kind == 'zoom' else ''}</figcaption></figure>"
                        )
                body.append("</div>")
    page = (
        f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>ivfuse bench</title><style>{_CSS}</style>"
        f"<script>{_JS}</script></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )
    return atomic_write_text(out / "report.html", page)

"""``ivfuse.bench.report`` with paired significance (issue #19): the Δ vs baseline [95 % CI] columns and their
marker, ``results.tex``, ``results_per_image.csv``, the image grid on a user's ``.jpg`` folder and the paired plots —
on a synthetic results dict (no training, no detector; a tiny ``folder`` dataset for the grid)."""

from __future__ import annotations

import copy
import csv
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ivfuse.bench import PRESETS
from ivfuse.bench.report import SIG_MARK, _grid, latex, markdown, per_image_csv, tables, write_report, write_results

TAG = "folder:all"
NAMES = ["p0", "p1", "p2"]
USER = "my_net&#%"  # a user's dir: method whose label needs LaTeX escaping; its folder holds .jpg files
METHODS = ["ir", "vis", "base", "m_a", "m_b", USER]
REFS = ["ir", "vis"]

# per-image fusion values: (en ↑, nabf ↓) per method, one per pair
FUS = {
    "ir": ([5.0, 5.2, 5.4], [0.0, 0.0, 0.0]),
    "vis": ([6.5, 6.6, 6.7], [0.0, 0.0, 0.0]),
    "base": ([6.0, 6.1, 6.2], [0.010, 0.012, 0.014]),
    "m_a": ([6.5, 6.6, 6.7], [0.020, 0.022, 0.024]),
    "m_b": ([5.7, 5.8, 5.9], [0.000, 0.001, 0.002]),
    USER: ([6.2, float("nan"), 6.4], [0.011, 0.013, 0.015]),
}


def _ci(delta, lo, hi, n=3, **extra):
    return {
        "delta": delta,
        "ci": [lo, hi],
        "excludes_zero": bool(lo > 0 or hi < 0),
        "n_images": n,
        "method": "synthetic",
        "n_resamples": 100,
        **extra,
    }


# fusion: m_a better en (CI > 0), nabf CI contains 0; m_b worse en, better nabf (both exclude 0); USER none
FUS_VB = {
    "ir": {"en": _ci(-0.9, -1.1, -0.7), "nabf": _ci(-0.012, -0.014, -0.010)},
    "vis": {"en": _ci(0.5, 0.4, 0.6), "nabf": _ci(-0.012, -0.014, -0.010)},
    "m_a": {"en": _ci(0.5, 0.2, 0.8), "nabf": _ci(0.01, -0.01, 0.03)},
    "m_b": {"en": _ci(-0.3, -0.5, -0.1), "nabf": _ci(-0.011, -0.013, -0.009)},
    USER: {"en": _ci(0.2, -0.1, 0.5), "nabf": _ci(0.001, -0.002, 0.004)},
}
# detection: (mAP50, mAP50_95, per-image AP50, vs_baseline mAP50, vs_baseline mAP50_95)
ZERO = {
    "ir": (0.90, 0.60, [0.9, None, 0.8], _ci(0.5, 0.3, 0.7), _ci(0.3, 0.1, 0.5)),
    "vis": (0.20, 0.10, [0.2, None, 0.1], _ci(-0.2, -0.4, 0.05), _ci(-0.1, -0.3, 0.02)),
    "base": (0.40, 0.25, [0.4, None, 0.5], None, None),
    "m_a": (0.60, 0.35, [0.7, None, 0.6], _ci(0.2, 0.05, 0.35), _ci(0.1, -0.02, 0.2)),
    "m_b": (0.50, 0.30, [0.5, None, 0.4], _ci(0.1, -0.05, 0.25), _ci(0.05, 0.01, 0.09)),
    USER: (0.30, 0.20, [0.3, None, 0.2], _ci(-0.1, -0.3, 0.1), _ci(-0.05, -0.2, 0.1)),
}
RETRAIN = {
    "ir": (0.80, 0.50, [0.8, None, 0.7], _ci(0.1, -0.1, 0.3, n_seeds=[2, 2]), _ci(0.05, -0.1, 0.2, n_seeds=[2, 2])),
    "vis": (0.30, 0.15, [0.3, None, 0.2], _ci(-0.4, -0.6, -0.2, n_seeds=[2, 2]), _ci(-0.3, -0.5, -0.1, n_seeds=[2, 2])),
    "base": (0.70, 0.45, [0.7, None, 0.6], None, None),
    "m_a": (
        0.75,
        0.40,
        [0.75, None, 0.65],
        _ci(0.05, -0.02, 0.12, n_seeds=[2, 2]),
        _ci(-0.05, -0.1, 0.01, n_seeds=[2, 2]),
    ),
    "m_b": (
        0.65,
        0.42,
        [0.6, None, 0.55],
        _ci(-0.05, -0.09, -0.01, n_seeds=[2, 2]),
        _ci(-0.03, -0.1, 0.04, n_seeds=[2, 2]),
    ),
    USER: (0.60, 0.38, [0.6, None, 0.5], _ci(-0.1, -0.2, 0.01, n_seeds=[2, 2]), _ci(-0.07, -0.2, 0.05, n_seeds=[2, 2])),
}
STD = 0.01  # retrain std of every row (two seeds)

COLOURS = {"base": (40, 40, 200), "m_a": (200, 40, 40), "m_b": (40, 200, 40), USER: (230, 180, 20)}


def _fusion_entry(m):
    en, nabf = FUS[m]
    per = {n: {"en": en[i], "nabf": nabf[i]} for i, n in enumerate(NAMES)}
    mean = {"en": float(np.nanmean(en)), "nabf": float(np.mean(nabf))}
    r = {"per_image": per, "mean": mean, "n_images": 3}
    if m in FUS_VB:
        r["vs_baseline"] = copy.deepcopy(FUS_VB[m])
    return r


def _det_entry(m, table, retrain):
    m50, m95, per, v50, v95 = table[m]
    r = {"mAP50": m50, "mAP50_95": m95, "n_images": 3, "per_image_AP50": list(per)}
    if retrain:
        r.update(n_seeds=2, mAP50_std=STD, mAP50_95_std=STD, per_class_AP50={"person": m50}, seeds=[])
    else:
        r["per_class"] = {"person": {"AP50": m50, "AP50_95": m95, "n_gt": 4}}
    if v50 is not None:
        r["vs_baseline"] = {"mAP50": copy.deepcopy(v50), "mAP50_95": copy.deepcopy(v95)}
    return r


def make_results(root: Path, fused: dict[str, Path] | None = None, significance: bool = True) -> dict:
    e = {
        "dataset": "folder",
        "split": "all",
        "root": str(root),
        "n_pairs": 3,
        "names": list(NAMES),
        "labels": "infrared",
        "class_names": ["person"],
        "train_split": "all",
        "n_train": 3,
        "skipped": {"seg": "no masks"},
        "fusion": {m: _fusion_entry(m) for m in METHODS},
        "zero": {m: _det_entry(m, ZERO, False) for m in METHODS},
        "retrain": {m: _det_entry(m, RETRAIN, True) for m in METHODS},
        "seg": {},
        "speed": {
            "m_a": {"s_per_image": 0.0123, "params": 1234, "size": "80x64", "device": "cpu", "threads": 1, "calls": 3}
        },
        "fused_dirs": {m: str(p) for m, p in (fused or {}).items()},
    }
    if significance:
        e["significance"] = {
            "baseline": "base",
            "confidence": 0.95,
            "seed": 0,
            "n_resamples": {"fusion": 10000, "zero": 1000, "retrain": 1000},
            "how": {"fusion": "BCa", "zero": "image bootstrap", "retrain": "two-level bootstrap"},
        }
    else:
        for proto in ("fusion", "zero", "retrain"):
            for r in e[proto].values():
                r.pop("vs_baseline", None)
    meta = {
        "methods": list(METHODS),
        "references": list(REFS),
        "metrics": ["en", "nabf"],
        "judge": "yolov5n",
        "seeds": 2,
        "preset": "cpu",
        "recipe": PRESETS["cpu"].as_dict(),
        "protocols": ["fusion", "zero", "retrain"],
        "device": "cpu",
        "torch_threads": 1,
        "torch": "x",
        "judge_weights": "default (COCO)",
        "labels": "infrared",
        "baseline": "base" if significance else None,
        "methods_identity": {m: ({"method": m, "folder": "/x"} if m == USER else {"method": m}) for m in METHODS},
    }
    return {"meta": meta, "datasets": {TAG: e}}


def _by_kind(res):
    ((tag, tabs),) = tables(res)
    assert tag == TAG
    return {t["kind"]: t for t in tabs}


def _col(t, head_start):
    (j,) = [i for i, h in enumerate(t["head"]) if h.startswith(head_start)]
    return j - 1  # cells exclude the method column


def _expected_det(v, digits=4):
    txt = f"{v['delta']:+.{digits}f} [{v['ci'][0]:.{digits}f}, {v['ci'][1]:.{digits}f}]"
    return txt + f" {SIG_MARK}" if v["excludes_zero"] else txt


# ------------------------------------------------------------------------------------------------ tables
def test_detection_delta_columns_and_marker_exactly_where_the_ci_excludes_zero(tmp_path):
    k = _by_kind(make_results(tmp_path))
    for proto, table in (("zero", ZERO), ("retrain", RETRAIN)):
        t = k[proto]
        assert t["head"][:5] == [
            "method",
            "mAP50 ↑",
            "mAP50:95 ↑",
            "Δ mAP50 vs base [95 % CI]",
            "Δ mAP50:95 vs base [95 % CI]",
        ]
        assert t["head"][5:] == ["AP50 person ↑"]  # the existing columns are kept
        j50, j95 = _col(t, "Δ mAP50 vs"), _col(t, "Δ mAP50:95 vs")
        rows = {r["method"]: r for r in t["rows"]}
        assert set(rows) == set(METHODS)
        assert rows["base"]["cells"][j50] == rows["base"]["cells"][j95] == "baseline" and rows["base"]["baseline"]
        for m in METHODS:
            if m == "base":
                continue
            for j, v in ((j50, table[m][3]), (j95, table[m][4])):
                cell = rows[m]["cells"][j]
                assert cell == _expected_det(v), (proto, m, cell)
                assert (SIG_MARK in cell) == v["excludes_zero"]
                assert rows[m]["sig"][j] == (
                    None if not v["excludes_zero"] else "better" if v["delta"] > 0 else "worse"
                )
                assert not rows[m]["best"][j]  # Δ columns are not ranked
        if proto == "retrain":
            assert rows["m_a"]["cells"][0] == "0.7500 ± 0.0100"  # ± std over seeds kept
    # zero: best mAP50 among fusion methods is m_a (the ir reference, higher, is not ranked)
    z = {r["method"]: r for r in k["zero"]["rows"]}
    assert z["m_a"]["best"][0] and not z["ir"]["best"][0] and z["m_b"]["second"][0] and not z["base"]["second"][0]
    # exactly these Δ cells carry the marker: ir (2), m_a mAP50, m_b mAP50:95 (zero); vis (2), m_b mAP50 (retrain)
    marked = {
        (proto, r["method"], t["head"][j + 1])
        for proto in ("zero", "retrain")
        for t in [k[proto]]
        for r in t["rows"]
        for j, c in enumerate(r["cells"])
        if SIG_MARK in c
    }
    d50, d95 = "Δ mAP50 vs base [95 % CI]", "Δ mAP50:95 vs base [95 % CI]"
    assert marked == {
        ("zero", "ir", d50),
        ("zero", "ir", d95),
        ("zero", "m_a", d50),
        ("zero", "m_b", d95),
        ("retrain", "vis", d50),
        ("retrain", "vis", d95),
        ("retrain", "m_b", d50),
    }


def test_fusion_delta_table_and_summary_column(tmp_path):
    k = _by_kind(make_results(tmp_path))
    f, d = k["fusion"], k["fusion_delta"]
    assert f["head"][-2:] == ["mean rank ↓", "Δ vs base [95 % CI]: metrics better / worse"]
    rows = {r["method"]: r for r in f["rows"]}
    assert rows["base"]["cells"][-1] == "baseline"
    assert rows["m_a"]["cells"][-1] == f"1 better / 0 worse {SIG_MARK}" and rows["m_a"]["sig"][-1] == "better"
    assert rows["m_b"]["cells"][-1] == f"1 better / 1 worse {SIG_MARK}" and rows["m_b"]["sig"][-1] == "mixed"
    assert rows[USER]["cells"][-1] == "0 better / 0 worse" and rows[USER]["sig"][-1] is None
    assert rows["m_a"]["best"][0] and not rows["vis"]["best"][0]  # en: m_a best among fusion methods, vis not ranked
    # the compact Δ table: one column per metric, same row order as the ranking
    assert d["head"] == ["method", "Δ en ↑", "Δ nabf ↓"]
    assert [r["method"] for r in d["rows"]] == [r["method"] for r in f["rows"]]
    drows = {r["method"]: r for r in d["rows"]}
    assert drows["base"]["cells"] == ["baseline", "baseline"]
    assert drows["m_a"]["cells"] == [f"+0.500 [0.200, 0.800] {SIG_MARK}", "+0.0100 [-0.0100, 0.0300]"]
    assert drows["m_a"]["sig"] == ["better", None]
    assert drows["m_b"]["cells"] == [f"-0.300 [-0.500, -0.100] {SIG_MARK}", f"-0.01100 [-0.01300, -0.00900] {SIG_MARK}"]
    assert drows["m_b"]["sig"] == ["worse", "better"]  # nabf: lower is better
    assert SIG_MARK not in "".join(drows[USER]["cells"])


def test_markdown_and_html_show_the_marker_on_the_same_cells(tmp_path):
    res = make_results(tmp_path)
    md = markdown(res)
    zero_md = md.split("· zero:")[1].split("###")[0]
    lines = {ln.split("|")[1].strip(): ln for ln in zero_md.splitlines() if ln.startswith("| ") and "---" not in ln}
    assert "| baseline | baseline |" in lines["base"]
    assert lines["m_a"].count(SIG_MARK) == 1 and f"+0.2000 [0.0500, 0.3500] {SIG_MARK}" in lines["m_a"]
    assert lines[USER.replace("|", "\\|")].count(SIG_MARK) == 0 and lines["*ir* (reference)"].count(SIG_MARK) == 2
    assert f"{SIG_MARK} 95 % CI of the paired difference vs base excludes 0" in zero_md
    write_report_tables = re.findall(r"<td class='sig (better|worse|mixed)'>([^<]*)</td>", _html_tables(res))
    n_marked = sum(c.count(SIG_MARK) for t in tables(res)[0][1] for r in t["rows"] for c in r["cells"])
    assert len(write_report_tables) == n_marked and all(SIG_MARK in c for _, c in write_report_tables)
    assert ("better", f"+0.2000 [0.0500, 0.3500] {SIG_MARK}") in write_report_tables
    assert ("worse", f"-0.4000 [-0.6000, -0.2000] {SIG_MARK}") in write_report_tables  # retrain vis


def _html_tables(res):
    from ivfuse.bench.report import _html_table

    return "\n".join(_html_table(t) for t in tables(res)[0][1])


def test_no_significance_no_delta_columns(tmp_path):
    k = _by_kind(make_results(tmp_path, significance=False))
    assert "fusion_delta" not in k
    assert k["zero"]["head"] == ["method", "mAP50 ↑", "mAP50:95 ↑", "AP50 person ↑"]
    assert k["fusion"]["head"][-1] == "mean rank ↓"
    assert SIG_MARK not in markdown(make_results(tmp_path, significance=False))


# ------------------------------------------------------------------------------------------------ LaTeX
def _strip_escapes(s: str) -> str:
    return re.sub(r"\\[{}&%#$_]", "", s)


def _tabulars(tex: str) -> list[tuple[str, list[str], str]]:
    """``(column spec, body lines, caption)`` of every tabular."""
    out = []
    for m in re.finditer(
        r"\\caption\{(.*?)\}\n.*?\\begin\{tabular\}\{([lr]+)\}\n(.*?)\\end\{tabular\}", tex, re.DOTALL
    ):
        out.append((m.group(2), [ln for ln in m.group(3).splitlines() if ln.endswith("\\\\")], m.group(1)))
    return out


def test_results_tex_structure_best_bold_second_underlined(tmp_path):
    res = make_results(tmp_path)
    tex = latex(res)
    assert tex.isascii()  # pdflatex-safe: every symbol mapped to a macro
    # fusion, Δ, zero, retrain, speed
    assert tex.count("\\begin{tabular}") == tex.count("\\toprule") == tex.count("\\bottomrule") == 5
    flat = _strip_escapes(tex)
    depth = 0
    for c in flat:  # balanced braces
        depth += {"{": 1, "}": -1}.get(c, 0)
        assert depth >= 0
    assert depth == 0 and tex.count("\\begin{") == tex.count("\\end{")
    tabs = _tabulars(tex)
    assert len(tabs) == 5
    for spec, lines, _ in tabs:
        head = lines[0]
        n = len(spec)
        for ln in lines:  # header and every row: as many cells as columns
            assert len(re.split(r"(?<!\\)&", ln)) == n, ln
        assert len(re.split(r"(?<!\\)&", head)) == n
    captions = [c for _, _, c in tabs]
    assert captions[2] == "folder:all $\\cdot$ zero: frozen yolov5n (infrared labels)"
    zero = {
        re.split(r"(?<!\\)&", ln)[0].strip(): [c.strip() for c in re.split(r"(?<!\\)&", ln[:-2])[1:]]
        for ln in tabs[2][1][1:]
    }
    esc, MA, MB = "my\\_net\\&\\#\\%", "m\\_a", "m\\_b"  # escaped labels
    assert esc in zero and "\\textit{ir} (reference)" in zero
    assert zero[MA][0] == "\\textbf{0.6000}" and zero[MB][0] == "\\underline{0.5000}"  # mAP50: best, second
    assert zero["base"][0] == "0.4000" and zero[esc][0] == "0.3000" and zero["\\textit{ir} (reference)"][0] == "0.9000"
    assert zero["base"][2:4] == ["baseline", "baseline"]
    assert zero[MA][2] == "+0.2000 [0.0500, 0.3500] $^{\\dagger}$" and zero[MA][3] == "+0.1000 [$-$0.0200, 0.2000]"
    retrain = {
        re.split(r"(?<!\\)&", ln)[0].strip(): [c.strip() for c in re.split(r"(?<!\\)&", ln[:-2])[1:]]
        for ln in tabs[3][1][1:]
    }
    assert (
        retrain[MA][0] == "\\textbf{0.7500 $\\pm$ 0.0100}" and retrain["base"][0] == "\\underline{0.7000 $\\pm$ 0.0100}"
    )
    # fusion: nabf (lower better) best m_b, second base; en best m_a (vis, higher, is a reference)
    fus = {
        re.split(r"(?<!\\)&", ln)[0].strip(): [c.strip() for c in re.split(r"(?<!\\)&", ln[:-2])[1:]]
        for ln in tabs[0][1][1:]
    }
    assert fus[MB][1] == "\\textbf{0.0010}" and fus["base"][1] == "\\underline{0.0120}"
    assert fus[MA][0].startswith("\\textbf{") and not fus["\\textit{vis} (reference)"][0].startswith("\\textbf")
    assert "\\usepackage{booktabs}" in tex and "\\midrule" in tex


def test_results_tex_compiles_with_pdflatex(tmp_path):
    exe = shutil.which("pdflatex")
    if exe is None:
        pytest.skip(
            "pdflatex not installed (structure is checked by test_results_tex_structure_best_bold_second_underlined)"
        )
    (tmp_path / "results.tex").write_text(latex(make_results(tmp_path)))
    r = subprocess.run(
        [exe, "-interaction=nonstopmode", "-halt-on-error", "results.tex"],
        check=False,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout[-3000:]
    assert (tmp_path / "results.pdf").stat().st_size > 1000


# ------------------------------------------------------------------------------------------------ CSV
def test_per_image_csv_rows_and_values(tmp_path):
    res = make_results(tmp_path)
    rows = list(csv.reader(io.StringIO(per_image_csv(res))))
    assert rows[0] == ["dataset", "protocol", "method", "image", "measure", "value"]
    body = rows[1:]
    n = len(METHODS)
    assert len(body) == n * 3 * 2 + n * 3 + n * 3  # fusion: methods × images × metrics; zero, retrain: methods × images
    assert sum(r[1] == "fusion" for r in body) == n * 3 * 2 and sum(r[1] == "zero" for r in body) == n * 3
    got = {(r[1], r[2], r[3], r[4]): r[5] for r in body}
    assert len(got) == len(body)  # one row per (protocol, method, image, measure)
    assert float(got[("fusion", "m_a", "p1", "en")]) == 6.6 and float(got[("fusion", "base", "p2", "nabf")]) == 0.014
    assert got[("fusion", USER, "p1", "en")] == ""  # NaN written empty
    # no ground truth
    assert float(got[("zero", "m_b", "p2", "AP50")]) == 0.4 and got[("zero", "m_b", "p1", "AP50")] == ""
    assert float(got[("retrain", "m_a", "p0", "AP50")]) == 0.75
    assert all(r[0] == TAG for r in body)
    # the same numbers come back from a JSON round trip (NaN -> null)
    write_results(res, tmp_path / "out")
    strict = json.loads(
        (tmp_path / "out" / "results.json").read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON {c}")
    )
    assert (tmp_path / "out" / "results_per_image.csv").read_text() == per_image_csv(strict) == per_image_csv(res)
    assert (tmp_path / "out" / "results.tex").read_text() == latex(res)
    assert (tmp_path / "out" / "results.md").read_text() == markdown(strict)


# ------------------------------------------------------------------------------------------------ grid + plots
def _dataset_and_fused(tmp_path: Path, pair_dirs) -> dict[str, Path]:
    """Fused folders: registered rows as <pair>.png, the user's folder as <pair>.jpg only (solid colours)."""
    fused = {}
    for m, col in COLOURS.items():
        d = tmp_path / "fused" / ("user" if m == USER else m)
        d.mkdir(parents=True)
        for n in NAMES:
            img = Image.new("RGB", (80, 64), col)
            img.save(d / f"{n}.jpg" if m == USER else d / f"{n}.png")
        fused[m] = d
    return fused


def test_grid_finds_a_users_jpg_image(tmp_path, pair_dirs):
    fused = _dataset_and_fused(tmp_path, pair_dirs)
    res = make_results(tmp_path, fused)
    res["datasets"][TAG]["labels"] = None  # the folder dataset has no boxes: crops around the hottest IR region
    assets = tmp_path / "assets"
    assets.mkdir()
    rows = _grid(res, TAG, assets, 2)
    assert len(rows) == 2
    for r in rows:
        labels = [c["label"] for c in r["cells"]]
        assert labels == ["infrared", "visible", "base", "m_a", "m_b", USER]
        cell = r["cells"][-1]
        for kind in ("full", "zoom"):
            with Image.open(assets / cell[kind]) as im:
                px = np.asarray(im.convert("RGB"), dtype=np.float64).reshape(-1, 3).mean(0)
            assert np.abs(px - COLOURS[USER]).max() < 12, (kind, px)  # the user's .jpg, not a placeholder
        with Image.open(assets / r["cells"][3]["zoom"]) as im:  # m_a's .png
            assert np.abs(np.asarray(im.convert("RGB"), float).reshape(-1, 3).mean(0) - COLOURS["m_a"]).max() < 12
    # a missing image is a grey placeholder, not a crash
    (fused[USER] / f"{rows[0]['name']}.jpg").unlink()
    rows = _grid(res, TAG, assets, 2)
    with Image.open(assets / rows[0]["cells"][-1]["full"]) as im:
        assert np.asarray(im.convert("L"), float).mean() > 150


def test_report_writes_one_paired_plot_per_protocol(tmp_path, pair_dirs):
    fused = _dataset_and_fused(tmp_path, pair_dirs)
    res = make_results(tmp_path, fused)
    res["datasets"][TAG]["labels"] = None
    out = tmp_path / "out"
    page = write_report(res, out).read_text()
    slug = "folder_all"
    for proto in ("fusion", "zero", "retrain"):
        f = out / "assets" / f"{slug}_paired_{proto}.png"
        with Image.open(f) as im:
            im.load()
            assert im.size[0] > 300 and im.size[1] > 200
            assert np.asarray(im.convert("L"), float).std() > 5  # something drawn
        assert f"src='assets/{f.name}'" in page
    assert "baseline <code>base</code>" in page and "class='sig better'" in page and "class='base'" in page
    # without a baseline: no paired plots, no Δ columns
    out2 = tmp_path / "out2"
    res2 = make_results(tmp_path, fused, significance=False)
    res2["datasets"][TAG]["labels"] = None
    page2 = write_report(res2, out2).read_text()
    assert not list((out2 / "assets").glob("*_paired_*.png")) and "Δ" not in page2

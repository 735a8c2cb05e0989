"""``ivfuse bench``: rank fusion methods by fusion metrics, two detection protocols, segmentation and speed.

>>> import ivfuse.bench
>>> res = ivfuse.bench.run_bench("average,gff", "msrs:dev-val,tno", protocols="fusion,zero,retrain", out="bench")
>>> res["datasets"]["msrs:dev-val"]["zero"]["gff"]["mAP50"]

Writes ``bench/results.json|csv|md`` and ``bench/report.html`` (+ ``bench/assets``); fused images and every
per-method/per-protocol result are cached under ``bench/cache`` (see :mod:`ivfuse.bench.cache`), so a rerun,
or a run with one more method, only computes what is new. See ``docs/bench.md``.
"""

from __future__ import annotations

from .._lazy import lazy_exports
from .recipes import LABEL_SETS, PRESETS, PROTOCOLS, Recipe

_EXPORTS = {
    "runner": ["run_bench"],
    "cache": ["BenchCache", "method_key", "state_hash"],
    "protocols": ["parse_data"],
    "references": ["REFERENCES", "SourceImage"],
    "report": ["write_report", "write_results"],
}
__getattr__, __dir__, _lazy_names = lazy_exports(__name__, _EXPORTS)
__all__ = ["LABEL_SETS", "PRESETS", "PROTOCOLS", "Recipe", *_lazy_names]

"""``ivfuse list``: the registered methods, metrics, datasets, detectors or segmenters, defaults marked."""

from __future__ import annotations

import argparse

HELP = "list methods, metrics, datasets, detectors or segmenters"
WHAT = ("methods", "metrics", "datasets", "detectors", "segmenters")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("what", choices=WHAT, help="what to list")


def _first_line(obj) -> str:
    doc = (obj.__doc__ or "").strip().splitlines()
    return doc[0] if doc else ""


def run(a: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"ivfuse {a.what}")
    if a.what == "metrics":
        from ..metrics import DEFAULT_METRICS, METRICS

        for c in ("name", "better", "default", "reference"):
            t.add_column(c)
        for n in METRICS.names():
            m = METRICS.get(n)
            t.add_row(n, "lower" if m.lower_better else "higher", "yes" if n in DEFAULT_METRICS else "", m.reference)
    elif a.what == "datasets":
        from ..data import DATASETS

        for c in ("name", "splits", "labels", "notes"):
            t.add_column(c)
        for n in DATASETS.names():
            s = DATASETS.get(n)
            det = f"det ({s.det_format})" if s.det_dirs else ""
            labels = ", ".join(filter(None, [det, "seg" if s.seg_dirs else ""]))
            t.add_row(n, ", ".join(s.splits), labels or "-", s.note)
    else:
        if a.what == "methods":
            from ..fusion import DEFAULT_METHOD as default
            from ..models import MODELS as registry
        elif a.what == "detectors":
            from ..tasks.detectors import DEFAULT_DETECTOR as default
            from ..tasks.detectors import DETECTORS as registry
        else:
            from ..tasks.segmenters import DEFAULT_SEGMENTER as default
            from ..tasks.segmenters import SEGMENTERS as registry
        t.add_column("name")
        t.add_column("description")
        for n in registry.names():
            plugin = f" (plugin: {registry.plugins[n]})" if n in registry.plugins else ""
            t.add_row(n + (" (default)" if n == default else ""), _first_line(registry.get(n)) + plugin)
    Console(width=160).print(t)
    return 0

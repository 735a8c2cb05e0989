"""Fixed development splits of the labelled data in ``../shared``, kept as list files in the package.

**MSRS dev split** (``msrs_dev.tsv``; splits ``dev-train`` / ``dev-val`` of the ``msrs`` dataset). The 275 labelled
MSRS pairs of ``../shared/data/MSRS`` are 34 pairs of the official *train* split and 241 of the official *test*
split. Rule:

* ``dev-val``: the official-test pairs whose ``sha256("ivfuse-msrs-dev:" + name)`` is 0–3 modulo 10
  (104 pairs: 54 day, 50 night). Every method is *judged* here and never trained or tuned on it.
* ``dev-train``: everything else (171 pairs: the 34 official-train pairs and 137 official-test pairs).

The official-train pairs are never in ``dev-val``, so models trained on the official MSRS train split (such as the
first shipped MetaFusion model) are still judged on unseen images. :func:`msrs_dev_split` recomputes the rule; a
test checks that it gives the shipped list.
"""

from __future__ import annotations

import csv
import hashlib
from importlib import resources

__all__ = ["msrs_dev_split", "read_split_file", "DEV_SPLITS"]

DEV_SPLITS = ("dev-train", "dev-val")


def msrs_dev_split(name: str, official_split: str) -> str:
    """``"dev-val"`` or ``"dev-train"`` for one MSRS pair (``official_split`` is ``"train"`` or ``"test"``)."""
    if official_split == "test" and int(hashlib.sha256(f"ivfuse-msrs-dev:{name}".encode()).hexdigest(), 16) % 10 < 4:
        return "dev-val"
    return "dev-train"


def read_split_file(filename: str) -> dict[str, str]:
    """``{pair name: split}`` from a TSV list file shipped in :mod:`ivfuse.data.splits` (columns name, split)."""
    text = (resources.files("ivfuse.data.splits") / filename).read_text()
    return {r["name"]: r["split"] for r in csv.DictReader(text.splitlines(), delimiter="\t")}

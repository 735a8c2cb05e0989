"""The C allocator setting (``ivfuse.allocator``): freed tensors stay in the heap for reuse, the user's own choice
wins, and the memory guard counts what the heap keeps."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from ivfuse import allocator

#: run in a fresh interpreter (the setting is per process): tune, then allocate, touch and free 256 MB
PROBE = r"""
import json, torch
from ivfuse import allocator
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096
tuned = allocator.tune()
before = rss()
x = torch.ones(64 * 2**20)  # 256 MiB, written
del x
after_free = rss()
kept = allocator.retained()
allocator.release()
print(json.dumps({"tuned": tuned, "kept_rss": after_free - before, "retained": kept,
                  "after_release": allocator.retained(), "rss_released": rss() - before}))
"""

GLIBC = allocator._glibc() is not None


def _probe(**env: str) -> dict:
    e = {k: v for k, v in os.environ.items() if k not in ("IVFUSE_MALLOC", "MALLOC_TRIM_THRESHOLD_", "LD_PRELOAD")}
    out = subprocess.run([sys.executable, "-c", PROBE], env={**e, **env}, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_freed_tensors_stay_in_the_heap_and_release_gives_them_back():
    r = _probe()
    if not GLIBC:  # macOS, Windows, musl: nothing is changed
        assert r["tuned"] is False and r["retained"] == 0
        return
    mib = 2**20
    assert r["tuned"] is True
    assert r["kept_rss"] > 200 * mib, r  # the freed 256 MiB stayed resident for the next tensor
    assert r["retained"] >= 256 * mib, r  # ... and are counted as reusable
    assert r["after_release"] < 16 * mib, r  # release(): handed back, no longer counted
    assert r["rss_released"] < 64 * mib, r


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc only")
@pytest.mark.parametrize(
    "env", [{"IVFUSE_MALLOC": "system"}, {"MALLOC_TRIM_THRESHOLD_": "131072"}], ids=["opt-out", "user-setting"]
)
def test_the_users_choice_is_left_alone(env):
    r = _probe(**env)
    assert r["tuned"] is False and r["retained"] == 0
    assert r["kept_rss"] < 64 * 2**20, r  # glibc's default: the 256 MiB block was unmapped when freed


def test_the_memory_guard_counts_what_the_heap_keeps(monkeypatch):
    from ivfuse import tiling

    monkeypatch.delenv("IVFUSE_AVAILABLE_MEMORY", raising=False)
    base = tiling.available_memory("cpu")
    if base is None:  # no /proc/meminfo
        pytest.skip("no /proc/meminfo on this system")
    monkeypatch.setattr(tiling, "retained", lambda: 64 * 2**30)
    assert tiling.available_memory("cpu") - base > 63 * 2**30

"""Inference speed of the fusion methods and task networks at 640×480 on this machine's CPU (or --device).

    python benchmarks/bench_models.py [--repeat 3] [--device cpu] [--threads N] [--methods a,b] [--fusion-only]

Peers (seafusion, tardal, ifcnn, didfuse) are timed like every registered method, with their official weights
from the shared folder (skipped with the reason when absent). One thread, warm, peers only:

    OMP_NUM_THREADS=1 python benchmarks/bench_models.py --threads 1 --fusion-only \
        --methods seafusion,tardal,ifcnn,didfuse

Prints a Markdown table: fusion methods (IR + RGB visible -> RGB fused), YOLOv5n forward and predict, ESPNetv2
forward, Faster R-CNN (MobileNetV3) forward.
"""

from __future__ import annotations

import argparse

import torch

import ivfuse
from common import timeit
from ivfuse.tasks import ESPNetv2Seg, create_detector


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--methods", default=None, help="comma-separated fusion methods (default: all registered)")
    ap.add_argument("--fusion-only", action="store_true", help="skip the detector/segmenter rows")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    g = torch.Generator().manual_seed(0)
    ir, vis = torch.rand(1, 1, 480, 640, generator=g).to(dev), torch.rand(1, 3, 480, 640, generator=g).to(dev)
    print(f"# model speed at 640x480, {a.device}, torch threads {torch.get_num_threads()}, median of {a.repeat}")
    print("| model | ms | params |\n|---|---:|---:|")
    for name in a.methods.split(",") if a.methods else ivfuse.list_models():
        try:
            m = ivfuse.create_model(name).to(dev)
        except ivfuse.IvfuseError as e:
            print(f"| {name} | skipped: {e} | |")
            continue
        with torch.inference_mode():
            t = timeit(lambda: m(ir, vis), a.repeat)
        print(f"| fuse: {name} | {t * 1000:.0f} | {sum(p.numel() for p in m.parameters()):,} |")
    if a.fusion_only:
        return
    from ivfuse.models.metafusion import MetaFusionNet

    paper = MetaFusionNet(width=1.0).to(dev).eval()
    with torch.inference_mode():
        t = timeit(lambda: paper(ir, vis), a.repeat)
    print(
        f"| fuse: metafusion F at paper width (untrained) | {t * 1000:.0f} | "
        f"{sum(p.numel() for p in paper.parameters()):,} |"
    )
    for det_name, kw in (("yolov5n", {"weights": None}), ("fasterrcnn_mobilenet_v3_large_fpn", {})):
        det = create_detector(det_name, **kw).to(dev).eval()
        with torch.inference_mode():
            if det_name.startswith("yolo"):
                t = timeit(lambda: det.net(vis), a.repeat)
                print(f"| {det_name} forward | {t * 1000:.0f} | {sum(p.numel() for p in det.parameters()):,} |")
                t = timeit(lambda: det.predict([vis[0].cpu()]), a.repeat)
                print(f"| {det_name} predict (letterbox + NMS) | {t * 1000:.0f} | |")
            else:
                t = timeit(lambda: det.predict([vis[0]]), a.repeat)
                print(f"| {det_name} predict | {t * 1000:.0f} | {sum(p.numel() for p in det.parameters()):,} |")
    seg = ESPNetv2Seg(20).to(dev).eval()
    with torch.inference_mode():
        t = timeit(lambda: seg(vis), a.repeat)
    print(f"| espnetv2 forward | {t * 1000:.0f} | {sum(p.numel() for p in seg.parameters()):,} |")


if __name__ == "__main__":
    main()

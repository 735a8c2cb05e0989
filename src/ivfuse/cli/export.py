"""``ivfuse export``: a method to ONNX (dynamic batch/height/width), run by onnxruntime as ``--method onnx:FILE``."""

from __future__ import annotations

import argparse

from . import add_opt, api_default, parse_options

HELP = "export a method to ONNX (dynamic batch/height/width) for onnxruntime: --method onnx:FILE"
FORMATS = ("onnx",)


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..export import export_onnx

    p.add_argument("method", help="method to export (ivfuse list methods)")
    p.add_argument("--weights", help="checkpoint file for learned methods")
    add_opt(p)
    p.add_argument("--format", default=FORMATS[0], choices=FORMATS, help="export format")
    p.add_argument("--opset", type=int, default=api_default(export_onnx, "opset"), help="ONNX opset")
    p.add_argument("-o", "--output", required=True, help="output file (.onnx)")


def run(a: argparse.Namespace) -> int:
    from ..export import export_onnx

    opts = parse_options(a.opt)
    if a.weights:
        opts["weights"] = a.weights
    out = export_onnx(a.method, a.output, opset=a.opset, **opts)
    print(f"wrote {out} ({a.method}, ONNX opset {a.opset}, dynamic batch/height/width; checked against PyTorch)")
    return 0

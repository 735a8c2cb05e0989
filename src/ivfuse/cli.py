"""``ivfuse`` command line: ``ivfuse MODE [options]``.

Modes: ``fuse``, ``eval``, ``list`` (more are added by the task and training modules). Every user error
prints one line ``ivfuse: error: ...`` naming the file or name at fault, and exits with status 2 without
leaving partial output behind.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from .errors import IvfuseError

__all__ = ["main", "build_parser", "parse_options"]


class _Parser(argparse.ArgumentParser):
    """argparse with "did you mean" hints for mistyped modes and options."""

    def error(self, message: str):  # type: ignore[override]
        m = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if m:
            choices = re.findall(r"'?([\w.-]+)'?", m.group(2))
            close = difflib.get_close_matches(m.group(1), choices, n=1)
            if close:
                message += f"; did you mean '{close[0]}'?"
        m = re.search(r"unrecognized arguments: (\S+)", message)
        if m:
            opts = [o for a in self._actions for o in a.option_strings]
            for a in self._actions:  # options of the modes, for errors raised by the top-level parser
                if isinstance(a, argparse._SubParsersAction):
                    opts += [o for sp in a.choices.values() for b in sp._actions for o in b.option_strings]
            close = difflib.get_close_matches(m.group(1).split("=")[0], opts, n=1)
            if close:
                message += f"; did you mean '{close[0]}'?"
        self.exit(2, f"{self.prog}: error: {message}\n")


def parse_options(items: Sequence[str] | None) -> dict:
    """``["levels=5", "eps1=0.3", "name=x"]`` -> ``{"levels": 5, "eps1": 0.3, "name": "x"}``."""
    out = {}
    for it in items or []:
        if "=" not in it:
            raise IvfuseError(f"option '{it}' is not of the form key=value")
        k, v = it.split("=", 1)
        try:
            out[k.strip().replace("-", "_")] = ast.literal_eval(v)
        except (ValueError, SyntaxError):
            out[k.strip().replace("-", "_")] = v
    return out


def _cmd_fuse(a: argparse.Namespace) -> int:
    from .fusion import DEFAULT_METHOD, fuse_files, fuse_folder

    opts = parse_options(a.opt)
    if a.weights:
        opts["weights"] = a.weights
    ir, vis = Path(a.ir), Path(a.vis)
    method = a.method or DEFAULT_METHOD
    if ir.is_dir() != vis.is_dir():
        raise IvfuseError(f"--ir {ir} and --vis {vis} must both be files or both be folders")
    if ir.is_dir():
        written = fuse_folder(ir, vis, a.output, method, a.device, a.ext, a.ir_norm, progress=not a.quiet, **opts)
        print(f"fused {len(written)} pairs with '{method}' into {a.output}")
    else:
        out = fuse_files(ir, vis, a.output, method, a.device, a.ir_norm, **opts)
        print(f"wrote {out} ({method})")
    return 0


def _cmd_eval(a: argparse.Namespace) -> int:
    from rich.console import Console

    from .evaluate import evaluate_folder, results_table, write_results

    metrics = [m.strip() for m in a.metrics.split(",") if m.strip()] if a.metrics else None
    if a.out:
        from .evaluate import RESULT_FORMATS

        if Path(a.out).suffix.lower() not in RESULT_FORMATS:
            raise IvfuseError(f"{a.out}: unsupported results format (use {', '.join(RESULT_FORMATS)})")
    res = evaluate_folder(a.ir, a.vis, a.fused, metrics, a.workers, progress=not a.quiet)
    Console(width=max(100, 14 * (len(res["mean"]) + 1))).print(results_table(res, f"fusion metrics: {a.fused}"))
    if a.out:
        print(f"wrote {write_results(res, a.out)}")
    return 0


def _cmd_list(a: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"ivfuse {a.what}")
    if a.what == "metrics":
        from .metrics import DEFAULT_METRICS, METRICS

        for c in ("name", "better", "default", "reference"):
            t.add_column(c)
        for n in METRICS.names():
            m = METRICS.get(n)
            t.add_row(n, "lower" if m.lower_better else "higher", "yes" if n in DEFAULT_METRICS else "", m.reference)
    elif a.what == "methods":
        from .fusion import DEFAULT_METHOD
        from .models import MODELS

        t.add_column("name")
        t.add_column("description")
        for n in MODELS.names():
            doc = (MODELS.get(n).__doc__ or "").strip().splitlines()
            t.add_row(n + (" (default)" if n == DEFAULT_METHOD else ""), doc[0] if doc else "")
    else:
        from .data import DATASETS

        for c in ("name", "splits", "labels", "notes"):
            t.add_column(c)
        for n in DATASETS.names():
            s = DATASETS.get(n)
            labels = ", ".join(filter(None, [f"det ({s.det_format})" if s.det_dirs else "", "seg" if s.seg_dirs else ""]))
            t.add_row(n, ", ".join(s.splits), labels or "-", s.note)
    Console(width=160).print(t)
    return 0


#: extra modes registered by other modules: name -> (help, add_arguments(parser), run(args))
EXTRA_COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {}


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    p = _Parser(prog="ivfuse", description="Task-driven infrared-visible image fusion.")
    p.add_argument("--version", action="version", version=f"ivfuse {__version__}")
    sub = p.add_subparsers(dest="command", metavar="MODE", parser_class=_Parser, required=True)

    f = sub.add_parser("fuse", help="fuse an IR/visible pair, or two folders of pairs matched by file stem")
    f.add_argument("--ir", required=True, help="infrared image or folder")
    f.add_argument("--vis", required=True, help="visible image or folder")
    f.add_argument("-o", "--output", required=True, help="output image (pair mode) or folder (folder mode)")
    f.add_argument("--method", help="fusion method (ivfuse list methods); default: the shipped default model")
    f.add_argument("--weights", help="checkpoint file for learned methods")
    f.add_argument("--opt", action="append", metavar="KEY=VALUE", help="method option, repeatable (e.g. levels=5)")
    f.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1 ...)")
    f.add_argument("--ext", default=".png", help="output extension in folder mode (default .png)")
    f.add_argument("--ir-norm", default="minmax", choices=["minmax", "percentile", "scale"],
                   help="normalisation of 16-bit/float infrared data (8-bit is divided by 255)")
    f.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    f.set_defaults(run=_cmd_fuse)

    e = sub.add_parser("eval", help="score fused images against their sources")
    e.add_argument("--ir", required=True, help="infrared folder")
    e.add_argument("--vis", required=True, help="visible folder")
    e.add_argument("--fused", required=True, help="folder of fused images (same stems)")
    e.add_argument("--metrics", help="comma-separated metric names (default: the standard suite)")
    e.add_argument("--out", help="write results to .json, .csv or .md")
    e.add_argument("--workers", type=int, help="processes (default: all cores)")
    e.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    e.set_defaults(run=_cmd_eval)

    ls = sub.add_parser("list", help="list methods, metrics or datasets")
    ls.add_argument("what", choices=["methods", "metrics", "datasets"])
    ls.set_defaults(run=_cmd_list)

    for name, (help_, add, run) in EXTRA_COMMANDS.items():
        sp = sub.add_parser(name, help=help_)
        add(sp)
        sp.set_defaults(run=run)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except IvfuseError as e:
        print(f"ivfuse: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ivfuse: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""``ivfuse train METHOD [--opt KEY=VALUE ...] [KEY=VALUE ...]``: train a method with its recipe and config.

``KEY=VALUE`` items — given with ``--opt`` as on every mode, or bare — are run options (``preset=``, ``config=``,
``out=``, ``export=``, ``resume=``: :data:`ivfuse.engine.config.RUN_KEYS`) or overrides of the method's config
(``epochs.pretrain=5``, ``amp=bf16``), in the order given. ``-q``/``-v`` may follow the items.
"""

from __future__ import annotations

import argparse

from ..errors import IvfuseError
from . import _QUIET, _VERBOSE, add_opt, api_default

HELP = (
    "train a method: ivfuse train metafusion [preset=cpu] [config=FILE] [out=DIR] [export=FILE] [--opt] key=value ..."
)


def out_default(method: str) -> str:
    """The run folder when ``out=`` is not given."""
    return f"runs/{method}"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..engine import train
    from ..engine.config import RUN_KEYS
    from ..engine.recipe import RESUME_MODES

    p.add_argument("method", help="method to train (metafusion, tsjnet, tim, occo, lite; ivfuse list methods)")
    p.add_argument(
        "items",
        nargs=argparse.REMAINDER,
        metavar="KEY=VALUE",
        help=f"run options ({', '.join(f'{k}=' for k in RUN_KEYS)}; out= defaults to "
        f"{out_default('METHOD')}, resume= to {api_default(train, 'resume')} of {'|'.join(RESUME_MODES)}) "
        "and config overrides such as epochs.pretrain=5; bare or after --opt",
    )
    add_opt(p, "run option or config override, as the bare items", "epochs.pretrain=5")


def items(a: argparse.Namespace) -> list[str]:
    """The ``KEY=VALUE`` items in order: ``--opt`` ones given before the method, then the rest (``--opt K=V``,
    ``--opt=K=V`` or bare), without ``-q``/``-v``; any other flag is a one-line error."""
    out, rest = list(a.opt or []), iter(a.items)
    for x in rest:
        if x == "--opt":
            value = next(rest, None)
            if value is None:
                raise IvfuseError("train: --opt needs a KEY=VALUE")
            out.append(value)
        elif x.startswith("--opt="):
            out.append(x[len("--opt=") :])
        elif x in (*_QUIET, *_VERBOSE):
            continue
        elif x.startswith("-"):
            raise IvfuseError(
                f"train: unknown option '{x}' (items are key=value, bare or after --opt; the only flags "
                "are -q/--quiet and -v/--verbose)"
            )
        else:
            out.append(x)
    return out


def run(a: argparse.Namespace) -> int:
    import json
    import os

    from ..engine import RECIPES, train
    from ..engine.config import load_config, split_items

    if any(x in ("-h", "--help") for x in [a.method, *a.items]):
        from . import build_parser

        build_parser(["train"]).parse_args(["train", "--help"])  # prints the usage and exits
    quiet = a.quiet or any(x in _QUIET for x in a.items)  # the flags may follow the items
    kv = items(a)
    RECIPES.get(a.method)  # unknown method: "did you mean"
    run_opts, overrides = split_items(kv)
    cfg = load_config(a.method, run_opts.get("preset"), run_opts.get("config"), overrides)  # keys and types checked
    out = run_opts.get("out", out_default(a.method))
    # train() checks the resume mode, the device and the recipe's constraints before it writes anything
    resume = run_opts.get("resume", api_default(train, "resume"))
    summary = train(a.method, cfg, out, run_opts.get("export"), progress=not quiet, resume=resume)
    if os.environ.get("RANK", "0") != "0":  # under torchrun only rank 0 reports (the process group is gone by now)
        return 0
    val = summary["metrics"].get("val", {})
    print(json.dumps({"out": out, "epoch_seconds": summary["epoch_s"], "val": val}, indent=1))
    print(f"run folder: {out} (final.pt, summary.json, log.csv)")
    if summary.get("export"):
        print(f"exported the trained model to {summary['export']}")
    return 0

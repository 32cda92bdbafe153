"""`lmforge eval`, `lmforge plot`, `lmforge export`, `lmforge import-hf`: measuring and moving runs."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lmforge.cli.args import add_checkpoint, add_device, run_path


def cmd_eval(args: argparse.Namespace) -> int:
    from lmforge.atomic import write_json
    from lmforge.evaluate import format_confusion
    from lmforge.pipeline import evaluate_run

    metrics = evaluate_run(run_path(args.run), args.data, split=args.split, max_batches=args.batches,
                           checkpoint=args.checkpoint, device=args.device, skip_damaged=args.skip_damaged)
    print(json.dumps({k: v for k, v in metrics.items() if k not in ("confusion", "labels")}, indent=2))
    if "confusion" in metrics:
        print(format_confusion(metrics))
    if args.out:
        write_json(args.out, metrics)
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from lmforge.plot import plot_runs

    plot_runs([Path(r) for r in args.runs], Path(args.out))
    print(f"lmforge: wrote {args.out}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from lmforge.interop import export_hf

    export_hf(args.run, Path(args.out), checkpoint=args.checkpoint, overwrite=args.overwrite,
              skip_damaged=args.skip_damaged)
    return 0


def cmd_import_hf(args: argparse.Namespace) -> int:
    from lmforge.interop import import_hf

    import_hf(args.source, Path(args.out), overwrite=args.overwrite)
    return 0


def register(sub) -> None:
    p = sub.add_parser("eval", help="a run's checkpoint on held-out data: loss, perplexity, bits per byte "
                                    "(token shards) or classification metrics (a labeled file)")
    p.add_argument("run", help="run folder (or hf:DIR)")
    p.add_argument("--data", help="shards folder (default: the run's data.path), or a labeled file for a classifier")
    p.add_argument("--split", help="shards split (default: val)")
    p.add_argument("--batches", type=int, default=0, help="evaluate the first N batches (default: all)")
    add_checkpoint(p)
    add_device(p)
    p.add_argument("--out", help="also write the metrics to this JSON file")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("plot", help="plot loss, val loss, lr and throughput of runs side by side")
    p.add_argument("runs", nargs="+", help="run folders")
    p.add_argument("--out", required=True, help="image file (.png, .svg, .pdf)")
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser("export", help="write a run as a Hugging Face transformers folder")
    p.add_argument("run", help="run folder (or hf:DIR)")
    p.add_argument("--format", choices=["hf"], default="hf", help="output format (hf: transformers folder)")
    p.add_argument("--out", required=True, help="folder to create")
    add_checkpoint(p)
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("import-hf", help="turn a transformers folder or Hub model into a run folder")
    p.add_argument("source", metavar="DIR", help="folder with config.json and weights, or hf:NAME (Hub)")
    p.add_argument("--out", required=True, help="run folder to create")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    p.set_defaults(func=cmd_import_hf)

"""`lmforge compress distill|prune|quantize`: a run in, a smaller or faster run out, and a report."""

from __future__ import annotations

import argparse
from pathlib import Path

from lmforge.cli.args import run_path


def _say(message: str) -> None:
    print(f"lmforge: {message}", flush=True)


def _report(args: argparse.Namespace, before: Path, after: Path) -> None:
    if args.no_report:
        return
    from lmforge.compress.report import compare, format_table

    print("lmforge: measuring size, speed and quality before and after (--no-report skips this)", flush=True)
    report = compare(before, after, data=args.data, max_batches=args.eval_batches)
    print(format_table(report))
    print(f"lmforge: report in {after / 'report.json'}")


def cmd_distill(args: argparse.Namespace) -> int:
    from lmforge.compress.distill import distill

    teacher, student = run_path(args.teacher), args.student
    if student and str(student).startswith("hf:"):
        student = run_path(student)
    distill(teacher, Path(args.out), student=student, temperature=args.temperature, alpha_kl=args.alpha_kl,
            alpha_task=args.alpha_task, alpha_cos=args.alpha_cos, init=args.init, overrides=args.overrides,
            overwrite=args.overwrite, say=_say)
    _report(args, teacher, Path(args.out))
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    from lmforge.compress.prune import prune

    run = run_path(args.run)
    prune(run, Path(args.out), heads=args.heads, ffn=args.ffn, method=args.importance, sparsity=args.sparsity,
          score_batches=args.score_batches, recover_steps=args.recover_steps, overrides=args.overrides,
          overwrite=args.overwrite, say=_say)
    _report(args, run, Path(args.out))
    return 0


def cmd_quantize(args: argparse.Namespace) -> int:
    from lmforge.compress.quantize import quantize
    from lmforge.extras import require

    require("torchao", "lmforge compress quantize")
    run = run_path(args.run)
    quantize(run, Path(args.out), scheme=args.scheme, compile=args.compile, checkpoint=args.checkpoint,
             overwrite=args.overwrite, say=_say)
    _report(args, run, Path(args.out))
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="run folder to create")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    p.add_argument("--no-report", action="store_true", help="skip measuring size, speed and metrics before/after")
    p.add_argument("--data", help="held-out data for the report's metrics (default: the run's own)")
    p.add_argument("--eval-batches", type=int, default=0, help="batches of held-out data the report evaluates "
                                                              "(default: all)")


def _set(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override the new run's config (repeatable), e.g. --set train.max_steps=300")


def register(sub) -> None:
    group = sub.add_parser("compress", help="distill, prune or quantize a run into a smaller or faster run")
    verbs = group.add_subparsers(dest="verb", metavar="VERB", required=True)

    p = verbs.add_parser("distill", help="train a smaller student on a teacher run's outputs (and the task's "
                                         "labels)")
    p.add_argument("--teacher", required=True, help="teacher run folder (or hf:DIR)")
    p.add_argument("--student", help="student: a TOML config / preset (its [model]) or a run folder; default: "
                                     "the teacher with half the layers, started from every other teacher layer")
    p.add_argument("--temperature", type=float, default=2.0, help="softmax temperature of the KL term")
    p.add_argument("--alpha-kl", type=float, default=0.5, help="weight of the KL to the teacher (times T^2)")
    p.add_argument("--alpha-task", type=float, default=0.5, help="weight of the task's own loss")
    p.add_argument("--alpha-cos", type=float, default=0.0, help="weight of the hidden-state cosine term")
    p.add_argument("--init", choices=["alternate", "random"], default="alternate",
                   help="student start: every other teacher layer, or a fresh initialisation")
    _set(p)
    _common(p)
    p.set_defaults(func=cmd_distill)

    p = verbs.add_parser("prune", help="remove attention heads and FFN neurons (smaller matrices), then "
                                       "optionally recover by training")
    p.add_argument("run", help="run folder (or hf:DIR)")
    p.add_argument("--heads", type=float, default=0.0, help="fraction of attention heads removed in each layer")
    p.add_argument("--ffn", type=float, default=0.0, help="fraction of FFN neurons removed in each layer")
    p.add_argument("--importance", choices=["taylor", "magnitude"], default="taylor",
                   help="taylor: |activation x gradient| on the run's training data; magnitude: weight norms")
    p.add_argument("--score-batches", type=int, default=8, help="training batches the taylor score reads")
    p.add_argument("--sparsity", type=float, default=0.0,
                   help="also zero this fraction of each weight matrix by magnitude (same size and speed "
                        "unless a sparse kernel is used)")
    p.add_argument("--recover-steps", type=int, default=0, help="train this many steps after pruning (the run's "
                                                                "own objective and data)")
    _set(p)
    _common(p)
    p.set_defaults(func=cmd_prune)

    p = verbs.add_parser("quantize", help="int8 linear layers (torchao) for CPU inference")
    p.add_argument("run", help="run folder (or hf:DIR)")
    p.add_argument("--scheme", choices=["int8-dynamic", "int8-weight"], default="int8-dynamic",
                   help="int8-dynamic: int8 weights and activations (default, the faster one here); "
                        "int8-weight: int8 weights only")
    p.add_argument("--compile", choices=["auto", "yes", "no"], default="auto",
                   help="compile the quantized model's forward when it loads; auto: time both on this CPU")
    p.add_argument("--checkpoint", default="best", help="best, latest, step-N or a path")
    _common(p)
    p.set_defaults(func=cmd_quantize)

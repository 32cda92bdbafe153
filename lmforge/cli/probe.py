"""`lmforge probe memorization`: canary exposure, extractable training text, membership, regenerated PII."""

from __future__ import annotations

import argparse
from pathlib import Path

from lmforge.cli.args import add_checkpoint, add_device, load, run_path


def cmd_memorization(args: argparse.Namespace) -> int:
    from lmforge.atomic import write_json
    from lmforge.probe import ProbeSettings, find_data, plot_exposure, probe_memorization, read_canaries, summary
    from lmforge.tasks import read_config

    settings = ProbeSettings(parts=tuple(p for p in args.parts.split(",") if p), candidates=args.candidates,
                             canaries=args.canaries, windows=args.windows, prompt_tokens=args.prompt_tokens,
                             continuation_tokens=args.continuation_tokens, documents=args.documents, pii=args.pii,
                             seed=args.seed, batch_size=args.batch_size)
    if args.plot:
        from lmforge.extras import require

        require("matplotlib", "--plot")
        if "exposure" not in settings.parts:
            from lmforge.errors import LmforgeError

            raise LmforgeError("--plot draws exposure against repetitions: keep exposure in --parts")
    run = run_path(args.run)
    shards, corpus = find_data(read_config(run), args.data, args.corpus, settings)
    if "exposure" in settings.parts:
        read_canaries(corpus)  # refuse before loading the model
    report = probe_memorization(load(args), shards, corpus, settings)
    out = Path(args.out) if args.out else run / "memorization"
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "report.json", report)
    print(summary(report))
    if args.plot:
        plot_exposure(report, out / "exposure.png")
    print(f"lmforge: wrote {out / 'report.json'}" + (f" and {out / 'exposure.png'}" if args.plot else ""))
    return 0


def register(sub) -> None:
    probe = sub.add_parser("probe", help="measure what a trained model memorised")
    probe_sub = probe.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = probe_sub.add_parser("memorization", help="canary exposure by repetitions, extractable training text, "
                                                  "membership (loss AUC) and regenerated PII of a causal LM run")
    p.add_argument("run", help="run folder (or hf:DIR)")
    p.add_argument("--data", help="shards folder (default: the run's data.path)")
    p.add_argument("--corpus", help="corpus folder the shards were built from (default: what the shards record)")
    p.add_argument("--parts", default="exposure,extraction,membership,pii",
                   help="what to measure, comma-separated (default: all four)")
    p.add_argument("--canaries", type=int, default=0, metavar="N",
                   help="probe the first N canaries of each repetition count (default: all)")
    p.add_argument("--candidates", type=int, default=10_000, metavar="N",
                   help="candidates per canary: all when the space is no larger (exact rank), else N sampled")
    p.add_argument("--windows", type=int, default=200, metavar="N", help="extraction windows per occurrence bucket")
    p.add_argument("--prompt-tokens", type=int, default=32, metavar="K", help="prompt tokens (extraction, pii)")
    p.add_argument("--continuation-tokens", type=int, default=32, metavar="M",
                   help="tokens the greedy continuation must reproduce")
    p.add_argument("--documents", type=int, default=500, metavar="N", help="train and val documents each (membership)")
    p.add_argument("--pii", type=int, default=200, metavar="N", help="PII occurrences probed at most")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--out", help="folder for report.json (and exposure.png; default: RUN/memorization)")
    p.add_argument("--plot", action="store_true", help="also plot exposure against repetitions (needs matplotlib)")
    add_checkpoint(p)
    add_device(p)
    p.set_defaults(func=cmd_memorization)

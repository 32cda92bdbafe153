"""`lmforge generate`, `lmforge fill-mask`, `lmforge classify`: a trained run at work."""

from __future__ import annotations

import argparse
import json
import sys

from lmforge.cli.args import add_checkpoint, add_device, load, run_path
from lmforge.errors import LmforgeError


def _load_for(args: argparse.Namespace, inference: str, command: str):
    """The run in args.run, refused with the fix when its task offers another inference."""
    from lmforge.tasks import get_task, read_config

    run_dir = run_path(args.run)
    cfg = read_config(run_dir)
    task = get_task(cfg.task)
    if task.inference != inference:
        if task.head:
            source = f" (its pretrained run is {cfg.finetune.from_run})" if cfg.finetune.from_run else ""
            raise LmforgeError(f"{args.run} is a fine-tuned {cfg.model.kind} classifier, not a language model: "
                               f"{command} needs a pretrained run{source}; label texts with "
                               f"`lmforge {task.inference} {args.run} \"text\"`")
        other = "`lmforge generate` for gpt and rnn" if inference == "fill-mask" else "`lmforge fill-mask` for bert"
        what = "not a masked LM: fill-mask needs a bert run" if inference == "fill-mask" else \
            "generate needs a gpt or rnn run"
        raise LmforgeError(f"{args.run} is a {cfg.model.kind} run, {what} (use {other})")
    run = load(args, str(run_dir))
    fresh = run.untrained_lm_head()
    if fresh:
        raise LmforgeError(f"{args.run} was imported without its language-model head ({', '.join(fresh[:3])}, ... "
                           f"are a fresh initialisation), so {command} would print noise: train the head first "
                           f"(`lmforge pretrain --init-from {args.run} --data SHARDS --out NEW`), or fine-tune it "
                           "(`lmforge finetune --from ...`)")
    return run


def cmd_generate(args: argparse.Namespace) -> int:
    from lmforge.generate import generate

    run = _load_for(args, "generate", "generate")
    print(args.prompt, end="", flush=True)
    generate(run.model, run.tokenizer, args.prompt, max_new_tokens=args.max_new_tokens,
             temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
             repetition_penalty=args.repetition_penalty, greedy=args.greedy, seed=args.seed, stop=args.stop,
             stream=lambda piece: print(piece, end="", flush=True))
    print(flush=True)
    return 0


def cmd_fill_mask(args: argparse.Namespace) -> int:
    from lmforge.generate import fill_mask

    run = _load_for(args, "fill-mask", "fill-mask")
    results = fill_mask(run.model, run.tokenizer, args.text, args.top_k)
    mask = run.tokenizer.id_to_piece(run.tokenizer.mask_id)
    for n, candidates in enumerate(results, 1):
        print(f"{mask} {n}:" if len(results) > 1 else f"{mask}:")
        for piece, prob in candidates:
            print(f"  {prob:7.2%}  {piece}")
    return 0


def cmd_classify(args: argparse.Namespace) -> int:
    from pathlib import Path

    from lmforge.atomic import write_text
    from lmforge.tasks.classify import classify, read_inputs

    if bool(args.texts) == bool(args.input):
        raise LmforgeError('classify needs texts (`lmforge classify RUN "text" ...`) or --input FILE, not both')
    run = load(args)
    if args.input:
        texts, pairs, described = read_inputs(run, Path(args.input), args.text_column, args.text_pair_column)
        if described:
            print(f"lmforge: {described}", file=sys.stderr)
    else:
        texts, pairs = args.texts, [args.pair] * len(args.texts) if args.pair else None
    preds = classify(run, texts, pairs, batch_size=args.batch_size, progress=bool(args.input) and not args.quiet)
    lines = [json.dumps({"text": t, **({"text_pair": pairs[i]} if pairs else {}), **p}, ensure_ascii=False)
             for i, (t, p) in enumerate(zip(texts, preds))]
    if args.output:
        write_text(args.output, "".join(ln + "\n" for ln in lines))
        print(f"lmforge: wrote {len(lines)} predictions to {args.output}", file=sys.stderr)
    else:
        print("\n".join(lines))
    return 0


def register(sub) -> None:
    p = sub.add_parser("generate", help="continue a prompt with a GPT or RNN run, streaming the text")
    p.add_argument("run", help="run folder of a gpt or rnn run (or hf:DIR)")
    p.add_argument("--prompt", default="", help="text to continue (default: start a new document)")
    p.add_argument("--max-new-tokens", type=int, default=100)
    p.add_argument("--temperature", type=float, default=1.0, help="0 means greedy")
    p.add_argument("--top-k", type=int, default=0, help="sample among the k most likely tokens (0: all)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1: all)")
    p.add_argument("--repetition-penalty", type=float, default=1.0, help="CTRL penalty (1: none)")
    p.add_argument("--greedy", action="store_true", help="always take the most likely token")
    p.add_argument("--seed", type=int, help="makes sampling reproducible")
    p.add_argument("--stop", nargs="+", action="extend", default=[], metavar="STR",
                   help="end at the first of these strings (not printed)")
    add_checkpoint(p)
    add_device(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("fill-mask", help="the most likely tokens for each [MASK] in a text (BERT runs)")
    p.add_argument("run", help="run folder of a masked LM (or hf:DIR)")
    p.add_argument("text", help='text with mask tokens, e.g. "The capital of France is [MASK]."')
    p.add_argument("--top-k", type=int, default=5, help="candidates per mask (default 5)")
    add_checkpoint(p)
    add_device(p)
    p.set_defaults(func=cmd_fill_mask)

    p = sub.add_parser("classify", help="label texts with a fine-tuned classifier")
    p.add_argument("run", help="fine-tuned run folder (or hf:DIR)")
    p.add_argument("texts", nargs="*", help="texts to classify")
    p.add_argument("--pair", help="second text of a pair, for each text given on the command line")
    p.add_argument("--input", help="file of texts: .txt (one per line), .tsv, .csv or .jsonl")
    p.add_argument("--output", help="write predictions as JSON lines here (default: standard output)")
    p.add_argument("--text_column", "--text-column", default="", help="column of the text in --input")
    p.add_argument("--text_pair_column", "--text-pair-column", default="", help="column of the second text")
    p.add_argument("--batch_size", "--batch-size", type=int, default=64)
    add_checkpoint(p)
    add_device(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_classify)

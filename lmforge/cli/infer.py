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
            raise LmforgeError(f"{args.run} is a {cfg.model.kind} fine-tuned for {task.name}, not a language model: "
                               f"{command} needs a pretrained run{source}; use it with "
                               f"`lmforge {task.inference} {args.run} ...`")
        if task.inference == "finetune":  # a run made to be fine-tuned (ELECTRA's discriminator)
            raise LmforgeError(f"{args.run} is a {task.name} run, which {command} cannot read: fine-tune it "
                               f"(`lmforge finetune --from {args.run} ...`)")
        other = "`lmforge generate` for gpt, rnn and t5" if inference == "fill-mask" else "`lmforge fill-mask` for bert"
        what = "not a masked LM: fill-mask needs a bert run" if inference == "fill-mask" else \
            "generate needs a gpt, rnn or t5 run"
        raise LmforgeError(f"{args.run} is a {cfg.model.kind} run, {what} (use {other})")
    run = load(args, str(run_dir))
    fresh = run.untrained_lm_head()
    if fresh:
        raise LmforgeError(f"{args.run} was imported without its language-model head ({', '.join(fresh[:3])}, ... "
                           f"are a fresh initialisation), so {command} would print noise: train the head first "
                           f"(`lmforge pretrain --init-from {args.run} --data SHARDS --out NEW`), or fine-tune it "
                           "(`lmforge finetune --from ...`)")
    return run


_SEQ2SEQ_FLAGS = ("input", "input_file", "output", "num_beams", "length_penalty", "no_repeat_ngram_size",
                  "early_stopping", "do_sample")
_CAUSAL_FLAGS = ("prompt", "repetition_penalty", "greedy", "stop")


def _given(args: argparse.Namespace, names: tuple[str, ...]) -> list[str]:
    return ["--" + n.replace("_", "-") for n in names if getattr(args, n) not in (None, False, [])]


def cmd_generate(args: argparse.Namespace) -> int:
    from lmforge.generate import generate

    run = _load_for(args, "generate", "generate")
    if run.model.decoding == "encoder_decoder":
        return _generate_seq2seq(args, run)
    wrong = _given(args, _SEQ2SEQ_FLAGS)
    if wrong:
        raise LmforgeError(f"{', '.join(wrong)}: for encoder-decoder (t5) runs; {args.run} is a "
                           f"{run.config.model.kind} run: continue a --prompt")
    print(args.prompt or "", end="", flush=True)
    generate(run.model, run.tokenizer, args.prompt or "", max_new_tokens=_or(args.max_new_tokens, 100),
             temperature=_or(args.temperature, 1.0), top_k=_or(args.top_k, 0), top_p=_or(args.top_p, 1.0),
             repetition_penalty=_or(args.repetition_penalty, 1.0), greedy=args.greedy, seed=args.seed,
             stop=args.stop, stream=lambda piece: print(piece, end="", flush=True))
    print(flush=True)
    return 0


def _or(value, default):
    return default if value is None else value


def _generate_seq2seq(args: argparse.Namespace, run) -> int:
    """Sources from --input (repeatable) or --input-file, decoded as the run decodes unless flags say otherwise."""
    import dataclasses
    from pathlib import Path

    from lmforge.atomic import write_text
    from lmforge.generate_seq2seq import translate
    from lmforge.tasks.seq2seq import run_decoding

    wrong = _given(args, _CAUSAL_FLAGS)
    if wrong:
        raise LmforgeError(f"{', '.join(wrong)}: for gpt and rnn runs; {args.run} is an encoder-decoder: give "
                           "the source with --input TEXT or --input-file FILE (--do-sample to sample)")
    if not args.do_sample and _given(args, ("temperature", "top_k", "top_p", "seed")):
        raise LmforgeError(f"{', '.join(_given(args, ('temperature', 'top_k', 'top_p', 'seed')))} "
                           "shape sampling: add --do-sample (beam search and greedy ignore them)")
    if bool(args.input) == bool(args.input_file):
        raise LmforgeError('generate with an encoder-decoder needs --input "TEXT" (repeatable) or --input-file '
                           "FILE, one of the two")
    seq2seq = run.task.name == "seq2seq"
    base, prefix, max_length = run_decoding(run)
    given = {k: getattr(args, k) for k in ("max_new_tokens", "num_beams", "length_penalty", "no_repeat_ngram_size",
                                           "temperature", "top_k", "top_p", "seed") if getattr(args, k) is not None}
    given.update({k: True for k in ("early_stopping", "do_sample") if getattr(args, k)})
    if args.do_sample and "num_beams" not in given:
        given["num_beams"] = 1
    decoding = dataclasses.replace(base, **given)
    described = ""
    if args.input_file:
        texts, described = _read_sources(run, Path(args.input_file))
    else:
        texts = list(args.input)
    outputs = translate(run.model, run.tokenizer, texts, decoding, prefix, max_length, args.batch_size,
                        progress=bool(args.input_file) and not args.quiet)
    how = f"beam search ({decoding.num_beams} beams)" if decoding.num_beams > 1 else \
        "sampling" if decoding.do_sample else "greedy"
    where = "this command" if "max_new_tokens" in given else ("the run's finetune settings" if seq2seq else "default")
    print(f"lmforge: {described + '; ' if described else ''}{how}, max_new_tokens={decoding.max_new_tokens} ({where}):"
          f" {sum(o.hit_limit for o in outputs)} of {len(outputs)} outputs reached it, "
          f"{sum(o.source_truncated for o in outputs)} sources were truncated to {max_length} tokens", file=sys.stderr)
    if args.input_file or args.output:
        lines = [json.dumps({"source": t, "output": o.text, "tokens": o.tokens, "hit_limit": o.hit_limit},
                            ensure_ascii=False) for t, o in zip(texts, outputs)]
        if args.output:
            write_text(args.output, "".join(ln + "\n" for ln in lines))
            print(f"lmforge: wrote {len(lines)} outputs to {args.output}", file=sys.stderr)
        else:
            print("\n".join(lines))
    else:
        print("\n".join(o.text for o in outputs))
    return 0


def _read_sources(run, path) -> tuple[list[str], str]:
    """Sources of a file: .txt (one per line), or the source column of a .tsv/.csv/.jsonl of pairs."""
    from lmforge.data.pairs import read_pairs

    if path.suffix == ".txt":
        if not path.is_file():
            raise LmforgeError(f"{path} not found")
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8", errors="replace").splitlines()]
        return [ln for ln in lines if ln], ""
    ft = run.config.finetune if run.task.name == "seq2seq" else None
    pairs = read_pairs(path, ft.source_column if ft else "", "", ft.header if ft else "auto", need_targets=False)
    return pairs.sources, pairs.describe()


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
    p = sub.add_parser("generate", help="continue a prompt (gpt, rnn), or decode sources (t5: translate, summarize)")
    p.add_argument("run", help="run folder of a gpt, rnn or t5 run (or hf:DIR)")
    p.add_argument("--prompt", help="gpt/rnn: text to continue (default: start a new document)")
    p.add_argument("--input", action="append", metavar="TEXT", help="t5: a source to decode (repeatable)")
    p.add_argument("--input-file", metavar="FILE",
                   help="t5: sources, one per line (.txt) or the source column of a .tsv/.csv/.jsonl")
    p.add_argument("--output", metavar="FILE", help="t5: write the outputs as JSON lines here")
    p.add_argument("--max-new-tokens", type=int, help="most new tokens (gpt/rnn default 100; a seq2seq run's own "
                                                      "setting, else 100)")
    p.add_argument("--num-beams", type=int, help="t5: beam search with this many beams (1: greedy)")
    p.add_argument("--length-penalty", type=float, help="t5: beam score = log p / length ** this")
    p.add_argument("--no-repeat-ngram-size", type=int, help="t5: never repeat an n-gram of this size")
    p.add_argument("--early-stopping", action="store_true", help="t5: end a beam search at num_beams hypotheses")
    p.add_argument("--do-sample", action="store_true", help="t5: sample instead of searching")
    p.add_argument("--temperature", type=float, help="default 1.0; gpt/rnn: 0 means greedy")
    p.add_argument("--top-k", type=int, help="sample among the k most likely tokens (0: all)")
    p.add_argument("--top-p", type=float, help="nucleus sampling mass (1: all)")
    p.add_argument("--repetition-penalty", type=float, help="gpt/rnn: CTRL penalty (1: none)")
    p.add_argument("--greedy", action="store_true", help="gpt/rnn: always take the most likely token")
    p.add_argument("--seed", type=int, help="makes sampling reproducible")
    p.add_argument("--stop", nargs="+", action="extend", default=[], metavar="STR",
                   help="gpt/rnn: end at the first of these strings (not printed)")
    p.add_argument("--batch-size", type=int, default=32, help="t5: sources decoded together")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
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

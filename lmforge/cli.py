"""The `lmforge` command line: one function per subcommand.

Each function parses its arguments, loads the config section it needs and calls the library. Heavy
imports (torch, tokenizers) happen inside the functions so `lmforge --help` answers at once. User
mistakes raise `LmforgeError`, printed here as one line with exit status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from lmforge.errors import LmforgeError


def _add_config_args(p: argparse.ArgumentParser, config_help: str = "TOML config file or preset name") -> None:
    p.add_argument("--config", help=config_help)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value (repeatable), e.g. --set train.max_steps=100")


def _section_config(cls: type, section: str, args: argparse.Namespace):
    """Load one pipeline section (e.g. [corpus]) from --config and --set."""
    from lmforge.config import apply_overrides, from_dict, read_toml, resolve_preset

    raw = read_toml(resolve_preset(args.config)).get(section, {}) if args.config else {}
    prefixed = [o for o in args.overrides if o.startswith(section + ".")]
    foreign = [o for o in args.overrides if not o.startswith(section + ".")]
    if foreign:
        raise LmforgeError(f"--set {foreign[0]!r}: this command only takes '{section}.*' keys")
    raw = apply_overrides({section: raw}, prefixed)[section]
    return from_dict(cls, raw, section, args.config or "--set")


# ----------------------------------------------------------------------------------------------------
# corpus -> tokenizer -> shards


def cmd_corpus_build(args: argparse.Namespace) -> int:
    from lmforge.config import CorpusConfig
    from lmforge.corpus import build_corpus

    cfg = _section_config(CorpusConfig, "corpus", args)
    build_corpus(args.input, Path(args.out), cfg, overwrite=args.overwrite, progress=not args.quiet,
                 val_inputs=args.val_input or [], test_inputs=args.test_input or [])
    return 0


def cmd_tokenizer_train(args: argparse.Namespace) -> int:
    from lmforge.config import TokenizerConfig
    from lmforge.tokenizer import train_tokenizer

    if args.kind:
        args.overrides.append(f"tokenizer.kind={args.kind}")
    if args.vocab_size:
        args.overrides.append(f"tokenizer.vocab_size={args.vocab_size}")
    cfg = _section_config(TokenizerConfig, "tokenizer", args)
    train_tokenizer(Path(args.corpus), Path(args.out), cfg, overwrite=args.overwrite, progress=not args.quiet)
    return 0


def cmd_tokenizer_encode(args: argparse.Namespace) -> int:
    from lmforge.tokenizer import load_tokenizer

    tok = load_tokenizer(Path(args.tokenizer))
    text = args.text if args.text is not None else sys.stdin.read()
    ids = tok.encode(text)
    if args.pieces:
        print(" ".join(tok.id_to_piece(i) for i in ids))
    else:
        print(" ".join(map(str, ids)))
    return 0


def cmd_tokenizer_decode(args: argparse.Namespace) -> int:
    from lmforge.tokenizer import load_tokenizer

    tok = load_tokenizer(Path(args.tokenizer))
    raw = args.ids if args.ids else sys.stdin.read().split()
    try:
        ids = [int(x) for x in raw]
    except ValueError:
        raise LmforgeError("tokenizer decode: ids must be integers, "
                           "e.g. `lmforge tokenizer decode TOK 17 42`") from None
    print(tok.decode(ids))
    return 0


def cmd_shards_build(args: argparse.Namespace) -> int:
    from lmforge.config import ShardConfig
    from lmforge.data.shards import build_shards

    if args.workers is not None:
        args.overrides.append(f"shards.num_workers={args.workers}")
    cfg = _section_config(ShardConfig, "shards", args)
    build_shards(Path(args.corpus), Path(args.tokenizer), Path(args.out), cfg, overwrite=args.overwrite,
                 progress=not args.quiet)
    return 0


# ----------------------------------------------------------------------------------------------------
# pretrain / eval / plot


def cmd_pretrain(args: argparse.Namespace) -> int:
    from lmforge.config import RunConfig, load_config
    from lmforge.run import init_config, pretrain, read_run_config

    overrides = list(args.overrides) + ([f"data.path={args.data}"] if args.data else [])
    if args.init_from:
        if args.resume or not args.out or not args.data:
            raise LmforgeError("--init-from RUN starts a new run: give --data SHARDS and --out NEW "
                               "(not --resume)")
        cfg = init_config(args.init_from, args.config, overrides)
        pretrain(cfg, Path(args.out), overwrite=args.overwrite, init_from=args.init_from)
        return 0
    if args.resume:
        run_dir = Path(args.resume if isinstance(args.resume, str) else args.out or "")
        if not str(run_dir):
            raise LmforgeError("--resume needs a run folder: `lmforge pretrain --resume RUN`")
        if args.config:
            raise LmforgeError("--resume reads RUN/config.toml: drop --config (use --set to change a value)")
        pretrain(read_run_config(run_dir, overrides), run_dir, resume=True)
        return 0
    if not args.config or not args.out:
        raise LmforgeError("pretrain needs --config FILE.toml|PRESET, --data SHARDS and --out RUN "
                           "(or --resume RUN)")
    pretrain(load_config(RunConfig, args.config, overrides), Path(args.out), overwrite=args.overwrite)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    import json

    from lmforge.atomic import write_json
    from lmforge.evaluate import evaluate_run
    from lmforge.finetune import is_classifier_run

    if is_classifier_run(Path(args.run)):  # a fine-tuned classifier: metrics of a labeled file
        return cmd_eval_classifier(args)
    metrics = evaluate_run(Path(args.run), Path(args.data) if args.data else None, split=args.split,
                           max_batches=args.batches, checkpoint=args.checkpoint, device=args.device)
    print(json.dumps(metrics, indent=2))
    if args.out:
        write_json(args.out, metrics)
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from lmforge.plot import plot_runs

    plot_runs([Path(r) for r in args.runs], Path(args.out))
    print(f"lmforge: wrote {args.out}")
    return 0


def _register_train(sub) -> None:
    p = sub.add_parser("pretrain", help="pretrain a GPT/BERT/RNN on token shards")
    _add_config_args(p, "TOML run config or preset name (gpt-tiny, gpt-shakespeare-char, gpt2-small, ...)")
    p.add_argument("--data", help="shards folder (sets data.path)")
    p.add_argument("--out", help="run folder to create")
    p.add_argument("--resume", nargs="?", const=True, default=None, metavar="RUN",
                   help="continue the run in RUN (or --out) from its latest checkpoint")
    p.add_argument("--init-from", metavar="RUN",
                   help="start a new run from RUN's weights, model and tokenizer (a run folder or hf:DIR)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    _add_nproc_arg(p)
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("eval", help="loss, perplexity and bits per byte of a run on token shards")
    p.add_argument("run", help="run folder")
    p.add_argument("--data", help="shards folder (default: the run's data.path)")
    p.add_argument("--split", default="val")
    p.add_argument("--batches", type=int, default=0, help="evaluate the first N batches (default: all)")
    p.add_argument("--checkpoint", default="best", help="best, latest, step-N or a path")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", help="also write the metrics to this JSON file")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("plot", help="plot loss, val loss, lr and throughput of runs side by side")
    p.add_argument("runs", nargs="+", help="run folders")
    p.add_argument("--out", required=True, help="image file (.png, .svg, .pdf)")
    p.set_defaults(func=cmd_plot)


def _add_nproc_arg(p) -> None:
    p.add_argument("--nproc", type=int, metavar="N",
                   help="train with N processes on this machine (starts torchrun; see runtime.parallel)")


def cmd_quickstart(args: argparse.Namespace) -> int:
    from lmforge.quickstart import quickstart

    quickstart(Path(args.out), args.config, tuple(args.overrides), vocab_size=args.vocab_size, fresh=args.fresh)
    return 0


def _register_quickstart(sub) -> None:
    p = sub.add_parser("quickstart", help="the whole pipeline on the Python docs, offline, on CPU, in minutes")
    p.add_argument("--out", default="quickstart", help="folder for corpus, tokenizer, shards and run")
    p.add_argument("--config", default="gpt-tiny", help="run config or preset name")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a run config value (repeatable)")
    p.add_argument("--vocab-size", type=int, default=4096)
    p.add_argument("--fresh", action="store_true", help="rebuild corpus, tokenizer and shards too")
    p.set_defaults(func=cmd_quickstart)


def _language_model_config(run: str, command: str):
    """The config of `run` (a folder or hf:...), refusing a fine-tuned classifier: its head predicts labels."""
    from lmforge.run import is_classifier_config, read_run_config

    cfg = read_run_config(run)
    if is_classifier_config(cfg):
        source = f" (its pretrained run is {cfg.finetune.from_run})" if cfg.finetune.from_run else ""
        raise LmforgeError(f"{run} is a fine-tuned {cfg.model.kind} classifier, not a language model: {command} "
                           f"needs a pretrained run{source}; label texts with `lmforge classify {run} \"text\"`")
    return cfg


def cmd_fill_mask(args: argparse.Namespace) -> int:
    from lmforge.generate import fill_mask
    from lmforge.run import load_run

    kind = _language_model_config(args.run, "fill-mask").model.kind
    if kind != "bert":
        raise LmforgeError(f"{args.run} is a {kind} run, not a masked LM: fill-mask needs a bert run "
                           "(use `lmforge generate` for gpt and rnn)")
    run = load_run(Path(args.run), args.checkpoint, args.device)
    results = fill_mask(run.model, run.tokenizer, args.text, args.top_k)
    mask = run.tokenizer.id_to_piece(run.tokenizer.mask_id)
    for n, candidates in enumerate(results, 1):
        print(f"{mask} {n}:" if len(results) > 1 else f"{mask}:")
        for piece, prob in candidates:
            print(f"  {prob:7.2%}  {piece}")
    return 0


def _register_fill_mask(sub) -> None:
    p = sub.add_parser("fill-mask", help="the most likely tokens for each [MASK] in a text (BERT runs)")
    p.add_argument("run", help="run folder of a masked LM")
    p.add_argument("text", help='text with mask tokens, e.g. "The capital of France is [MASK]."')
    p.add_argument("--top-k", type=int, default=5, help="candidates per mask (default 5)")
    p.add_argument("--checkpoint", default="best", help="best, latest, step-N or a path")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_fill_mask)


# ----------------------------------------------------------------------------------------------------
# Hugging Face interop


def cmd_export(args: argparse.Namespace) -> int:
    from lmforge.interop import export_hf

    export_hf(args.run, Path(args.out), checkpoint=args.checkpoint, overwrite=args.overwrite)
    return 0


def cmd_import_hf(args: argparse.Namespace) -> int:
    from lmforge.interop import import_hf

    import_hf(args.source, Path(args.out), overwrite=args.overwrite)
    return 0


def _register_interop(sub) -> None:
    p = sub.add_parser("export", help="write a run as a Hugging Face transformers folder")
    p.add_argument("run", help="run folder (or hf:DIR)")
    p.add_argument("--format", choices=["hf"], default="hf", help="output format (hf: transformers folder)")
    p.add_argument("--out", required=True, help="folder to create")
    p.add_argument("--checkpoint", default="best", help="best, latest, step-N or a path")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("import-hf", help="turn a transformers folder or Hub model into a run folder")
    p.add_argument("source", metavar="DIR", help="folder with config.json and weights, or hf:NAME (Hub)")
    p.add_argument("--out", required=True, help="run folder to create")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    p.set_defaults(func=cmd_import_hf)


def cmd_generate(args: argparse.Namespace) -> int:
    from lmforge.generate import generate
    from lmforge.run import load_run

    kind = _language_model_config(args.run, "generate").model.kind
    if kind not in ("gpt", "rnn"):
        raise LmforgeError(f"{args.run} is a {kind} run: generate needs a gpt or rnn run "
                           "(use `lmforge fill-mask` for bert)")
    run = load_run(Path(args.run), args.checkpoint, args.device)
    print(args.prompt, end="", flush=True)
    generate(run.model, run.tokenizer, args.prompt, max_new_tokens=args.max_new_tokens,
             temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
             repetition_penalty=args.repetition_penalty, greedy=args.greedy, seed=args.seed, stop=args.stop,
             stream=lambda piece: print(piece, end="", flush=True))
    print(flush=True)
    return 0


def _register_generate(sub) -> None:
    p = sub.add_parser("generate", help="continue a prompt with a GPT or RNN run, streaming the text")
    p.add_argument("run", help="run folder of a gpt or rnn run")
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
    p.add_argument("--checkpoint", default="best", help="best, latest, step-N or a path")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_generate)


# ----------------------------------------------------------------------------------------------------
# finetune / classify

# [finetune] keys that are also flags, spelled as in `transformers` (--num_train_epochs or --num-train-epochs)
_FINETUNE_FLAGS = ("output_dir", "logging_dir", "num_train_epochs", "max_steps",
                   "per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
                   "learning_rate", "warmup_steps", "lr_scheduler_type", "weight_decay", "max_grad_norm",
                   "seed", "logging_steps", "eval_steps", "save_total_limit", "metric_for_best_model",
                   "early_stopping_patience", "class_weights", "freeze_encoder", "layerwise_lr_decay",
                   "text_column", "text_pair_column", "label_column",
                   "header", "max_length", "pooling", "classifier_dropout", "from_checkpoint")


def _finetune_overrides(args: argparse.Namespace) -> dict:
    """finetune.* values given as flags (typed already), --from/--train/--dev/--test/--out included."""
    values = {k: getattr(args, f"ft_{k}") for k in _FINETUNE_FLAGS if getattr(args, f"ft_{k}") is not None}
    for key, flag in (("from_run", "from_run"), ("train_file", "train"), ("dev_file", "dev"),
                      ("test_file", "test"), ("output_dir", "out")):
        if getattr(args, flag):
            values[key] = str(getattr(args, flag))
    return values


def cmd_finetune(args: argparse.Namespace) -> int:
    from lmforge.config import (
        FinetuneRunConfig,
        apply_overrides,
        from_dict,
        read_toml,
        resolve_preset,
        to_dict,
    )
    from lmforge.finetune import finetune, is_classifier_run
    from lmforge.run import read_run_config

    flags = _finetune_overrides(args)
    if args.resume:
        run_dir = Path(args.resume)
        if not (run_dir / "config.toml").is_file():
            raise LmforgeError(f"cannot resume {run_dir}: it has no config.toml (start it without --resume)")
        raw = read_toml(run_dir / "config.toml")
    else:
        source = flags.get("from_run")
        if not source:
            raise LmforgeError("finetune needs --from RUN (a pretrained run), --train FILE, --dev FILE and "
                               "--out RUN2")
        if is_classifier_run(Path(source)):
            raise LmforgeError(f"{source} is already a fine-tuned classifier: fine-tune its pretrained run "
                               "instead")
        raw = to_dict(read_run_config(Path(source)))
        if args.config:
            extra = read_toml(resolve_preset(args.config))
            for key, value in extra.items():  # [finetune], [runtime], ... on top of the pretrained config
                raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    raw = apply_overrides(raw, args.overrides)
    raw.setdefault("finetune", {}).update(flags)
    cfg = from_dict(FinetuneRunConfig, raw, source=args.config or "finetune (with flags and --set)")
    out = Path(args.resume) if args.resume else Path(cfg.finetune.output_dir or "")
    if not str(out) or str(out) == ".":
        raise LmforgeError("finetune needs --out RUN2 (or --output_dir)")
    finetune(cfg, out, resume=bool(args.resume), overwrite=args.overwrite, progress=not args.quiet)
    return 0


def _read_inputs(args: argparse.Namespace, clf) -> tuple[list[str], list[str] | None]:
    from lmforge.data.labeled import read_labeled

    path = Path(args.input)
    if path.suffix == ".txt":
        if not path.is_file():
            raise LmforgeError(f"{path} not found")
        return [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()], None
    ft = clf.config.finetune
    data = read_labeled(path, args.text_column or ft.text_column, "",
                        args.text_pair_column or ft.text_pair_column, ft.header, need_labels=False)
    print(f"lmforge: {data.describe()}", file=sys.stderr)
    return data.texts, data.pairs


def cmd_classify(args: argparse.Namespace) -> int:
    import json

    from lmforge.atomic import write_text
    from lmforge.finetune import classify, load_classifier

    if bool(args.texts) == bool(args.input):
        raise LmforgeError('classify needs texts (`lmforge classify RUN "text" ...`) or --input FILE, '
                           "not both")
    clf = load_classifier(Path(args.run), args.checkpoint, args.device)
    texts, pairs = _read_inputs(args, clf) if args.input else (args.texts, [args.pair] * len(args.texts)
                                                                if args.pair else None)
    preds = classify(clf, texts, pairs, batch_size=args.batch_size,
                     progress=bool(args.input) and not args.quiet)
    lines = [json.dumps({"text": t, **({"text_pair": pairs[i]} if pairs else {}), **p}, ensure_ascii=False)
             for i, (t, p) in enumerate(zip(texts, preds))]
    if args.output:
        write_text(args.output, "".join(ln + "\n" for ln in lines))
        print(f"lmforge: wrote {len(lines)} predictions to {args.output}", file=sys.stderr)
    else:
        print("\n".join(lines))
    return 0


def cmd_eval_classifier(args: argparse.Namespace) -> int:
    import json

    from lmforge.atomic import write_json
    from lmforge.evaluate import format_confusion
    from lmforge.finetune import evaluate_file, load_classifier

    if not args.data:
        raise LmforgeError(f"{args.run} is a classifier: pass --data FILE (a labeled .tsv, .csv or .jsonl)")
    clf = load_classifier(Path(args.run), args.checkpoint, "cpu" if args.device == "auto" else args.device)
    metrics = evaluate_file(clf, Path(args.data))
    print(json.dumps({k: v for k, v in metrics.items() if k not in ("confusion", "labels")}, indent=2))
    print(format_confusion(metrics))
    if args.out:
        write_json(args.out, metrics)
    return 0


def _register_finetune(sub) -> None:
    from lmforge.config import FinetuneConfig

    p = sub.add_parser("finetune", help="fine-tune a pretrained run for text classification")
    p.add_argument("--from", dest="from_run", metavar="RUN", help="pretrained run folder")
    p.add_argument("--train", help="labeled training file (.tsv, .csv, .jsonl)")
    p.add_argument("--dev", help="labeled dev file (evaluated during training; picks the best checkpoint)")
    p.add_argument("--test", help="labeled test file (evaluated once at the end)")
    p.add_argument("--out", help="run folder to create")
    p.add_argument("--resume", metavar="RUN2", help="continue a fine-tuning run from its latest checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_config_args(p, "TOML file with a [finetune] section")
    _add_nproc_arg(p)
    defaults = FinetuneConfig()
    for name in _FINETUNE_FLAGS:
        default = getattr(defaults, name)
        flags = [f"--{name}"] + ([f"--{name.replace('_', '-')}"] if "_" in name else [])
        if isinstance(default, bool):
            p.add_argument(*flags, dest=f"ft_{name}", action="store_true", default=None)
        else:
            p.add_argument(*flags, dest=f"ft_{name}", type=type(default), default=None, metavar="V",
                           help=f"(default {default!r})" if default != "" else None)
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("classify", help="label texts with a fine-tuned classifier")
    p.add_argument("run", help="fine-tuned run folder")
    p.add_argument("texts", nargs="*", help="texts to classify")
    p.add_argument("--pair", help="second text of a pair, for each text given on the command line")
    p.add_argument("--input", help="file of texts: .txt (one per line), .tsv, .csv or .jsonl")
    p.add_argument("--output", help="write predictions as JSON lines here (default: standard output)")
    p.add_argument("--text_column", "--text-column", default="", help="column of the text in --input")
    p.add_argument("--text_pair_column", "--text-pair-column", default="", help="column of the second text")
    p.add_argument("--batch_size", "--batch-size", type=int, default=64)
    p.add_argument("--checkpoint", default="best", help="best, latest, step-N or a path")
    p.add_argument("--device", default="cpu")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_classify)


# ----------------------------------------------------------------------------------------------------
# parser


def build_parser() -> argparse.ArgumentParser:
    from lmforge import __version__

    parser = argparse.ArgumentParser(prog="lmforge", description="Language-model pretraining, end to end.")
    parser.add_argument("--version", action="version", version=f"lmforge {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    corpus = sub.add_parser("corpus", help="build a cleaned, deduplicated text corpus")
    corpus_sub = corpus.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = corpus_sub.add_parser("build", help="read, clean, dedup, scrub and split raw text")
    p.add_argument("--input", nargs="+", required=True, metavar="PATH",
                   help="files, folders, hf:NAME[:CONFIG]:SPLIT, or builtin:python-docs")
    p.add_argument("--val-input", nargs="+", metavar="PATH",
                   help="the validation split as given (instead of a random corpus.val_fraction)")
    p.add_argument("--test-input", nargs="+", metavar="PATH", help="a test split, as given")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_config_args(p, "TOML file with a [corpus] section")
    p.set_defaults(func=cmd_corpus_build)

    tokenizer = sub.add_parser("tokenizer", help="train and inspect tokenizers")
    tok_sub = tokenizer.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = tok_sub.add_parser("train", help="train a tokenizer on a corpus folder")
    p.add_argument("--corpus", required=True, help="corpus folder (from `lmforge corpus build`)")
    p.add_argument("--kind", choices=["bpe", "wordpiece", "unigram", "char", "word"])
    p.add_argument("--vocab-size", type=int)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--quiet", action="store_true")
    _add_config_args(p, "TOML file with a [tokenizer] section")
    p.set_defaults(func=cmd_tokenizer_train)
    p = tok_sub.add_parser("encode", help="print the ids (or pieces) of a text")
    p.add_argument("tokenizer", help="tokenizer folder or run folder")
    p.add_argument("text", nargs="?", help="text to encode (default: standard input)")
    p.add_argument("--pieces", action="store_true", help="print token strings instead of ids")
    p.set_defaults(func=cmd_tokenizer_encode)
    p = tok_sub.add_parser("decode", help="print the text of token ids")
    p.add_argument("tokenizer", help="tokenizer folder or run folder")
    p.add_argument("ids", nargs="*", help="token ids (default: standard input)")
    p.set_defaults(func=cmd_tokenizer_decode)

    shards = sub.add_parser("shards", help="encode a corpus into memory-mapped token shards")
    shards_sub = shards.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = shards_sub.add_parser("build", help="tokenize a corpus in parallel into versioned shards")
    p.add_argument("--corpus", required=True, help="corpus folder")
    p.add_argument("--tokenizer", required=True, help="tokenizer folder")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--workers", type=int, help="encoding processes (default: all cores)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--quiet", action="store_true")
    _add_config_args(p, "TOML file with a [shards] section")
    p.set_defaults(func=cmd_shards_build)

    _register_quickstart(sub)
    _register_train(sub)
    _register_finetune(sub)
    _register_interop(sub)
    _register_fill_mask(sub)
    _register_generate(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if getattr(args, "nproc", None) is not None:
            from lmforge.launch import relaunch

            return relaunch(args.nproc, sys.argv[1:] if argv is None else list(argv))
        return args.func(args)
    except LmforgeError as e:
        print(f"lmforge: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lmforge: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `lmforge ... | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())

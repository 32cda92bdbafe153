"""`lmforge corpus build`, `lmforge tokenizer train|encode|decode`, `lmforge shards build`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lmforge.cli.args import add_config_args, section_config
from lmforge.errors import LmforgeError


def cmd_corpus_build(args: argparse.Namespace) -> int:
    from lmforge.corpus import build_corpus
    from lmforge.corpus.config import CorpusConfig

    cfg = section_config(CorpusConfig, "corpus", args)
    build_corpus(args.input, Path(args.out), cfg, overwrite=args.overwrite, progress=not args.quiet,
                 val_inputs=args.val_input or [], test_inputs=args.test_input or [])
    return 0


def cmd_tokenizer_train(args: argparse.Namespace) -> int:
    from lmforge.tokenizer import TokenizerConfig, train_tokenizer

    if args.kind:
        args.overrides.append(f"tokenizer.kind={args.kind}")
    if args.vocab_size:
        args.overrides.append(f"tokenizer.vocab_size={args.vocab_size}")
    cfg = section_config(TokenizerConfig, "tokenizer", args)
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
    from lmforge.data.shards import ShardConfig, build_shards

    if args.workers is not None:
        args.overrides.append(f"shards.num_workers={args.workers}")
    cfg = section_config(ShardConfig, "shards", args)
    build_shards(Path(args.corpus), Path(args.tokenizer), Path(args.out), cfg, overwrite=args.overwrite,
                 progress=not args.quiet)
    return 0


def register(sub) -> None:
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
    add_config_args(p, "TOML file with a [corpus] section")
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
    add_config_args(p, "TOML file with a [tokenizer] section")
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
    add_config_args(p, "TOML file with a [shards] section")
    p.set_defaults(func=cmd_shards_build)

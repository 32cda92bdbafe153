"""The `lmforge` command line: one module per group of commands, each function parses and calls the
library, nothing more.

data: corpus build, tokenizer train|encode|decode, shards build. train: pretrain, finetune,
quickstart. infer: generate, fill-mask, classify. extract: ner, qa. tools: eval, plot, export, import-hf.
compress: distill, prune, quantize. serve: the HTTP API and playground. plan: compute and memory before
training. probe: memorisation after.

Heavy imports (torch, tokenizers) happen inside the functions so `lmforge --help` answers at once. User
mistakes raise `LmforgeError`, printed here as one line with exit status 2.
"""

from __future__ import annotations

import argparse
import os
import sys

from lmforge.errors import Interrupted, LmforgeError


def build_parser(finetune_flags: bool = True) -> argparse.ArgumentParser:
    """The whole parser; `finetune_flags=False` skips the [finetune] flags (see cli/train.py)."""
    from lmforge import __version__
    from lmforge.cli import compress, data, extract, infer, plan, probe, serve, tools, train

    parser = argparse.ArgumentParser(prog="lmforge", description="Language-model pretraining, end to end.")
    parser.add_argument("--version", action="version", version=f"lmforge {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    data.register(sub)
    train.register(sub, finetune_flags)
    infer.register(sub)
    extract.register(sub)
    tools.register(sub)
    compress.register(sub)
    serve.register(sub)
    plan.register(sub)
    probe.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else [str(a) for a in argv]
    parser = build_parser(finetune_flags="finetune" in words)
    args = parser.parse_args(argv)
    try:
        if getattr(args, "nproc", None) is not None:
            from lmforge.launch import relaunch

            return relaunch(args.nproc, sys.argv[1:] if argv is None else list(argv))
        return args.func(args)
    except LmforgeError as e:
        print(f"lmforge: error: {e}", file=sys.stderr)
        return 2
    except Interrupted as e:  # saved; already said so
        return 128 + e.signum
    except KeyboardInterrupt:
        print("lmforge: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `lmforge ... | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0

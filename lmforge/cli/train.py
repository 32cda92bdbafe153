"""`lmforge pretrain`, `lmforge finetune`, `lmforge quickstart`."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from lmforge.cli.args import add_config_args, add_nproc, add_skip_damaged, run_path
from lmforge.errors import LmforgeError


def cmd_pretrain(args: argparse.Namespace) -> int:
    from lmforge.pipeline import init_config, pretrain
    from lmforge.tasks import load_config, read_config

    overrides = list(args.overrides) + ([f"data.path={args.data}"] if args.data else [])
    if args.init_from:
        if args.resume or not args.out or not args.data:
            raise LmforgeError("--init-from RUN starts a new run: give --data SHARDS and --out NEW "
                               "(not --resume)")
        source = run_path(args.init_from)
        pretrain(init_config(source, args.config, overrides), Path(args.out), overwrite=args.overwrite,
                 init_from=source)
        return 0
    if args.resume:
        run_dir = Path(args.resume if isinstance(args.resume, str) else args.out or "")
        if not str(run_dir) or str(run_dir) == ".":
            raise LmforgeError("--resume needs a run folder: `lmforge pretrain --resume RUN`")
        if args.config:
            raise LmforgeError("--resume reads RUN/config.toml: drop --config (use --set to change a value)")
        if not (run_dir / "config.toml").is_file():
            raise LmforgeError(f"cannot resume {run_dir}: it has no config.toml (start it without --resume)")
        pretrain(read_config(run_dir, overrides), run_dir, resume=True, skip_damaged=args.skip_damaged)
        return 0
    if not args.config or not args.out:
        raise LmforgeError("pretrain needs --config FILE.toml|PRESET, --data SHARDS and --out RUN "
                           "(or --resume RUN)")
    pretrain(load_config(args.config, overrides), Path(args.out), overwrite=args.overwrite)
    return 0


def cmd_quickstart(args: argparse.Namespace) -> int:
    from lmforge.quickstart import quickstart

    quickstart(Path(args.out), args.config, tuple(args.overrides), vocab_size=args.vocab_size, fresh=args.fresh)
    return 0


# ----------------------------------------------------------------------------------------------------
# finetune: [finetune] keys are also flags, spelled as in `transformers` (--num_train_epochs or
# --num-train-epochs), made from the [finetune] sections of every fine-tuning task

_OWN_FLAGS = {"from_run": "from_run", "train_file": "train", "dev_file": "dev", "test_file": "test"}
"""[finetune] keys with a flag of their own (--from, --train, --dev, --test)."""


def _finetune_fields() -> dict[str, dataclasses.Field]:
    return {name: fields[0][1] for name, fields in _finetune_defaults().items()}


def _finetune_defaults() -> dict[str, list[tuple[str, dataclasses.Field]]]:
    """Each [finetune] key -> (task, field) for every fine-tuning task that has it."""
    from lmforge.tasks import TASKS

    out: dict[str, list[tuple[str, dataclasses.Field]]] = {}
    for name, task in TASKS.items():
        section = {f.name: f for f in dataclasses.fields(task.config_class)}.get("finetune")
        if section is not None:
            for f in dataclasses.fields(section.default_factory()):
                if f.name not in _OWN_FLAGS:
                    out.setdefault(f.name, []).append((name, f))
    return out


def _default_help(fields: list[tuple[str, dataclasses.Field]]) -> str | None:
    """'(default X)', or each task's default where they differ."""
    values = {task: f.default for task, f in fields}
    if len(set(map(repr, values.values()))) == 1:
        default = next(iter(values.values()))
        return f"(default {default!r})" if default != "" else None
    return "(default: " + ", ".join(f"{task} {v!r}" for task, v in values.items()) + ")"


def _flag_values(args: argparse.Namespace) -> dict:
    """finetune.* values given as flags (typed already), --train/--dev/--test/--out included."""
    values = {k: getattr(args, f"ft_{k}") for k in _finetune_fields() if getattr(args, f"ft_{k}") is not None}
    for key, flag in _OWN_FLAGS.items():
        if key != "from_run" and getattr(args, flag):
            values[key] = str(getattr(args, flag))
    if args.out:
        values["output_dir"] = str(args.out)
    return values


def cmd_finetune(args: argparse.Namespace) -> int:
    from lmforge.pipeline import finetune, finetune_config
    from lmforge.tasks import get_task

    if not get_task(args.task).finetunes:
        from lmforge.tasks import TASKS

        which = ", ".join(name for name, t in TASKS.items() if t.finetunes)
        raise LmforgeError(f"--task {args.task}: it pretrains (`lmforge pretrain`); finetune takes {which}")
    overrides = list(args.overrides) + (["train.progress=false"] if args.quiet else [])
    flags = _flag_values(args)
    source = run_path(args.from_run) if args.from_run and not args.resume else None
    cfg = finetune_config(args.task, source, args.config, overrides, flags,
                          resume=Path(args.resume) if args.resume else None)
    out = Path(args.resume) if args.resume else Path(cfg.finetune.output_dir or "")
    finetune(cfg, out if str(out) not in ("", ".") else None, resume=bool(args.resume), overwrite=args.overwrite,
             skip_damaged=args.skip_damaged)
    return 0


def register(sub, finetune_flags: bool = True) -> None:
    """`finetune_flags=False` leaves out the [finetune] flags, whose defaults come from the tasks' config
    classes (importing torch): `lmforge --help` and the other commands answer at once without them."""
    p = sub.add_parser("pretrain", help="pretrain a GPT/BERT/RNN on token shards")
    add_config_args(p, "TOML run config or preset name (gpt-tiny, gpt-shakespeare-char, gpt2-small, ...)")
    p.add_argument("--data", help="shards folder (sets data.path)")
    p.add_argument("--out", help="run folder to create")
    p.add_argument("--resume", nargs="?", const=True, default=None, metavar="RUN",
                   help="continue the run in RUN (or --out) from its latest checkpoint")
    p.add_argument("--init-from", metavar="RUN",
                   help="start a new run from RUN's weights, model and tokenizer (a run folder or hf:DIR)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    add_skip_damaged(p)
    add_nproc(p)
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("finetune", help="fine-tune a pretrained run on labeled files (--task, default classify)")
    p.add_argument("--task", default="classify", help="what to fine-tune for (a task of lmforge.tasks with a "
                                                      "head; default: classify)")
    p.add_argument("--from", dest="from_run", metavar="RUN", help="pretrained run folder (or hf:DIR)")
    p.add_argument("--train", help="labeled training file (.tsv, .csv, .jsonl)")
    p.add_argument("--dev", help="labeled dev file (evaluated during training; picks the best checkpoint)")
    p.add_argument("--test", help="labeled test file (evaluated once at the end)")
    p.add_argument("--out", help="run folder to create")
    p.add_argument("--resume", metavar="RUN2", help="continue a fine-tuning run from its latest checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_skip_damaged(p)
    add_config_args(p, "TOML file with a [finetune] section")
    add_nproc(p)
    for name, fields in (_finetune_defaults() if finetune_flags else {}).items():
        f = fields[0][1]
        default = f.default
        flags = [f"--{name}"] + ([f"--{name.replace('_', '-')}"] if "_" in name else [])
        if isinstance(default, bool):
            p.add_argument(*flags, dest=f"ft_{name}", action="store_true", default=None)
        else:
            p.add_argument(*flags, dest=f"ft_{name}", type=type(default), default=None, metavar="V",
                           help=_default_help(fields))
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("quickstart", help="the whole pipeline on the Python docs, offline, on CPU, in minutes")
    p.add_argument("--out", default="quickstart", help="folder for corpus, tokenizer, shards and run")
    p.add_argument("--config", default="gpt-tiny", help="run config or preset name")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a run config value (repeatable)")
    p.add_argument("--vocab-size", type=int, default=4096)
    p.add_argument("--fresh", action="store_true", help="rebuild corpus, tokenizer and shards too")
    p.set_defaults(func=cmd_quickstart)

"""What the tasks that read token shards share: their tokenizer, their splits, their evaluation.

A pretraining task file gives `parts(cfg, tok, train_src, val_src, runtime) -> LMParts`: its objective,
its training batches and its evaluation batches. `prepare` and `evaluate` here turn those into what the
pipeline and `lmforge eval` need, the same way for causal LM, masked LM and truncated BPTT.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmforge import runs
from lmforge.errors import LmforgeError
from lmforge.runtime import Runtime
from lmforge.tasks.task import LoadedRun, Source, TaskData, lm_evaluation


@dataclass
class LMParts:
    objective: Callable
    batches: Any | None
    """Training batches (None when only evaluating)."""
    eval_batches: Callable[[int], Iterable[dict]] | None
    """max_batches (0: all) -> this process's evaluation batches; None without a held-out split."""
    bytes_per_token: float | None
    """Text bytes per token of the held-out split: bits per byte need it (None: not reported)."""
    measure: Callable | None = None
    """`(model, objective, batches, runtime, bytes_per_token) -> metrics` of an evaluation; None:
    `evaluate.evaluate_lm` (loss, perplexity, accuracy, bits per byte)."""


Parts = Callable[[Any, Any, Any, Any, Runtime], LMParts]


def eval_count(cfg, max_batches: int, world: int) -> int:
    """Evaluation batches of the per-process micro-batch that cover what `max_batches` covers on one
    process, so validation sees the same sequences whatever the number of processes."""
    return max_batches * (cfg.train.micro_batch(1) // cfg.train.micro_batch(world))


def _tokenizer(cfg, run_dir: Path, resume: bool, source: Source | None):
    from lmforge.tokenizer import load_tokenizer

    if resume:
        return runs.load_tokenizer(run_dir)
    if source is not None:
        return runs.checkpoint_tokenizer(source.run, source.checkpoint)
    check_shards_folder(cfg)
    return load_tokenizer(Path(cfg.data.path) / "tokenizer")


def check_shards_folder(cfg) -> None:
    """data.path must be a shards folder: say what it is instead when it is not."""
    folder = Path(cfg.data.path)
    if not cfg.data.path:
        raise LmforgeError("config key 'data.path' is empty: pass --data SHARDS (a `lmforge shards build` folder)")
    if not folder.exists():
        raise LmforgeError(f"config key 'data.path' = {str(folder)!r} does not exist (the shards moved, or the run "
                           "was started elsewhere): pass --data SHARDS, or --set data.path=SHARDS when resuming")
    if not (folder / "manifest.json").is_file() and any(folder.glob("train-*.jsonl.*")):
        raise LmforgeError(f"{folder} is a corpus folder, not shards: encode it with `lmforge shards build --corpus "
                           f"{folder} --tokenizer TOK --out SHARDS` and pass --data SHARDS")


def open_splits(cfg, tok, source: Source | None):
    """(train, val) of the shards in data.path; val is None when the folder has no such split."""
    from lmforge.data.shards import TokenShards
    from lmforge.tokenizer import load_tokenizer

    check_shards_folder(cfg)
    shards_tok = Path(cfg.data.path) / "tokenizer"
    if source is not None and shards_tok.is_dir() and load_tokenizer(shards_tok).fingerprint != tok.fingerprint:
        raise LmforgeError(f"shards in {cfg.data.path} were built with tokenizer "
                           f"{load_tokenizer(shards_tok).fingerprint}, {source.run} expects {tok.fingerprint}: "
                           f"rebuild them with `lmforge shards build --tokenizer {source.run / 'tokenizer'}`")
    train = TokenShards.open(Path(cfg.data.path), cfg.data.train_split, expect_fingerprint=tok.fingerprint)
    try:
        val = TokenShards.open(Path(cfg.data.path), cfg.data.val_split, expect_fingerprint=tok.fingerprint)
    except LmforgeError as e:
        if "split" not in str(e):
            raise
        val = None
    return train, val


def prepare(parts: Parts, cfg, runtime: Runtime, run_dir: Path, resume: bool, source: Source | None,
            say) -> TaskData:
    """TaskData of a pretraining task from its `parts`."""
    tok = _tokenizer(cfg, run_dir, resume, source)
    cfg = cfg.with_vocab(tok.vocab_size)
    if cfg.data.path and not resume:  # recorded absolute: a resume from another folder still finds it
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, path=str(Path(cfg.data.path).resolve())))
    train_src, val_src = open_splits(cfg, tok, source)
    p = parts(cfg, tok, train_src, val_src, runtime)
    evaluate = None
    if p.eval_batches is not None:
        evaluate = lm_evaluation(p.objective, p.eval_batches, runtime, p.bytes_per_token, cfg.train.eval_batches,
                                 p.measure)
    files = {runs.INIT_FROM: {"run": str(source.run), "checkpoint": str(source.checkpoint)}} if source else {}
    return TaskData(cfg, tok, p.batches, p.objective, evaluate,
                    f"{cfg.train.batch_size} x {cfg.seq_len()} tokens", files=files)


def evaluate(parts: Parts, run: LoadedRun, data: str | None, split: str | None, max_batches: int,
             runtime: Runtime) -> dict:
    """`lmforge eval` of a pretrained run: loss, perplexity and bits per byte on a split of shards."""
    from lmforge.data.shards import TokenShards
    from lmforge.evaluate import evaluate_lm

    cfg, split = run.config, split or "val"
    folder = Path(data or cfg.data.path)
    if not str(folder) or str(folder) == ".":
        raise LmforgeError(f"{run.run_dir}/config.toml has no data.path: pass --data SHARDS")
    source = TokenShards.open(folder, split, expect_fingerprint=run.tokenizer.fingerprint)
    p = parts(cfg, run.tokenizer, None, source, runtime)
    metrics = (p.measure or evaluate_lm)(run.model, p.objective, p.eval_batches(max_batches), runtime,
                                         p.bytes_per_token)
    return {"checkpoint": run.checkpoint.name, "split": split, **metrics}

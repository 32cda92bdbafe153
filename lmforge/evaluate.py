"""Evaluation of language models: loss, perplexity and bits per byte over a validation split.

Bits per byte = total nats over the windows / ln 2 / the UTF-8 bytes of text they cover, where the
bytes are estimated as targets x (text bytes / tokens of the split), from the shard manifest. Unlike
perplexity it compares models with different tokenizers.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

from lmforge.errors import LmforgeError
from lmforge.runtime import Runtime


@torch.no_grad()
def evaluate_lm(model: nn.Module, objective, batches: Iterable[dict[str, torch.Tensor]], runtime: Runtime,
                bytes_per_token: float | None = None) -> dict[str, float]:
    """Mean loss per target over `batches`, its perplexity and (given bytes per token) bits per byte.

    An objective whose extras count `correct` predictions also gets `accuracy` (per target).
    """
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=runtime.device)
    count = torch.zeros((), dtype=torch.int64, device=runtime.device)
    correct = None
    for batch in batches:
        with runtime.autocast():
            loss_sum, n_targets, extras = objective(model, runtime.to_device(batch))
        total += loss_sum.double()
        count += n_targets
        if "correct" in extras:
            correct = extras["correct"].long() + (0 if correct is None else correct)
    model.train(was_training)
    nats, targets = runtime.all_reduce_sum(total).item(), int(runtime.all_reduce_sum(count).item())
    if targets == 0:
        raise ValueError("evaluation saw no targets")
    loss = nats / targets
    out = {"loss": loss, "perplexity": math.exp(min(loss, 700.0)), "tokens": targets}
    if bytes_per_token:
        out["bits_per_byte"] = nats / math.log(2) / (targets * bytes_per_token)
    if correct is not None:
        out["accuracy"] = runtime.all_reduce_sum(correct).item() / targets
    return out


def evaluate_run(run_dir: Path, data: Path | None = None, split: str = "val", max_batches: int = 0,
                 checkpoint: str = "best", device: str = "auto") -> dict[str, float]:
    """`lmforge eval`: a run's checkpoint on one split of a shards folder (the run's data by default)."""
    from lmforge.data.shards import TokenShards
    from lmforge.run import TASKS, load_run
    from lmforge.runtime import setup_runtime

    run = load_run(run_dir, checkpoint, device)
    cfg = run.config
    data = Path(data or cfg.data.path)
    if not str(data):
        raise LmforgeError(f"{run_dir}/config.toml has no data.path: pass --data SHARDS")
    source = TokenShards.open(data, split, expect_fingerprint=run.tokenizer.fingerprint)
    device_name = str(next(run.model.parameters()).device)
    runtime = setup_runtime(dataclasses.replace(cfg.runtime, device=device_name, compile=False))
    task = TASKS[cfg.model.kind](cfg, source, source)
    metrics = evaluate_lm(run.model, task.objective, task.eval_batches(max_batches), runtime,
                          task.bytes_per_token)
    return {"checkpoint": run.checkpoint.name, "split": split, **metrics}

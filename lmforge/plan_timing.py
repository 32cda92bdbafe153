"""This CPU's training speed, timed on the spot by a few real steps (`lmforge plan --data`).

The model trains a few steps on its own shards with its task's objective and optimizer, as the loop
does (forward and backward under the run's precision and checkpointing, clipping, the optimizer step):
two steps of one sequence (the second times the optimizer step, whose cost does not grow with the
batch), then forward and backward at the largest micro-batch up to the configured one that takes about
a sixth of the budget. Their FLOP/s (by `flops_per_token`, the loop's MFU formula) and the optimizer
step's seconds give any step: time = FLOPs / rate + optimizer.
"""

from __future__ import annotations

import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

import torch

from lmforge.optim import build_optimizer
from lmforge.runtime import setup_runtime
from lmforge.runtime_auto import planned_precision
from lmforge.tasks import get_task


def time_cpu_steps(cfg, matmul_flops: float, budget_s: float = 2.0) -> dict | None:
    """{"micro_batch", "flops_per_s" (forward + backward), "optimizer_s"} of `cfg` (a pretraining config with
    data.path) on this CPU; None, without training, when one sequence would take more than a quarter of
    the budget at `matmul_flops` (the CPU's timed matmul rate)."""
    precision = planned_precision(cfg.runtime.precision, cuda=False)  # "auto" as a run here would settle
    runtime = setup_runtime(dataclasses.replace(cfg.runtime, device="cpu", parallel="none", compile=False,
                                                precision=precision))
    task = get_task(cfg.task)
    with tempfile.TemporaryDirectory() as tmp:
        data = task.prepare(cfg, runtime, Path(tmp) / "run", False, None, lambda message: None)
    torch.manual_seed(cfg.train.seed)
    raw = task.build_model(data.cfg, data.files)
    model = runtime.wrap(raw).train()
    optimizer = build_optimizer(raw, cfg.optim, "cpu")
    seq_len = data.cfg.seq_len()
    if raw.flops_per_token(seq_len) * seq_len / matmul_flops > budget_s / 4:
        return None

    def step(b: int, optimize: bool) -> tuple[float, float]:
        batch = data.batches.get(0, 0, 0, 1, b)
        start = time.perf_counter()
        with runtime.autocast():
            loss_sum, n_targets, _ = data.objective(model, batch)
        (loss_sum / max(int(n_targets), 1)).backward()
        torch.nn.utils.clip_grad_norm_(raw.parameters(), cfg.train.grad_clip or float("inf"))
        middle = time.perf_counter()
        if optimize:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return middle - start, time.perf_counter() - middle

    step(1, True)  # first calls: kernels chosen, optimizer state allocated
    one, optimizer_s = step(1, True)  # the optimizer's time does not grow with the batch: timed once
    b = max(1, min(cfg.train.micro_batch(1), int(budget_s / 6 / one)))
    step(b, False)
    forward_backward = statistics.median(step(b, False)[0] for _ in range(2))
    return {"micro_batch": b, "flops_per_s": raw.flops_per_token(seq_len) * b * seq_len / forward_backward,
            "optimizer_s": optimizer_s}

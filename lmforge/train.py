"""The one training loop. It knows nothing about GPT: it is handed a model, a loss and a batch source.

- `objective(model, batch) -> (loss_sum, n_targets, extras)` sums its per-target losses; the loop
  divides by the targets of the whole step (all micro-batches, all processes), counted on the host
  before any backward pass, so accumulation/data parallelism give exactly one big batch's gradient.
- `batches.get(step, micro, rank, world, micro_batch)` is a pure function of the step, so the step
  saved in a checkpoint is the whole data position. An objective that keeps state across steps (the
  carried state of truncated BPTT) has `state_dict()` / `load_state_dict()`; checkpoints carry it.
- The host synchronises with the device only at log, eval and save steps (`.item()` there), except
  with `train.on_nan="skip"`, which must look at every step's loss before the update.

Outputs in `run_dir`: metrics.jsonl (one JSON object per log/eval event; `step` counts completed
optimizer steps), tensorboard/ (when tensorboard is installed; a line says when it is not),
checkpoints/.
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from tqdm.auto import tqdm

from lmforge.checkpoint import find_checkpoint, list_checkpoints, load_checkpoint, save_checkpoint
from lmforge.config import check, check_ranges
from lmforge.errors import LmforgeError
from lmforge.metrics_log import MetricsLog, step_of
from lmforge.objectives import count_targets
from lmforge.optim import OptimConfig, Schedule, ScheduleConfig, build_optimizer, set_lr
from lmforge.runtime import Runtime


@dataclass(frozen=True)
class TrainConfig:
    max_steps: int = 1000
    """Optimizer updates."""
    max_minutes: float = 0.0
    """Wall-clock budget of one `pretrain`/`finetune` invocation in minutes (0 = off). The run stops after
    the first step past it, saves a checkpoint and evaluates as at the end. The lr schedule still follows
    max_steps, so set max_steps to about the steps that fit."""
    batch_size: int = 32
    """Sequences per optimizer step, summed over micro-batches and processes."""
    micro_batch_size: int = 0
    """Sequences per forward/backward on one process; 0 means batch_size / processes."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this; 0 disables clipping."""
    seed: int = 1337
    log_every: int = 10
    eval_every: int = 250
    """Evaluate every N steps (and at the end); 0 evaluates only at the end."""
    eval_batches: int = 20
    """Validation batches per evaluation; 0 means the whole validation split."""
    save_every: int = 500
    """Checkpoint every N steps (and at the end, and on Ctrl-C)."""
    keep_last: int = 2
    """Checkpoints kept besides the best one."""
    on_nan: Literal["stop", "skip"] = "stop"
    """A NaN/inf loss stops the run (keeping the last good checkpoint) or skips that step."""
    progress: bool = True
    """Show a progress bar."""

    def __post_init__(self) -> None:
        check(self.max_minutes >= 0, "train.max_minutes", "must be >= 0 (0 turns the budget off)")
        check_ranges(self, "train", positive="max_steps batch_size log_every",
                     non_negative="micro_batch_size grad_clip eval_every eval_batches save_every keep_last")

    def grad_accum_steps(self, world_size: int = 1) -> int:
        """Micro-steps per optimizer step on each process."""
        micro = self.micro_batch_size or self.batch_size // world_size
        if micro <= 0 or self.batch_size % (micro * world_size):
            raise LmforgeError(
                f"train.batch_size={self.batch_size} is not a multiple of train.micro_batch_size={micro} "
                f"x {world_size} processes: change one of them")
        return self.batch_size // (micro * world_size)

    def micro_batch(self, world_size: int = 1) -> int:
        return self.micro_batch_size or self.batch_size // world_size


Objective = Callable[[nn.Module, dict[str, torch.Tensor]], tuple[torch.Tensor, Any, dict]]


@dataclass
class Evaluation:
    """What an evaluation function returns to the loop."""

    metrics: dict[str, Any]
    """Logged to metrics.jsonl as val_<name>; "loss" is required."""
    select: float | None = None
    """Lower is better: picks the best checkpoint (and drives the plateau schedule); None: the loss."""
    stop: str | None = None
    """A reason to end the run after this evaluation (early stopping): it saves and stops."""

    @property
    def select_loss(self) -> float:
        return self.metrics["loss"] if self.select is None else self.select


EvaluateFn = Callable[[nn.Module], Evaluation]


@dataclass
class TrainResult:
    step: int
    """Optimizer steps completed."""
    stopped: str
    """'done', 'time' (past `train.max_minutes`: saved and evaluated), 'early_stopping' (the evaluation
    said stop: saved), or 'interrupted' (Ctrl-C or SIGTERM: saved, resumable)."""
    checkpoint: Path | None
    best_val_loss: float | None
    signal: int | None = None
    """The signal that interrupted the run."""


class _Flag(threading.Event):
    signum: int | None = None


@contextlib.contextmanager
def _stop_signals() -> Iterator[_Flag]:
    """Ctrl-C or SIGTERM (what schedulers send) sets a flag the loop reads after the current step: it
    saves and stops. The same signal again interrupts at once."""
    flag = _Flag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):
        flag.signum = signum
        flag.set()
        signal.signal(signum, previous[signum])

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _every(n: int, done: int, last: bool) -> bool:
    return last or (n > 0 and done % n == 0)


def train(model: nn.Module, objective: Objective, batches: Any, *, optim_cfg: OptimConfig,
          schedule_cfg: ScheduleConfig, train_cfg: TrainConfig, runtime: Runtime, run_dir: Path,
          evaluate_fn: EvaluateFn | None = None, resume: bool = False, skip_damaged: bool = False) -> TrainResult:
    """Train `model` (a plain module) for `train_cfg.max_steps` optimizer steps.

    `resume` continues from the latest checkpoint in `run_dir` (weights, optimizer, scaler, RNG, step);
    `skip_damaged` resumes from the newest intact one when the latest fails its checksums.
    `evaluate_fn(model) -> Evaluation` runs every `eval_every` steps and at the end, in eval mode under
    no_grad; its select loss picks the best checkpoint, and its `stop` ends the run there (saved).
    """
    run_dir = Path(run_dir)
    raw = model.to(runtime.device)
    settle_precision(raw, objective, batches, train_cfg, runtime)
    scaler = runtime.grad_scaler()
    start, best, tokens_seen, state = 0, None, 0, None
    schedule = Schedule(schedule_cfg, train_cfg.max_steps)
    ckpt = resume_point(run_dir, train_cfg, skip_damaged) if resume else None
    if ckpt is not None:
        state = load_checkpoint(ckpt, raw, None, scaler)
        start, best, tokens_seen = state["step"], state.get("best_val_loss"), state.get("tokens", 0)
        schedule.load_state_dict(state)
        if "objective" in state and hasattr(objective, "load_state_dict"):
            objective.load_state_dict(state["objective"])
    model = runtime.wrap(raw)  # FSDP replaces the parameters by shards: the optimizer comes after
    optimizer = build_optimizer(raw, optim_cfg, runtime.device.type)
    if state is not None:
        base_lrs = [g["base_lr"] for g in optimizer.param_groups]
        runtime.load_optimizer_state(raw, optimizer, state["optimizer"])
        for group, base_lr in zip(optimizer.param_groups, base_lrs):
            group["base_lr"] = base_lr  # the config's lr wins over the saved one
    model.train()
    world, accum = runtime.world_size, train_cfg.grad_accum_steps(runtime.world_size)
    micro_batch = train_cfg.micro_batch(world)
    log = MetricsLog(run_dir, start if resume else None, enabled=runtime.is_main)
    chooser = runtime.compile_chooser(log.say)  # runtime.compile = "auto": decided by timing the first steps
    flops_per_token = getattr(raw, "flops_per_token", None)
    peak = runtime.peak_flops()
    bar = tqdm(total=train_cfg.max_steps, initial=start, disable=not (train_cfg.progress and runtime.is_main),
               dynamic_ncols=True, unit="step")
    t_start = t_log = time.perf_counter()
    tokens_since_log, bad = 0, torch.zeros((), dtype=torch.bool, device=runtime.device)
    checkpoint, stopped, val_loss, done = None, "done", None, start

    def save(done: int, extra: dict) -> Path:
        if bool(bad):
            raise _diverged(run_dir, done)
        model_state, optim_state = runtime.full_state(model, optimizer)  # every process gathers (FSDP)
        path = None
        if runtime.is_main:
            path = save_checkpoint(run_dir, done, runtime.unwrap(model), optimizer, scaler,
                                   {"step": done, "tokens": tokens_seen, "val_loss": val_loss,
                                    "best_val_loss": best, **schedule.state_dict(), **extra},
                                   keep_last=train_cfg.keep_last, model_state=model_state,
                                   optimizer_state=optim_state)
        runtime.barrier()  # nobody reads or resumes a checkpoint still being written
        return path

    with _stop_signals() as interrupted:
        try:
            for step in range(start, train_cfg.max_steps):
                t_step = time.perf_counter()
                done, last = step + 1, step + 1 == train_cfg.max_steps
                set_lr(optimizer, schedule.factor(step))
                micro = [batches.get(step, m, runtime.rank, world, micro_batch) for m in range(accum)]
                n_targets = runtime.sum_count(sum(count_targets(b) for b in micro))
                n_tokens = runtime.sum_count(sum(b["input_ids"].numel() for b in micro))
                runtime.fault_point(step)
                loss_sum = _forward_backward(model, objective, micro, n_targets, runtime, scaler)
                loss_sum = runtime.all_reduce_sum(loss_sum)  # the global loss: every process agrees on NaN
                scaler.unscale_(optimizer)
                grad_norm = torch.nn.utils.clip_grad_norm_(raw.parameters(), train_cfg.grad_clip or math.inf,
                                                           foreach=runtime.device.type != "mps")
                if hasattr(grad_norm, "full_tensor"):  # a DTensor when the gradients are FSDP shards
                    grad_norm = grad_norm.full_tensor()
                finite = torch.isfinite(loss_sum)
                skipped = train_cfg.on_nan == "skip" and not finite
                if skipped:
                    optimizer.zero_grad(set_to_none=True)
                    log.write({"step": done, "skipped": "non-finite loss"})
                else:
                    bad |= ~finite
                    scaler.step(optimizer)
                    scaler.update()
                    optimizer.zero_grad(set_to_none=True)
                if chooser is not None:
                    model = chooser.after_step(model, time.perf_counter() - t_step, train_cfg.max_steps - done)
                tokens_seen += n_tokens
                tokens_since_log += n_tokens
                bar.update(1)
                if not last and _past_budget(train_cfg.max_minutes, t_start, runtime):
                    last, stopped = True, "time"  # this step ends the run: log, evaluate, save as at the end
                if (_every(train_cfg.log_every, done, last) or interrupted.is_set()) and not skipped:
                    loss = loss_sum.item() / max(n_targets, 1)
                    if bool(bad):
                        raise _diverged(run_dir, done)
                    now = time.perf_counter()
                    record = {"step": done, "loss": loss, "lr": optimizer.param_groups[0]["lr"],
                              "grad_norm": grad_norm.item(), "tokens": tokens_seen,
                              "tokens_per_s": tokens_since_log / (now - t_log), "elapsed": now - t_start}
                    if flops_per_token is not None and peak:
                        seq_len = micro[0]["input_ids"].shape[-1]
                        record["mfu"] = flops_per_token(seq_len) * record["tokens_per_s"] / (peak * world)
                    log.write(record)
                    bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
                    t_log, tokens_since_log = time.perf_counter(), 0
                if evaluate_fn is not None and _every(train_cfg.eval_every, done, last):
                    eager = chooser.eager if chooser is not None and chooser.eager is not None else model
                    evaluation = _evaluate(eager, evaluate_fn, log, done)  # no second graph to compile
                    val_loss = evaluation.select_loss
                    schedule.observe(val_loss)
                    best = val_loss if best is None else min(best, val_loss)
                    if evaluation.stop and not last:
                        last, stopped = True, "early_stopping"  # saved below, then the loop ends
                        log.say(evaluation.stop)
                    t_log = time.perf_counter()  # evaluation time is not training throughput
                if _every(train_cfg.save_every, done, last) or interrupted.is_set():
                    # a stateful objective (the carried RNN state) is saved too; every process takes part
                    extra = {"objective": objective.state_dict()} if hasattr(objective, "state_dict") else {}
                    checkpoint = save(done, extra) or checkpoint
                    t_log = time.perf_counter()
                val_loss = None
                if interrupted.is_set():
                    stopped = "interrupted"
                    break
                if stopped in ("time", "early_stopping"):
                    break
        finally:
            bar.close()
            log.close()
    return TrainResult(step=done, stopped=stopped, checkpoint=checkpoint, best_val_loss=best,
                       signal=interrupted.signum)


def settle_precision(model: nn.Module, objective: Objective, batches: Any, train_cfg: TrainConfig,
                     runtime: Runtime) -> None:
    """Settle `runtime.precision = "auto"` (a CPU with bf16 units) by timing one training micro-step of
    this model on its first micro-batch in fp32 and bf16; nothing of the run changes (gradients, RNG,
    an objective's carried state are put back). A no-op once settled."""
    if runtime.cfg.precision != "auto":
        return
    model = model.to(runtime.device)
    world = runtime.world_size
    batch = runtime.to_device(batches.get(0, 0, runtime.rank, world, train_cfg.micro_batch(world)))
    rng, carried = torch.get_rng_state(), objective.state_dict() if hasattr(objective, "state_dict") else None

    def step(autocast: contextlib.AbstractContextManager) -> None:
        with autocast:
            loss_sum, _, _ = objective(model, batch)
        loss_sum.backward()
        model.zero_grad(set_to_none=True)

    runtime.settle_precision(step, "training micro-step")
    torch.set_rng_state(rng)
    if carried is not None:
        objective.load_state_dict(carried)


def resume_point(run_dir: Path, train_cfg: TrainConfig, skip_damaged: bool = False) -> Path | None:
    """The checkpoint a resume continues from (None: step 0), checked whole before anything is written.

    No checkpoint means step 0, right after a kill before the first one; but not when the metrics show
    the run got past it (its checkpoints were deleted): that history is kept, and the resume refused.
    """
    from lmforge.checkpoint import check_intact

    run_dir = Path(run_dir)
    if not list_checkpoints(run_dir):
        _check_nothing_lost(run_dir, min(train_cfg.save_every or train_cfg.max_steps, train_cfg.max_steps))
        return None
    ckpt = find_checkpoint(run_dir, "latest", skip_damaged)
    check_intact(ckpt)
    return ckpt


def _check_nothing_lost(run_dir: Path, first_save: int) -> None:
    path = run_dir / "metrics.jsonl"
    steps = [step_of(ln) for ln in path.read_text().splitlines() if ln.strip()] if path.is_file() else []
    reached = max((s for s in steps if s != math.inf), default=0)
    if reached > first_save:
        raise LmforgeError(f"cannot resume {run_dir}: its checkpoints/ holds no checkpoint but metrics.jsonl "
                           f"reaches step {reached}: restore the checkpoints, or start again with --overwrite")


def _past_budget(max_minutes: float, t_start: float, runtime: Runtime) -> bool:
    """Whether this invocation's wall time has passed the budget; every process agrees (rank 0's clock)."""
    if max_minutes <= 0:
        return False
    over = time.perf_counter() - t_start > 60 * max_minutes
    return runtime.sum_count(int(over) if runtime.rank == 0 else 0) > 0  # a clock skew must not split ranks


def _forward_backward(model: nn.Module, objective: Objective, micro: list[dict[str, torch.Tensor]],
                      n_targets: int, runtime: Runtime, scaler: torch.amp.GradScaler) -> torch.Tensor:
    """Accumulate the gradients of one step's micro-batches; return the summed loss (on device)."""
    scale = 1.0 / max(n_targets, 1)
    total = torch.zeros((), device=runtime.device)
    nxt = runtime.to_device(micro[0])
    for m in range(len(micro)):
        batch = nxt
        if m + 1 < len(micro):
            nxt = runtime.to_device(micro[m + 1])  # the copy overlaps this micro-step's compute on CUDA
        with runtime.no_sync(model, sync=m + 1 == len(micro)):
            with runtime.autocast():
                loss_sum, _, _ = objective(model, batch)
            scaler.scale(loss_sum * scale).backward()
        total += loss_sum.detach().float()
    return total


def _evaluate(model: nn.Module, evaluate_fn: EvaluateFn, log: MetricsLog, done: int) -> Evaluation:
    model.eval()
    with torch.no_grad():
        evaluation = evaluate_fn(model)
    model.train()
    log.write({"step": done, **{f"val_{k}": v for k, v in evaluation.metrics.items()}})
    return evaluation


def _diverged(run_dir: Path, done: int) -> LmforgeError:
    kept = list_checkpoints(run_dir)
    where = f"the last good checkpoint is {kept[-1]}" if kept else "no checkpoint was saved"
    return LmforgeError(f"the training loss became NaN/inf by step {done}; {where}. Lower optim.lr, raise "
                        "schedule.warmup_steps, use runtime.precision=bf16 instead of fp16, or set "
                        "train.on_nan=skip")

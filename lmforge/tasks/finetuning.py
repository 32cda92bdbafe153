"""What the tasks that fine-tune a pretrained run on labeled files share.

Their settings carry the `transformers` names ([finetune]: `num_train_epochs`, `learning_rate`, ...)
and map onto the one set of loop settings ([train], [optim], [schedule]): `with_loop` derives the
loop's keys that [finetune] covers, and `refuse_covered` refuses those keys when a user sets them
directly (`--set optim.lr=...`: say `--learning_rate`), so no setting is accepted and then dropped.
The loop's other keys (`train.max_minutes`, `train.on_nan`, `optim.name`, `optim.betas`,
`schedule.min_lr_ratio`, ...) are honoured as given.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from torch import nn

from lmforge.config import check, check_ranges
from lmforge.errors import LmforgeError
from lmforge.optim import OptimConfig, ScheduleConfig
from lmforge.runs import RunConfig
from lmforge.train import Evaluation


@dataclass(frozen=True)
class FinetuneConfig:
    """[finetune]: the settings every fine-tuning task shares (names follow `transformers.TrainingArguments`)."""

    from_run: str = ""
    """Pretrained run folder whose model and tokenizer are fine-tuned."""
    from_checkpoint: str = "best"
    """Checkpoint of `from_run`: best, latest, step-N or a path."""
    train_file: str = ""
    """Labeled training data: .tsv, .csv or .jsonl."""
    dev_file: str = ""
    """Labeled data evaluated every `eval_steps` and at the end; picks the best checkpoint."""
    test_file: str = ""
    """Labeled data evaluated once at the end (optional)."""
    max_length: int = 0
    """Tokens per example (longer ones are truncated and counted); 0 means the model's context_len."""
    output_dir: str = ""
    """Run folder to create (the --out of the CLI)."""
    logging_dir: str = ""
    """TensorBoard folder; empty means output_dir/tensorboard."""
    num_train_epochs: float = 3.0
    """Passes over the training data (used when max_steps is 0)."""
    max_steps: int = 0
    """Optimizer steps; 0 derives them from num_train_epochs and the training set size."""
    per_device_train_batch_size: int = 32
    """Examples per optimizer step, split over the processes: the same steps on any number of processes."""
    per_device_eval_batch_size: int = 64
    gradient_accumulation_steps: int = 1
    """Micro-batches per optimizer step (per_device_train_batch_size is split into this many)."""
    learning_rate: float = 5e-5
    """Peak learning rate."""
    warmup_steps: int = 0
    lr_scheduler_type: Literal["linear", "cosine", "constant", "wsd", "plateau"] = "linear"
    """Decay after warmup (to schedule.min_lr_ratio, 0 by default); wsd and plateau as in pretraining."""
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 42
    """Seeds the head's initialisation and the per-epoch shuffles."""
    logging_steps: int = 10
    eval_steps: int = 0
    """Evaluate on dev (and checkpoint) every N steps; 0 means once per epoch."""
    save_total_limit: int = 2
    """Checkpoints kept besides the best one."""
    early_stopping_patience: int = 0
    """Stop after this many evaluations without improvement of metric_for_best_model; 0 never stops."""
    train_sampling_strategy: Literal["random", "group_by_length"] = "random"
    """group_by_length: batches of examples of similar length (sorted within windows of 50 batches, as
    `transformers` does): less padding, so faster steps, and less random batches."""
    freeze_encoder: bool = False
    """Train the head only (BERT's pooler too)."""
    layerwise_lr_decay: float = 1.0
    """Learning rate of layer l is lr * decay ** (depth of the head - l); 1.0 disables it."""

    def __post_init__(self) -> None:
        check(self.num_train_epochs > 0, "finetune.num_train_epochs", "must be positive")
        check(self.max_steps >= 0, "finetune.max_steps", "must be >= 0 (0: from num_train_epochs)")
        check(self.per_device_train_batch_size > 0, "finetune.per_device_train_batch_size", "must be positive")
        check(self.per_device_eval_batch_size > 0, "finetune.per_device_eval_batch_size", "must be positive")
        check(self.gradient_accumulation_steps > 0
              and self.per_device_train_batch_size % self.gradient_accumulation_steps == 0,
              "finetune.gradient_accumulation_steps", "must divide finetune.per_device_train_batch_size")
        check(self.learning_rate > 0, "finetune.learning_rate", "must be positive")
        check(self.warmup_steps >= 0, "finetune.warmup_steps", "must be >= 0")
        check(self.max_length >= 0, "finetune.max_length", "must be >= 0 (0: the model's context_len)")
        check(self.eval_steps >= 0, "finetune.eval_steps", "must be >= 0 (0: once per epoch)")
        check(self.early_stopping_patience >= 0, "finetune.early_stopping_patience", "must be >= 0")
        check(0.0 < self.layerwise_lr_decay <= 1.0, "finetune.layerwise_lr_decay", "must be in (0, 1]")
        check_ranges(self, "finetune", positive="logging_steps",
                     non_negative="max_grad_norm weight_decay save_total_limit")


@dataclass(frozen=True)
class FinetuneRunConfig(RunConfig):
    """A fine-tuned run: the pretrained run's [model] and [runtime], fine-tuning's loop defaults
    (AdamW with betas (0.9, 0.999) and no decay floor, as `transformers` has them), and [finetune]."""

    optim: OptimConfig = field(default_factory=lambda: OptimConfig(betas=(0.9, 0.999), weight_decay=0.0,
                                                                   lr=5e-5))
    schedule: ScheduleConfig = field(default_factory=lambda: ScheduleConfig(name="linear", warmup_steps=0,
                                                                            min_lr_ratio=0.0))
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)


COVERED = {
    "train.max_steps": "finetune.max_steps (or finetune.num_train_epochs)",
    "train.batch_size": "finetune.per_device_train_batch_size",
    "train.micro_batch_size": "finetune.gradient_accumulation_steps",
    "train.grad_clip": "finetune.max_grad_norm",
    "train.seed": "finetune.seed",
    "train.log_every": "finetune.logging_steps",
    "train.eval_every": "finetune.eval_steps",
    "train.save_every": "finetune.eval_steps (a checkpoint at each evaluation)",
    "train.keep_last": "finetune.save_total_limit",
    "train.eval_batches": "nothing: fine-tuning always evaluates the whole dev file",
    "optim.lr": "finetune.learning_rate",
    "optim.weight_decay": "finetune.weight_decay",
    "schedule.name": "finetune.lr_scheduler_type",
    "schedule.warmup_steps": "finetune.warmup_steps",
}
"""Loop keys that fine-tuning derives from [finetune] -> the [finetune] key (or flag) that sets them."""


def refuse_covered(user: dict[str, Any], source: str) -> None:
    """Refuse a loop key the user set that [finetune] derives (it would be overwritten, i.e. ignored)."""
    for section in ("train", "optim", "schedule"):
        for key in user.get(section, {}) or {}:
            name = f"{section}.{key}"
            if name in COVERED:
                flag = COVERED[name].partition(" ")[0].removeprefix("finetune.")
                how = f"set {COVERED[name]} instead (--{flag})" if COVERED[name].startswith("finetune.") \
                    else COVERED[name]
                raise LmforgeError(f"{source}: '{name}' is derived when fine-tuning: {how}")


def with_loop(cfg: FinetuneRunConfig, n_train: int, world: int = 1) -> FinetuneRunConfig:
    """`cfg` with the loop keys [finetune] covers derived for `n_train` examples and `world` processes.

    A step is per_device_train_batch_size examples whatever the number of processes (each takes its
    share), so a run gives the same steps, and resumes exactly, on any number of processes.
    """
    ft = cfg.finetune
    batch, accum = ft.per_device_train_batch_size, ft.gradient_accumulation_steps
    if batch % (accum * world):
        raise LmforgeError(f"finetune.per_device_train_batch_size={batch} does not split into {world} "
                           f"processes x {accum} gradient_accumulation_steps: make it a multiple of "
                           f"{accum * world}")
    steps_per_epoch = max(1, math.ceil(n_train / batch))
    max_steps = ft.max_steps or max(1, math.ceil(ft.num_train_epochs * steps_per_epoch))
    every = ft.eval_steps or steps_per_epoch
    train = dataclasses.replace(
        cfg.train, max_steps=max_steps, batch_size=batch, micro_batch_size=batch // (accum * world),
        grad_clip=ft.max_grad_norm, seed=ft.seed, log_every=ft.logging_steps, eval_every=every, eval_batches=0,
        save_every=every, keep_last=ft.save_total_limit)
    optim = dataclasses.replace(cfg.optim, lr=ft.learning_rate, weight_decay=ft.weight_decay)
    schedule = dataclasses.replace(cfg.schedule, name=ft.lr_scheduler_type, warmup_steps=ft.warmup_steps)
    return dataclasses.replace(cfg, train=train, optim=optim, schedule=schedule)


def max_length_of(cfg: FinetuneRunConfig) -> int:
    """Tokens per example: finetune.max_length, within the model's positions (512 for a recurrent model)."""
    limit, asked = cfg.model.max_positions, cfg.finetune.max_length
    if limit is None:
        return asked or 512
    if asked > limit:
        raise LmforgeError(f"finetune.max_length={asked} exceeds the model's context_len={limit}: lower it "
                           f"(or 0 for {limit})")
    return asked or limit


def absolute_paths(cfg: FinetuneRunConfig) -> FinetuneRunConfig:
    """The [finetune] paths made absolute for a new run's config.toml: a resume from another working
    folder still finds them."""
    ft = cfg.finetune
    paths = {k: str(Path(getattr(ft, k)).resolve()) for k in ("from_run", "train_file", "dev_file", "test_file",
                                                            "logging_dir") if getattr(ft, k)}
    return dataclasses.replace(cfg, finetune=dataclasses.replace(ft, **paths))


def eval_file(run, data: str | None, split: str | None, max_batches: int, what: str) -> Path:
    """The --data file `lmforge eval` reads, whole, for a fine-tuned run (`what`: its kind of file)."""
    if not data:
        raise LmforgeError(f"{run.run_dir} is a {run.task.name} run: pass --data FILE ({what})")
    if split is not None or max_batches:
        raise LmforgeError(f"{run.run_dir} is a {run.task.name} run: --split and --batches are for token shards; "
                           "it is evaluated on the whole --data file")
    return Path(data)


def check_files(ft: FinetuneConfig) -> None:
    if not ft.train_file or not ft.dev_file:
        raise LmforgeError("finetune needs --train FILE and --dev FILE (finetune.train_file, "
                           "finetune.dev_file)")
    if ft.logging_dir:  # asked for by name: refused up front rather than silently left empty
        from lmforge.extras import require

        require("tensorboard", f"finetune.logging_dir = {ft.logging_dir!r} (TensorBoard logs)")


def early_stopping(ft, metric: str, run_dir: Path, measure: Callable[[nn.Module], dict]
                   ) -> Callable[[nn.Module], Evaluation]:
    """The loop's evaluation: `measure(model)` on dev, the best checkpoint by `metric` ("loss" or a
    higher-is-better metric), and a stop after `early_stopping_patience` evaluations without a better one.

    The measured metrics are the same on every process (reduced over all of them), so each process
    takes the same decision. On resume the best so far comes from the checkpoints' meta files.
    """
    from lmforge.checkpoint import list_checkpoints, read_meta

    seen = [read_meta(c).get("val_loss") for c in list_checkpoints(run_dir)]
    state = {"best": min((s for s in seen if s is not None), default=None), "waited": 0}

    def evaluate(model: nn.Module) -> Evaluation:
        metrics = measure(model)
        select = metrics["loss"] if metric == "loss" else -metrics[metric]
        if state["best"] is None or select < state["best"]:
            state["best"], state["waited"] = select, 0
        else:
            state["waited"] += 1
        stop = None
        if ft.early_stopping_patience and state["waited"] >= ft.early_stopping_patience:
            stop = f"early stopping: dev {metric} did not improve in {state['waited']} evaluations"
        return Evaluation(metrics, select, stop)

    return evaluate

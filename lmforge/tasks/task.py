"""What a task is: plain dataclasses, no class hierarchy.

A task (one file in tasks/) says how its examples are read and encoded, which model it trains (a
backbone, or a backbone with a head from models/heads.py), its objective, its evaluation and which
inference runs it. The pipeline (pipeline.py) trains, resumes, evaluates and loads every task the
same way; adding a task is adding a file here and a line in tasks/__init__.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from lmforge.runtime import Runtime
from lmforge.train import Evaluation


@dataclass
class Source:
    """The run a new run starts from (its weights, tokenizer and model config)."""

    run: Path
    checkpoint: Path


@dataclass
class TaskData:
    """What `Task.prepare` hands the pipeline for one training run."""

    cfg: Any
    """The run config with what the data decides filled in (vocabulary size, steps of an epoch)."""
    tokenizer: Any
    batches: Any
    """`get(step, micro, rank, world, micro_batch) -> batch`, a pure function of the step."""
    objective: Callable
    """`(model, batch) -> (loss_sum, n_targets, extras)` (objectives.py)."""
    evaluate: Callable[[nn.Module], Evaluation] | None
    """The loop's evaluation; None without held-out data."""
    step_holds: str
    """What one step trains on, for the start line: "16 x 128 tokens", "32 examples"."""
    files: dict[str, Any] = field(default_factory=dict)
    """JSON files of a new run folder (name -> content)."""
    links: dict[str, str] = field(default_factory=dict)
    """Symbolic links in a new run folder (name -> folder elsewhere)."""
    final: Callable[[nn.Module], dict] | None = None
    """Metrics of the best checkpoint once training ends (written to eval_results.json)."""


@dataclass(frozen=True)
class Task:
    name: str
    summary: str
    """What it trains, in a few words."""
    config_class: type
    """Its run config: runs.RunConfig's sections plus its own ([data], [mlm], [finetune])."""
    prepare: Callable[..., TaskData]
    """`(cfg, runtime, run_dir, resume, source, say) -> TaskData`."""
    build_model: Callable[[Any, dict[str, Any]], nn.Module]
    """`(cfg, files) -> model`, with the parameters its objective never runs frozen; `files` are the
    run folder's JSON files named in `files` (a classifier's labels)."""
    evaluate: Callable[..., dict]
    """`lmforge eval`: `(run, data, split, max_batches, runtime) -> metrics` of a loaded run."""
    inference: str
    """The command that uses a trained model: generate, fill-mask, classify, ... (finetune: none reads it
    directly, fine-tuning takes it)."""
    files: tuple[str, ...] = ()
    head: bool = False
    """The model is a backbone with a head: a source run's weights load into `model.backbone`."""
    finetunes: bool = False
    """It fine-tunes a pretrained run (`lmforge finetune --task NAME`), with or without a head."""


@dataclass
class LoadedRun:
    """A trained model with what it needs, read back from a run folder (tasks.load_run)."""

    model: nn.Module
    """In eval mode, on the requested device."""
    tokenizer: Any
    config: Any
    run_dir: Path
    step: int
    checkpoint: Path
    task: Task
    files: dict[str, Any] = field(default_factory=dict)
    untrained: tuple[str, ...] = ()
    """Parameters the checkpoint holds only as a fresh initialisation (an imported checkpoint's missing
    head: import-hf records them)."""
    quantization: dict | None = None
    """How `lmforge compress quantize` made its int8 weights (scheme, library, compile); None for fp32."""
    precision: str = "fp32"
    """The precision its forward runs in, and why (tasks.inference_precision)."""

    def untrained_lm_head(self) -> list[str]:
        """The language-model head's parameters that were never trained (empty for a trained LM)."""
        prefixes = getattr(self.model, "lm_head_prefixes", ())
        return [name for name in self.untrained if prefixes and name.startswith(prefixes)]


def lm_evaluation(objective: Callable, batches: Callable[[int], Iterable], runtime: Runtime,
                  bytes_per_token: float | None, max_batches: int, measure: Callable | None = None
                  ) -> Callable[[nn.Module], Evaluation]:
    """The loop's evaluation of a language model on held-out data: `measure` (by default loss, perplexity
    and bits per byte: `evaluate.evaluate_lm`)."""
    from lmforge.evaluate import evaluate_lm

    measure = measure or evaluate_lm

    def evaluate(model: nn.Module) -> Evaluation:
        batches_ = runtime.even_batches(batches(max_batches))
        return Evaluation(measure(model, objective, batches_, runtime, bytes_per_token))

    return evaluate

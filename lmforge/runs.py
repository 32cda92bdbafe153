"""The run folder: its layout, its creation (atomic), its config sections, reading it back.

RUN/
  config.toml            the resolved config: `task`, then the sections of that task's config class
  tokenizer/             the tokenizer the model reads
  metrics.jsonl          one JSON object per log/eval event (train.py)
  tensorboard/           TensorBoard scalars, when tensorboard is installed
  checkpoints/step-N/    weights, optimizer and trainer state, config and tokenizer copies (checkpoint.py)
  label_map.json         a classifier's labels (tasks/classify.py)
  eval_results.json      a fine-tuned run's final dev/test metrics
  init_from.json         the run whose weights this one started from

A new run folder appears whole (config, tokenizer and its task's files) or not at all: it is written to
a temporary folder beside the target and renamed into place. `hf:` references are resolved before
anything here sees a path (by the CLI, through `interop.resolve_run`).
"""

from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmforge.atomic import output_dir, write_json
from lmforge.config import check, read_toml, save_config
from lmforge.data.loaders import DataConfig
from lmforge.errors import LmforgeError
from lmforge.models import GPTConfig, ModelConfig, model_class
from lmforge.optim import OptimConfig, ScheduleConfig
from lmforge.runtime import RuntimeConfig
from lmforge.train import TrainConfig

CONFIG = "config.toml"
TOKENIZER = "tokenizer"
INIT_FROM = "init_from.json"
RESULTS = "eval_results.json"
COMPRESSION = "compression.json"
"""What `lmforge compress` made a run from, and how (distill, prune, quantize)."""


@dataclass(frozen=True)
class RunConfig:
    """The sections every run has; each task's config class adds its own (tasks/)."""

    task: str = ""
    """The task that trains the model (tasks/): causal_lm, masked_lm, bptt, classify; empty means the
    model's pretraining task."""
    model: ModelConfig = field(default_factory=GPTConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    def __post_init__(self) -> None:
        check(not self.runtime.activation_checkpointing or model_class(self.model).recomputable_layers,
              "runtime.activation_checkpointing", f"is not implemented for {self.model.kind} models (it is for gpt, "
              "bert and t5): set it to false")


@dataclass(frozen=True)
class PretrainConfig(RunConfig):
    """A run that reads token shards: [data] says which."""

    data: DataConfig = field(default_factory=DataConfig)

    def seq_len(self) -> int:
        return self.data.seq_len or self.model.context_len

    def with_vocab(self, vocab_size: int) -> PretrainConfig:
        """model.vocab_size filled from the tokenizer, and the sequence length checked against the model."""
        model = self.model
        if model.vocab_size == 0:
            model = dataclasses.replace(model, vocab_size=vocab_size)
        elif model.vocab_size < vocab_size:
            raise LmforgeError(f"config key 'model.vocab_size' = {model.vocab_size} is smaller than the "
                               f"tokenizer's {vocab_size}: set it to 0 (the tokenizer's) or >= {vocab_size}")
        if self.seq_len() > model.context_len:
            raise LmforgeError(f"config key 'data.seq_len' = {self.seq_len()} exceeds model.context_len = "
                               f"{model.context_len}: lower data.seq_len or raise model.context_len")
        return dataclasses.replace(self, model=model)


# ----------------------------------------------------------------------------------------------------
# Reading


def read_raw_config(run_dir: str | Path) -> dict[str, Any]:
    """A run folder's config.toml as a dict (tasks.read_config types it)."""
    path = Path(run_dir) / CONFIG
    if str(run_dir).startswith("hf:"):
        raise LmforgeError(f"{run_dir}: resolve hf: references first (lmforge.interop.resolve_run)")
    if not path.is_file():
        raise LmforgeError(f"{run_dir} is not a run folder (no config.toml): "
                           "give the --out folder of `lmforge pretrain` or `lmforge finetune`")
    return read_toml(path)


def load_tokenizer(run_dir: str | Path):
    """The tokenizer of a run folder (RUN/tokenizer/)."""
    from lmforge.tokenizer import load_tokenizer as load

    folder = Path(run_dir) / TOKENIZER
    if not (folder / "tokenizer.json").is_file():
        raise LmforgeError(f"the run {run_dir} has no tokenizer/ folder: copy the tokenizer it was trained "
                           f"with into {folder} (e.g. the shards' tokenizer/)")
    return load(folder)


def checkpoint_tokenizer(run_dir: str | Path, ckpt: Path):
    """The tokenizer saved with a checkpoint (the run's when the checkpoint has none)."""
    from lmforge.tokenizer import load_tokenizer as load

    return load(ckpt / TOKENIZER) if (ckpt / TOKENIZER).is_dir() else load_tokenizer(run_dir)


def read_json(run_dir: str | Path, name: str) -> Any:
    import json

    path = Path(run_dir) / name
    if not path.is_file():
        raise LmforgeError(f"{run_dir} has no {name}: was it made by another command?")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LmforgeError(f"{path}: not valid JSON ({e}): restore it from a checkpoint's copy or rerun the "
                           "command that wrote it") from None


# ----------------------------------------------------------------------------------------------------
# Writing


def check_new(out: Path, overwrite: bool) -> None:
    """Refuse to start a run over an existing folder, unless it is a run folder and `overwrite`."""
    if out.exists() and not overwrite:
        raise LmforgeError(f"run folder {out} already exists: continue it with --resume, choose another "
                           "--out, or pass --overwrite to start over")
    if out.exists() and not (out / CONFIG).is_file() and any(out.iterdir()):
        raise LmforgeError(f"{out} is not a run folder (no config.toml): refusing to overwrite it")


def create(out: Path, cfg: Any, tok, overwrite: bool = False, files: dict[str, Any] | None = None,
           links: dict[str, str] | None = None) -> Path:
    """A new run folder holding config.toml, tokenizer/ and `files` (name -> JSON content), atomically.

    `links` (name -> folder) are symbolic links made inside it (a TensorBoard folder kept elsewhere).
    """
    out = Path(out)
    check_new(out, overwrite)
    with output_dir(out, overwrite=True) as tmp:
        _fill(tmp, cfg, tok, files)
        for name, target in (links or {}).items():
            target = Path(target).resolve()
            if target != (out / name).resolve():
                target.mkdir(parents=True, exist_ok=True)
                (tmp / name).symlink_to(target, target_is_directory=True)
    return out


def _fill(folder: Path, cfg: Any, tok, files: dict[str, Any] | None) -> None:
    save_config(cfg, folder / CONFIG)
    tok.save(folder / TOKENIZER)
    for name, content in (files or {}).items():
        write_json(folder / name, content)


def save_run(out: str | Path, model, tok, cfg: Any, step: int = 0, overwrite: bool = False,
             meta: dict | None = None, files: dict[str, Any] | None = None,
             tensors: tuple[dict, dict] | None = None) -> Path:
    """A run folder with `model` as its one checkpoint (weights only, no optimizer state), atomically:
    how imported and transformed models become runs that every command takes. `tensors` (tensors,
    metadata) replaces the model's own state (a quantized model's flattened tensors)."""
    from safetensors.torch import save_file, save_model

    from lmforge.checkpoint import checkpoint_dir, write_meta

    out = Path(out)
    with output_dir(out, overwrite=overwrite) as tmp:
        _fill(tmp, cfg, tok, files)
        ckpt = checkpoint_dir(tmp, step)
        ckpt.mkdir(parents=True)
        if tensors is None:
            save_model(model, str(ckpt / "model.safetensors"))
        else:
            save_file(tensors[0], str(ckpt / "model.safetensors"), metadata=tensors[1])
        shutil.copy2(tmp / CONFIG, ckpt / CONFIG)
        shutil.copytree(tmp / TOKENIZER, ckpt / TOKENIZER)
        write_meta(ckpt, {"step": step, "tokens": 0, "val_loss": None, **(meta or {})})
    return out

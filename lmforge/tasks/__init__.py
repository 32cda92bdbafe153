"""The task layer: every task by name, run configs typed by their task, and runs loaded back.

| task | trains | on | inference |
| --- | --- | --- | --- |
| causal_lm | a GPT to predict the next token | token shards | generate |
| masked_lm | a BERT to predict masked tokens | token shards | fill-mask |
| bptt | a recurrent LM, state carried across windows | token shards | generate |
| span_corruption | a T5 to write back sentinel-marked spans | token shards | generate |
| replaced_token_detection | an ELECTRA: a BERT spots a small generator's replacements | token shards | finetune |
| classify | a head on a pretrained run, one label per text | labeled files | classify |
| seq2seq | a pretrained T5, text to text (translation, summaries) | source/target pairs | generate |
| ner | a per-token head on a pretrained run, one tag per word | CoNLL / JSONL tagged files | ner |
| qa | a start/end head on a pretrained run, answer spans | SQuAD v1.1 JSON / JSONL | qa |

A run config names its task (`task = "..."`); without one, a config with [finetune] is a classifier's
and any other trains its model's pretraining task (`pretraining_task` of the model class).
"""

from __future__ import annotations

import dataclasses
import difflib
from pathlib import Path
from typing import Any

from lmforge import runs
from lmforge.config import apply_overrides, from_dict, merge, read_toml, resolve_preset
from lmforge.errors import LmforgeError
from lmforge.models import MODELS
from lmforge.tasks import (
    bptt,
    causal_lm,
    classify,
    masked_lm,
    ner,
    qa,
    replaced_token_detection,
    seq2seq,
    span_corruption,
)
from lmforge.tasks.task import LoadedRun, Source, Task, TaskData

TASKS: dict[str, Task] = {t.name: t for t in (causal_lm.TASK, masked_lm.TASK, bptt.TASK, span_corruption.TASK,
                                              replaced_token_detection.TASK, classify.TASK, seq2seq.TASK, ner.TASK,
                                              qa.TASK)}

__all__ = ["TASKS", "LoadedRun", "Source", "Task", "TaskData", "config_from", "get_task", "load_config",
           "load_run", "read_config"]


def get_task(name: str) -> Task:
    if name not in TASKS:
        hint = difflib.get_close_matches(name, list(TASKS), n=1)
        raise LmforgeError(f"task {name!r} is not one of {', '.join(TASKS)}"
                           + (f"; did you mean '{hint[0]}'?" if hint else ""))
    return TASKS[name]


def task_name(raw: dict[str, Any]) -> str:
    """The task a raw config trains: its `task` key, else what its sections imply."""
    if raw.get("task"):
        return str(raw["task"])
    if "finetune" in raw:
        return "classify"
    kind = (raw.get("model") or {}).get("kind", "gpt") if isinstance(raw.get("model"), dict) else "gpt"
    # an unknown kind is left to the config loader, whose error names the nearest one
    return MODELS[kind].pretraining_task if kind in MODELS else "causal_lm"


def config_from(raw: dict[str, Any], source: str = "config") -> Any:
    """A raw config dict typed by its task's config class (unknown keys are errors)."""
    task = get_task(task_name(raw))
    cfg = from_dict(task.config_class, {**raw, "task": task.name}, source=source)
    pretrains = MODELS[cfg.model.kind].pretraining_task
    if not task.finetunes and task.name != pretrains:
        raise LmforgeError(f"{source}: task {task.name!r} cannot train a {cfg.model.kind} model: its "
                           f"pretraining task is {pretrains!r}")
    return cfg


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (),
                base: dict[str, Any] | None = None) -> Any:
    """A TOML file or preset name (on top of `base`), then `--set` overrides, typed by its task."""
    raw, source = dict(base or {}), "config"
    if path is not None:
        raw, source = merge(raw, read_toml(resolve_preset(str(path)))), str(path)
    raw = apply_overrides(raw, overrides)
    return config_from(raw, f"{source} (with --set)" if overrides else source)


def read_config(run_dir: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Any:
    """A run folder's config.toml (then `--set` overrides), typed by its task."""
    raw = runs.read_raw_config(run_dir)
    if "task" not in raw:  # written before tasks were named: drop sections its task never had
        known = {f.name for f in dataclasses.fields(get_task(task_name(raw)).config_class)}
        raw = {k: v for k, v in raw.items() if k in known}
    return config_from(apply_overrides(raw, overrides), str(Path(run_dir) / runs.CONFIG))


def load_run(run_dir: str | Path, checkpoint: str = "best", device: str = "cpu", skip_damaged: bool = False
             ) -> LoadedRun:
    """A trained model with its tokenizer, config and task, from a run folder's checkpoint.

    `checkpoint`: best (lowest validation loss; the latest when none was evaluated), latest, step-N,
    or a path; `skip_damaged` passes over checkpoints that fail their checksums. Resolve `hf:`
    references first (`interop.resolve_run`).
    """
    from lmforge.checkpoint import find_checkpoint, load_weights, read_meta
    from lmforge.runtime import resolve_device

    run_dir = Path(run_dir)
    cfg = read_config(run_dir)
    task = get_task(cfg.task)
    files = {name: runs.read_json(run_dir, name) for name in task.files}
    ckpt = find_checkpoint(run_dir, checkpoint, skip_damaged)
    meta = read_meta(ckpt)
    quantization = meta.get("quantization")
    if quantization and resolve_device(device).type != "cpu":
        raise LmforgeError(f"{run_dir} is quantized for CPU inference ({quantization['scheme']}): use --device cpu")
    model = task.build_model(cfg, files).to(resolve_device(device))
    load_weights(ckpt, model, next(model.parameters()).device)
    model.eval()
    if quantization and quantization.get("compile"):  # torchao's int8 kernels pay only when compiled
        compile_forward(model)
    precision = "int8 weights" if quantization else inference_precision(model, cfg.runtime.precision)
    return LoadedRun(model, runs.checkpoint_tokenizer(run_dir, ckpt), cfg, run_dir, int(meta["step"]), ckpt, task,
                     files, tuple(meta.get("fresh", ())), quantization, precision)


def inference_precision(model, precision: str) -> str:
    """Run a loaded model's inference entry points (forward, encode, decode) in the precision the run's
    config settles on for its device, as training does: "auto" on a CPU with bf16 units times a forward
    of 8 x 128 tokens both ways. Outputs come back in fp32. Returns the precision and why."""
    import contextlib

    import torch

    from lmforge.runtime import Runtime, RuntimeConfig
    from lmforge.runtime_auto import settle_precision

    device = next(model.parameters()).device
    settled, reason = settle_precision(precision, device)
    runtime = Runtime(RuntimeConfig(device=str(device), precision=settled), device, precision_reason=reason)
    if settled == "auto":
        backbone = getattr(model, "backbone", model)
        length = min(128, backbone.config.max_positions or 128)
        ids = torch.randint(0, backbone.config.vocab_size, (8, length), device=device)

        def step(autocast: contextlib.AbstractContextManager) -> None:
            with torch.inference_mode(), autocast:
                backbone.hidden(ids)

        runtime.settle_precision(step, "forward")
    if runtime.amp_dtype is not None:
        for name in ("forward", "encode", "decode"):
            if hasattr(model, name):
                setattr(model, name, _in_fp32(runtime.autocast, getattr(model, name)))
    return runtime.precision_label


def _in_fp32(autocast, fn):
    """`fn` under autocast, its floating-point tensor outputs (alone or in a tuple) cast back to fp32."""
    import functools

    import torch

    def fp32(x):
        return x.float() if isinstance(x, torch.Tensor) and x.is_floating_point() else x

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        with autocast():
            out = fn(*args, **kwargs)
        return tuple(fp32(x) for x in out) if isinstance(out, tuple) else fp32(out)

    return wrapped


def compile_forward(model):
    """Compile `model.forward` in place (the module keeps its type and attributes); shapes may vary."""
    import torch

    model.forward = torch.compile(model.forward, dynamic=True)
    return model

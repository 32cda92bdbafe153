"""Pretrain, fine-tune and evaluate, written once over any task (tasks/).

`train_run(cfg, out)` trains whatever `cfg.task` names into run folder `out`: the task prepares its
data, objective and evaluation (`Task.prepare`) and builds its model; the one loop (train.py) trains
it; the run folder (runs.py) is created atomically before the first step. A run may start from
another run's weights (`source`: `pretrain --init-from`, a fine-tuning task's `finetune.from_run`),
whose model it keeps: only `MUTABLE_MODEL_KEYS` may change. `pretrain` and `finetune` are that one
path with their own way of naming the source; `evaluate_run` is `lmforge eval` for any task.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lmforge import runs
from lmforge.config import read_toml, resolve_preset, to_dict
from lmforge.errors import Interrupted, LmforgeError
from lmforge.models import finetuned_part
from lmforge.tasks import LoadedRun, Source, TaskData, get_task, load_config, load_run, read_config
from lmforge.tasks.finetuning import refuse_covered

MUTABLE_MODEL_KEYS = ("dropout", "attn_dropout")
"""Model keys a run started from another run's weights may change; the others define those weights."""


def _say(message: str) -> None:
    from tqdm.auto import tqdm

    tqdm.write(f"lmforge: {message}")


def _silent(message: str) -> None:
    """What the processes other than rank 0 say: nothing."""


def train_run(cfg: Any, out: str | Path, resume: bool = False, overwrite: bool = False,
              source: Source | None = None, skip_damaged: bool = False,
              adapt: Callable[[nn.Module, TaskData], TaskData] | None = None) -> dict[str, Any]:
    """Train `cfg.task` as `cfg` says into run folder `out`; `resume` continues its latest checkpoint
    (`skip_damaged`: the newest intact one).

    `adapt(model, data) -> data` (compress/: distillation, recovery after pruning) runs once the model is
    built, before the run folder is made: it may set the model's starting weights and return the task's
    data with another objective or more run files. A run made that way cannot be resumed. With `adapt`,
    `source` is the run the new one is made from (the task reads its tokenizer) but adapt owns the weights:
    the source's are not loaded, nor its model imposed (a distilled or pruned model is smaller).

    Under torchrun every process runs this: they split each step's batch and the evaluation data, and
    only rank 0 writes files and prints, holding the folder's lock for the whole run (a second writer of
    the same folder is refused). Returns the run's final metrics (eval_results.json), if any; a run
    stopped by Ctrl-C or SIGTERM saves, then raises `Interrupted`.
    """
    import contextlib
    import os

    from lmforge.atomic import locked
    from lmforge.checkpoint import clean_stale
    from lmforge.runtime import setup_runtime

    out, task = Path(out), get_task(cfg.task)
    rank0 = int(os.environ.get("RANK", "0")) == 0
    with locked(out) if rank0 else contextlib.nullcontext():
        if resume and not (out / runs.CONFIG).is_file():
            raise LmforgeError(f"cannot resume {out}: it has no config.toml (start it without --resume)")
        if resume and (out / runs.COMPRESSION).is_file():
            made = runs.read_json(out, runs.COMPRESSION)
            raise LmforgeError(f"cannot resume {out}: `lmforge compress {made.get('method', '?')}` made it from "
                               f"{made.get('from', '?')} and holds no training state to resume: run that "
                               "command again")
        if not resume:
            runs.check_new(out, overwrite)
        elif rank0:
            clean_stale(out)
        if source is not None and adapt is None:
            _check_source_model(cfg.model, source, task)
        runtime = setup_runtime(cfg.runtime)
        try:
            return _train(task, cfg, out, runtime, resume, overwrite, source, skip_damaged, adapt)
        finally:
            runtime.close()


def _train(task, cfg, out: Path, runtime, resume: bool, overwrite: bool, source: Source | None,
           skip_damaged: bool, adapt=None) -> dict:
    from lmforge.checkpoint import find_checkpoint, load_weights
    from lmforge.config import save_config
    from lmforge.train import resume_point, settle_precision, train

    say = _say if runtime.is_main else _silent
    data = task.prepare(cfg, runtime, out, resume, source, say)
    cfg = data.cfg
    if resume:
        resume_point(out, cfg.train, skip_damaged)  # refuse a damaged or lost history before writing anything
    torch.manual_seed(cfg.train.seed)
    model = task.build_model(cfg, data.files)
    if source is not None and not resume and adapt is None:
        load_weights(source.checkpoint, model.backbone if task.head else model, prefix=_source_model(source, task)[1])
    if adapt is not None:
        data = adapt(model, data)
    if runtime.is_main:
        if resume:
            save_config(cfg, out / runs.CONFIG)  # records --set changes (e.g. more steps)
        else:
            runs.create(out, cfg, data.tokenizer, overwrite, data.files, data.links)
    runtime.barrier()  # the other processes read the folder (its checkpoints) only once it is ready
    settle_precision(model, data.objective, data.batches, cfg.train, runtime)
    n_params = sum(p.numel() for p in model.parameters())  # a tied tensor counts once
    over = f" over {runtime.world_size} processes" if runtime.world_size > 1 else ""
    say(f"{task.name}: {cfg.model.kind} with {n_params / 1e6:.2f}M parameters on {runtime.device} "
        f"({runtime.precision_label}), {cfg.train.max_steps} steps of {data.step_holds}{over} -> {out}")
    result = train(model, data.objective, data.batches, optim_cfg=cfg.optim, schedule_cfg=cfg.schedule,
                   train_cfg=cfg.train, runtime=runtime, run_dir=out, evaluate_fn=data.evaluate, resume=resume,
                   skip_damaged=skip_damaged)
    metric = cfg.finetune.metric_for_best_model if data.final is not None else "loss"
    best = "" if result.best_val_loss is None else f", best val loss {result.best_val_loss:.4f}" if metric == "loss" \
        else f", best dev {metric} {-result.best_val_loss:.4f}"  # the loop minimises minus the metric
    verb = {"interrupted": "stopped by a signal (saved) at", "time": "stopped by train.max_minutes at",
            "early_stopping": "stopped early at"}.get(result.stopped, "finished")
    command = "pretrain" if data.final is None else "finetune"
    hint = f"; continue with `lmforge {command} --resume {out}`" if result.stopped == "interrupted" else ""
    say(f"{verb} step {result.step}{best}; checkpoint {result.checkpoint}{hint}")
    if result.stopped == "interrupted":
        raise Interrupted(result.signal or 2)
    if data.final is None:
        return {}
    ckpt = find_checkpoint(out, "best")
    if runtime.parallel == "fsdp":  # the trained model is sharded: evaluate a plain copy of the best
        model = task.build_model(cfg, data.files).to(runtime.device)
    load_weights(ckpt, model, runtime.device)
    results = {"checkpoint": ckpt.name, "stopped": result.stopped, **data.final(model)}
    if runtime.is_main:
        from lmforge.atomic import write_json

        write_json(out / runs.RESULTS, results)
    say(f"best checkpoint {ckpt.name}; metrics in {out / runs.RESULTS}")
    return results


def _source_config(run: Path, role: str) -> Any:
    cfg = read_config(run)
    if get_task(cfg.task).finetunes:
        hint = f" (e.g. its finetune.from_run {cfg.finetune.from_run})" if cfg.finetune.from_run else ""
        raise LmforgeError(f"{run} is already a fine-tuned {cfg.model.kind} {cfg.task} run: {role} takes a "
                           f"pretrained run{hint}")
    return cfg


def _source_model(source: Source, task) -> tuple[Any, str]:
    """The model config a run started from `source` takes, and where its tensors sit in the source's
    checkpoint: a fine-tuning task takes the pretrained model's `finetuned_part` (an ELECTRA's
    discriminator), `--init-from` the whole model."""
    theirs = read_config(source.run).model
    return finetuned_part(theirs) if task.finetunes else (theirs, "")


def _check_source_model(model, source: Source, task) -> None:
    theirs = _source_model(source, task)[0]
    if model.kind != theirs.kind:
        raise LmforgeError(f"config key 'model.kind' = {model.kind!r} conflicts with {source.run}, a "
                           f"{theirs.kind} run: a run started from its weights takes its model as it is")
    for f in dataclasses.fields(theirs):
        mine, want = getattr(model, f.name), getattr(theirs, f.name)
        if f.name not in MUTABLE_MODEL_KEYS and mine != want:
            raise LmforgeError(f"config key 'model.{f.name}' = {mine!r} conflicts with {source.run}'s "
                               f"{want!r}, which its weights need: drop it from --config/--set (only "
                               f"{', '.join('model.' + k for k in MUTABLE_MODEL_KEYS)} may change)")


def source_of(run: str | Path, checkpoint: str = "best") -> Source:
    from lmforge.checkpoint import find_checkpoint, read_meta

    ckpt = find_checkpoint(Path(run), checkpoint)
    quantization = read_meta(ckpt).get("quantization")
    if quantization:
        raise LmforgeError(f"{run} is quantized ({quantization['scheme']}, for inference only) and cannot be "
                           f"trained from: start from the run it was made from ({quantization.get('from', '?')})")
    return Source(Path(run), ckpt)


# ----------------------------------------------------------------------------------------------------
# Pretraining


def pretrain(cfg: Any, out: str | Path, resume: bool = False, overwrite: bool = False,
             init_from: str | Path | None = None, skip_damaged: bool = False) -> Path:
    """Pretrain as `cfg` says into `out`. `init_from` (a run folder) starts a fresh run (step 0, new
    optimizer) from that run's best weights and tokenizer; `cfg.model` must be its model (`init_config`)."""
    if resume and init_from is not None:
        raise LmforgeError("--init-from starts a new run: drop it when resuming (the weights are in RUN)")
    if get_task(cfg.task).finetunes:
        raise LmforgeError(f"{out} is a fine-tuned {cfg.task} run: continue it with `lmforge finetune --resume "
                           f"{out}`")
    source = None
    if init_from is not None:
        _source_config(Path(init_from), "--init-from")
        source = source_of(init_from)
    train_run(cfg, out, resume=resume, overwrite=overwrite, source=source, skip_damaged=skip_damaged)
    return Path(out)


def init_config(init_from: str | Path, path: str | Path | None = None,
                overrides: list[str] | tuple[str, ...] = ()) -> Any:
    """The config of a run started from `init_from`'s weights: its config without data.path, then the
    TOML `path` (a [model] section may only repeat it) and `--set` overrides on top."""
    source = _source_config(Path(init_from), "--init-from")
    raw = to_dict(source)
    raw["data"]["path"] = ""
    model_raw = read_toml(resolve_preset(str(path))).get("model", {}) if path is not None else {}
    kinds = [model_raw.get("kind")] + [o.partition("=")[2].strip().strip("\"'") for o in overrides
                                       if o.partition("=")[0].strip() == "model.kind"]
    for kind in kinds:  # before the sections merge: a kind change would read as unknown keys
        if kind is not None and kind != source.model.kind:
            raise LmforgeError(f"config key 'model.kind' = {kind!r} conflicts with {init_from}, a "
                               f"{source.model.kind} run: --init-from takes its model as it is")
    return load_config(path, overrides, base=raw)


# ----------------------------------------------------------------------------------------------------
# Fine-tuning


def finetune_config(task: str, source: str | Path | None = None, path: str | Path | None = None,
                    overrides: list[str] | tuple[str, ...] = (), flags: dict[str, Any] | None = None,
                    resume: str | Path | None = None) -> Any:
    """The config of a fine-tuning run, assembled in this order: the pretrained run's [model] and
    [runtime] (or, resuming, the run's own config), the TOML `path`, `--set` overrides, then [finetune]
    `flags`. Loop keys that [finetune] derives are refused when the user sets them."""
    from lmforge.config import apply_overrides, merge

    user: dict[str, Any] = read_toml(resolve_preset(str(path))) if path is not None else {}
    user = apply_overrides(user, overrides)
    refuse_covered(user, str(path or "--set"))
    if resume is not None:
        base = to_dict(read_config(resume))
    else:
        if not source:
            raise LmforgeError("finetune needs --from RUN (a pretrained run), --train FILE, --dev FILE and --out "
                               "RUN2")
        pretrained = read_config(source)  # finetune() refuses a fine-tuned one
        base = {"task": task, "model": to_dict(finetuned_part(pretrained.model)[0]),
                "runtime": to_dict(pretrained.runtime)}
    raw = merge(base, user)
    raw["task"] = raw.get("task") or task
    raw.setdefault("finetune", {}).update(flags or {})
    if resume is None and source:
        raw["finetune"]["from_run"] = str(source)
    from lmforge.tasks import config_from

    return config_from(raw, str(path or "finetune (with flags and --set)"))


def finetune(cfg: Any, out: str | Path | None = None, resume: bool = False, overwrite: bool = False,
             skip_damaged: bool = False) -> dict:
    """Fine-tune `cfg.finetune.from_run` as `cfg` says into run folder `out` (default finetune.output_dir);
    returns the final dev (and test) metrics of the best checkpoint."""
    out = out or cfg.finetune.output_dir
    if not str(out or "") or str(out) == ".":
        raise LmforgeError("finetune needs --out RUN2 (or --output_dir)")
    ft = cfg.finetune
    source = None
    if not resume:
        if not ft.from_run:
            raise LmforgeError("finetune needs --from RUN (finetune.from_run): the pretrained run to start from")
        _source_config(Path(ft.from_run), "finetune --from")
        source = source_of(ft.from_run, ft.from_checkpoint)
    return train_run(cfg, out, resume=resume, overwrite=overwrite, source=source, skip_damaged=skip_damaged)


# ----------------------------------------------------------------------------------------------------
# Evaluation


def evaluate_run(run_dir: str | Path, data: str | Path | None = None, split: str | None = None,
                 max_batches: int = 0, checkpoint: str = "best", device: str = "auto",
                 skip_damaged: bool = False) -> dict:
    """`lmforge eval`: a run's checkpoint on held-out data, as its task measures it."""
    from lmforge.runtime import setup_runtime

    run = load_run(run_dir, checkpoint, device, skip_damaged)
    device_name = str(next(run.model.parameters()).device)
    runtime = setup_runtime(dataclasses.replace(run.config.runtime, device=device_name, compile=False,
                                                parallel="none"))
    return run.task.evaluate(run, str(data) if data else None, split, max_batches, runtime)


def loaded(run: str | Path | LoadedRun, checkpoint: str = "best", device: str = "cpu") -> LoadedRun:
    """`run` itself when already loaded, else `load_run(run)`."""
    return run if isinstance(run, LoadedRun) else load_run(run, checkpoint, device)

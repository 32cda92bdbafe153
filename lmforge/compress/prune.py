"""Structured pruning: remove the least important attention heads and FFN neurons of every block of a GPT
or BERT run (pretrained, or fine-tuned with a head), then optionally recover by training.

Dimensions: L layers, nh heads, hs head size, F FFN width (d_ff), C d_model.

Each layer loses round(fraction x count) of its own heads (`heads`) and FFN neurons (`ffn`), the least
important by one of two scores:
- `taylor` (first order): removing unit u changes the loss by about -a_u . dL/da_u, where a_u is its
  activation: a head's hs-wide slice of the attention output (the input of the output projection), a
  neuron's value entering the down projection (after the nonlinearity or gate). Score = sum over
  `score_batches` training micro-batches of |sum over tokens and the unit's dims of a * dL/da|, on the
  run's own data and objective (its task's `prepare`).
- `magnitude`: the L2 norm of the unit's weights (its rows of q, k, v or fc1/gate, and its columns of the
  output projection); no data needed.
The kept units' rows and columns are copied into a model built with the smaller n_head (head_dim kept at
the old head size) and d_ff (models/pruning.py says where each unit lives); the rest is copied unchanged.
Every layer keeps the same number of units, so the config stays one n_head and one d_ff: per-layer
targets are out of scope. Grouped-query attention (n_kv_head < n_head) can only lose FFN neurons.

`sparsity` (unstructured) zeroes the smallest-magnitude fraction of each linear weight in the blocks:
the file and the matmuls stay as large, so it is the same size and speed unless a sparse kernel is used.

The result is a run folder with one checkpoint (or, with `recover_steps`, a run trained that many steps
from the pruned weights through the one loop, with the run's own objective) and `compression.json`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lmforge import runs
from lmforge.errors import LmforgeError
from lmforge.models.pruning import BlockUnits, Units, layout, pruned_config, shrink_state

METHODS = ("taylor", "magnitude")
SPARSE_NOTE = "sparsity zeroes weights in place: same size and speed unless a sparse kernel is used"


def prune(run: str | Path, out: str | Path, *, heads: float = 0.0, ffn: float = 0.0, method: str = "taylor",
          sparsity: float = 0.0, score_batches: int = 8, recover_steps: int = 0, overrides: Sequence[str] = (),
          overwrite: bool = False, say: Callable[[str], None] = print) -> Path:
    """Prune run `run` (its best checkpoint) into run folder `out`; returns `out`.

    `heads`, `ffn`: fractions of each layer's heads / FFN neurons removed, the same in every layer (at
    least one of each stays; per-layer targets are out of scope). `method`: "taylor" or "magnitude"
    importance. `sparsity`: fraction of each block weight zeroed (not with recovery, which would fill the
    zeros back in). `recover_steps`: train this many steps after pruning (train.max_steps, or
    finetune.max_steps for a fine-tuned run), with the run's own optimizer and schedule, warmup included
    (--set schedule.warmup_steps for a short recovery). `overrides`: `--set key=value` for the new run's
    config and the taylor scoring (e.g. a moved data.path); model keys other than dropout stay as pruning
    makes them.
    """
    from lmforge.checkpoint import find_checkpoint, read_meta
    from lmforge.tasks import get_task, load_run, read_config

    run, out = Path(run), Path(out)
    _check_args(heads, ffn, method, sparsity, score_batches, recover_steps)
    if out.resolve() == run.resolve():
        raise LmforgeError(f"--out {out} is the run being pruned: give another folder")
    runs.check_new(out, overwrite)
    cfg = read_config(run)
    task = get_task(cfg.task)
    ckpt = find_checkpoint(run, "best")
    quantized = read_meta(ckpt).get("quantization")
    if quantized:
        raise LmforgeError(f"{run} is quantized ({quantized.get('scheme', 'int8')}): prune the run it was made from "
                           f"({quantized.get('from', '?')}), then quantize the pruned run")
    blocks = layout(cfg.model, heads=heads > 0)
    n_head, width = blocks[0].heads.count, blocks[0].ffn.count
    drop_heads, drop_ffn = _removed(heads, n_head, "--heads", "heads"), _removed(ffn, width, "--ffn", "FFN neurons")
    new_cfg = _new_config(cfg, task, pruned_config(cfg.model, n_head - drop_heads, width - drop_ffn),
                          recover_steps, overrides)

    loaded = load_run(run, str(ckpt))
    backbone = loaded.model.backbone if task.head else loaded.model
    prefix = "backbone." if task.head else ""
    params_before = sum(p.numel() for p in loaded.model.parameters())
    head_scores = ffn_scores = None
    scored = method if drop_heads or drop_ffn else None  # sparsity alone ranks no units
    if scored:
        score_cfg = dataclasses.replace(new_cfg, model=cfg.model)  # the overrides (data paths), the old model
        scores = taylor_scores(loaded.model, backbone, blocks, task, score_cfg, run, score_batches, say) \
            if method == "taylor" else magnitude_scores(loaded.model.state_dict(), blocks, prefix)
        head_scores, ffn_scores = scores
    keep_heads = _keep(head_scores, n_head - drop_heads) if drop_heads else None
    keep_ffn = _keep(ffn_scores, width - drop_ffn) if drop_ffn else None

    torch.manual_seed(0)  # the new model's fresh init is overwritten; seeded for reproducible files anyway
    model = task.build_model(new_cfg, loaded.files)
    model.load_state_dict(shrink_state(loaded.model.cpu().state_dict(), blocks, keep_heads, keep_ffn, prefix))
    new_backbone = model.backbone if task.head else model
    zeroed = sparsify(new_backbone.blocks, sparsity) if sparsity else 0
    info = {"method": "prune", "from": str(run), "checkpoint": ckpt.name, "heads": heads, "ffn": ffn,
            "importance": scored, "score_batches": score_batches if scored == "taylor" else 0,
            "sparsity": sparsity, "recover_steps": recover_steps,
            "kept_heads": keep_heads or [list(range(n_head))] * cfg.model.n_layer,
            "kept_ffn": [width - drop_ffn] * cfg.model.n_layer, "params_before": params_before,
            "params_after": sum(p.numel() for p in model.parameters())}
    if sparsity:
        info.update(zeroed_weights=zeroed, note=SPARSE_NOTE)
    say(f"pruned {drop_heads}/{n_head} heads and {drop_ffn}/{width} FFN neurons per layer"
        + (f" ({scored} importance)" if scored else "")
        + (f", zeroed {zeroed:,} weights" if zeroed else "")
        + f": {params_before / 1e6:.3f}M -> {info['params_after'] / 1e6:.3f}M parameters")
    if recover_steps:
        _recover(model, new_cfg, task, loaded, info, out, overwrite)
    else:
        runs.save_run(out, model, loaded.tokenizer, new_cfg, step=0, overwrite=overwrite,
                      files={**loaded.files, runs.COMPRESSION: info})
    say(f"pruned run -> {out}")
    return out


def _check_args(heads: float, ffn: float, method: str, sparsity: float, score_batches: int,
                recover_steps: int) -> None:
    for flag, value in (("--heads", heads), ("--ffn", ffn), ("--sparsity", sparsity)):
        if not 0.0 <= value < 1.0:
            raise LmforgeError(f"{flag} {value}: give the fraction removed, 0 <= fraction < 1")
    if not (heads or ffn or sparsity):
        raise LmforgeError("nothing to prune: give --heads, --ffn (fractions removed per layer) or --sparsity")
    if method not in METHODS:
        raise LmforgeError(f"importance method {method!r} is not one of {', '.join(METHODS)}")
    if method == "taylor" and score_batches < 1:
        raise LmforgeError(f"--score-batches {score_batches}: taylor importance needs at least 1 batch")
    if recover_steps < 0:
        raise LmforgeError(f"--recover-steps {recover_steps}: give 0 (no recovery) or more steps")
    if sparsity and recover_steps:
        raise LmforgeError("--sparsity with --recover-steps: training would fill the zeroed weights back in; "
                           "recover first, then prune the recovered run with --sparsity")


def _removed(fraction: float, count: int, flag: str, what: str) -> int:
    """round(fraction x count), halves up; refuses removing none (when asked) or all."""
    n = math.floor(fraction * count + 0.5)
    if fraction and n == 0:
        raise LmforgeError(f"{flag} {fraction} removes none of the {count} {what} per layer (it rounds to 0): "
                           f"give at least {0.5 / count:.4g}")
    if n >= count:
        raise LmforgeError(f"{flag} {fraction} would remove all {count} {what} of every layer: at least one "
                           f"must stay (give less than {(count - 0.5) / count:.4g})")
    return n


def _keep(scores: list[torch.Tensor], n: int) -> list[list[int]]:
    """Per layer, the indices of its `n` highest scores, in order (ties keep the lower index)."""
    return [sorted(torch.argsort(s, descending=True, stable=True)[:n].tolist()) for s in scores]


def _new_config(cfg: Any, task, model_cfg: Any, recover_steps: int, overrides: Sequence[str]) -> Any:
    """The pruned run's config: the run's own with the pruned [model], the recovery steps and `overrides`."""
    from lmforge.config import apply_overrides, to_dict
    from lmforge.pipeline import MUTABLE_MODEL_KEYS
    from lmforge.tasks import config_from
    from lmforge.tasks.finetuning import refuse_covered

    if task.finetunes:  # the loop keys [finetune] derives: a --set of them would be silently replaced
        refuse_covered(apply_overrides({}, overrides), "prune --set")
    raw = to_dict(cfg)
    raw["model"] = to_dict(model_cfg)
    if recover_steps:
        raw["finetune" if task.finetunes else "train"]["max_steps"] = recover_steps
    new = config_from(apply_overrides(raw, overrides), "prune (with --set)" if overrides else "prune")
    for f in dataclasses.fields(model_cfg):
        if f.name not in MUTABLE_MODEL_KEYS and getattr(new.model, f.name) != getattr(model_cfg, f.name):
            raise LmforgeError(f"--set model.{f.name}: the pruned weights define it (only "
                               f"{', '.join('model.' + k for k in MUTABLE_MODEL_KEYS)} may change)")
    return new


# ----------------------------------------------------------------------------------------------------
# Importance


def taylor_scores(model: nn.Module, backbone: nn.Module, blocks: list[BlockUnits], task, cfg: Any, run: Path,
                  score_batches: int, say) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per layer, |sum a * dL/da| of each head and FFN neuron, summed over `score_batches` micro-batches."""
    from lmforge.runtime import setup_runtime

    runtime = setup_runtime(dataclasses.replace(cfg.runtime, compile=False, parallel="none"))
    acts: dict[tuple[int, str], torch.Tensor] = {}
    groups = {(i, kind): getattr(b, kind) for i, b in enumerate(blocks) for kind in ("heads", "ffn")}
    scores = {key: torch.zeros(units.count, dtype=torch.float64) for key, units in groups.items()}

    def capture(key):
        def hook(module, args):
            acts[key] = args[0]
        return hook

    hooks = [backbone.get_submodule(units.cols).register_forward_pre_hook(capture(key))
             for key, units in groups.items()]
    try:
        # resume=True reads the run's own tokenizer, labels and data without writing anything (a new run
        # would rebuild its label map and need a source); only evaluation callbacks write, never called here
        try:
            data = task.prepare(cfg, runtime, run, True, None, say)
        except LmforgeError as e:
            raise LmforgeError(f"{e} (taylor importance reads {run}'s training data: --set its path, or use "
                               "the magnitude importance)") from None
        model.to(runtime.device).eval()  # no dropout: the score of the model as it is
        for p in model.parameters():
            p.requires_grad_(True)  # activations of frozen parts need gradients too; this copy is discarded
        micro = data.cfg.train.micro_batch(1)
        for step in range(score_batches):
            acts.clear()
            batch = runtime.to_device(data.batches.get(step, 0, 0, 1, micro))
            with runtime.autocast():
                loss_sum, _, _ = data.objective(model, batch)
            keys = list(acts)
            grads = torch.autograd.grad(loss_sum, [acts[k] for k in keys])
            for key, g in zip(keys, grads):
                units = groups[key]
                contrib = (acts[key].float() * g.float()).reshape(-1, units.count, units.size)  # (tokens, n, size)
                scores[key] += contrib.sum(dim=(0, 2)).abs().double().cpu()
    finally:
        for h in hooks:
            h.remove()
        runtime.close()
    return ([scores[(i, "heads")] for i in range(len(blocks))], [scores[(i, "ffn")] for i in range(len(blocks))])


def magnitude_scores(state: dict[str, torch.Tensor], blocks: list[BlockUnits], prefix: str = ""
                     ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per layer, the L2 norm of each head's and FFN neuron's weights (its rows in, its columns out)."""
    def norms(units: Units) -> torch.Tensor:
        n, size = units.count, units.size
        total = torch.zeros(n, dtype=torch.float64)
        for name, offset in units.rows:
            w = state[f"{prefix}{name}.weight"][offset:offset + n * size].double()  # (n*size, C)
            total += w.reshape(n, -1).square().sum(1)
        w = state[f"{prefix}{units.cols}.weight"].double()  # (C, n*size)
        total += w.reshape(w.size(0), n, size).square().sum(dim=(0, 2))
        return total.sqrt()

    return [norms(b.heads) for b in blocks], [norms(b.ffn) for b in blocks]


def sparsify(blocks: nn.Module, fraction: float) -> int:
    """Zero the round(fraction x size) smallest-magnitude entries of each linear weight in `blocks`;
    returns how many were zeroed."""
    zeroed = 0
    with torch.no_grad():
        for module in blocks.modules():
            if isinstance(module, nn.Linear):
                w = module.weight.view(-1)
                k = math.floor(fraction * w.numel() + 0.5)
                w[torch.argsort(w.abs(), stable=True)[:k]] = 0.0
                zeroed += k
    return zeroed


# ----------------------------------------------------------------------------------------------------
# Recovery


def _recover(model: nn.Module, cfg: Any, task, loaded, info: dict, out: Path, overwrite: bool) -> None:
    """Train the pruned `model` for cfg's steps into `out`, through pipeline.train_run.

    The source is the run pruned (the task reads its tokenizer from it); with an `adapt` hook its
    weights are neither loaded nor checked against the smaller model: `adapt` loads the whole pruned
    model, head included, and records compression.json in place of init_from.json.
    """
    from lmforge.pipeline import train_run
    from lmforge.tasks import Source

    pruned = model.state_dict()

    def adapt(built: nn.Module, data):
        for name in task.files:  # the head's rows follow the source run's labels
            if data.files.get(name) != loaded.files[name]:
                raise LmforgeError(f"the training data's {name} differs from {loaded.run_dir}'s, which the pruned "
                                   "head was trained with: recover on the run's own training file")
        built.load_state_dict(pruned)
        files = {k: v for k, v in data.files.items() if k != runs.INIT_FROM}
        return dataclasses.replace(data, files={**files, runs.COMPRESSION: info})

    train_run(cfg, out, overwrite=overwrite, source=Source(loaded.run_dir, loaded.checkpoint), adapt=adapt)

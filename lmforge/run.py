"""Run folders: wire tokenizer, shards, model, objective and loaders into the loop, and load runs back.

A run folder holds config.toml (resolved: vocab_size filled in), tokenizer/, metrics.jsonl,
tensorboard/ and checkpoints/step-NNNNNN/. The model kind picks a *task*: its objective, its training
batches and its validation batches (`TASKS`; masked-LM and truncated-BPTT tasks plug in there).
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lmforge.config import RunConfig, load_config, save_config
from lmforge.errors import LmforgeError


@dataclass
class Task:
    """What the loop needs for one model kind."""

    objective: Callable
    train_batches: Any
    """Has `get(step, micro, rank, world, micro_batch) -> batch`."""
    eval_batches: Callable[[int], Iterable[dict[str, torch.Tensor]]] | None
    """max_batches (0: all) -> validation batches; None without a validation split."""
    bytes_per_token: float | None
    frozen: tuple[str, ...] = ()
    """Name prefixes of parameters the objective never runs: not trained, left out of DDP's reduction."""


def causal_lm_task(cfg: RunConfig, train_src: Any, val_src: Any | None, world: int = 1,
                   rank: int = 0) -> Task:
    from lmforge.data.loaders import CausalLMBatches, bytes_per_token, eval_batches
    from lmforge.objectives import causal_lm_loss

    seq_len, micro = cfg.seq_len(), cfg.train.micro_batch(world)
    batches = CausalLMBatches(train_src, seq_len, cfg.train.batch_size, cfg.train.seed)
    make_eval = None
    if val_src is not None:
        make_eval = lambda n: eval_batches(val_src, seq_len, micro, _eval_count(cfg, n, world), rank, world)
    return Task(causal_lm_loss, batches, make_eval, bytes_per_token(val_src) if val_src else None)


def _eval_count(cfg: RunConfig, max_batches: int, world: int) -> int:
    """Evaluation batches of the per-process micro-batch that cover what `max_batches` covers on one
    process, so validation sees the same sequences whatever the number of processes."""
    return max_batches * (cfg.train.micro_batch(1) // cfg.train.micro_batch(world))


def masked_lm_task(cfg: RunConfig, train_src: Any, val_src: Any | None, world: int = 1,
                   rank: int = 0) -> Task:
    """[CLS] ... [SEP] sequences with dynamic masking; validation masks are fixed (VAL_MASK_SEED)."""
    from lmforge.data.mlm import VAL_MASK_SEED, MaskedLMBatches, SpecialTokens
    from lmforge.objectives import masked_lm_loss
    from lmforge.tokenizer import load_tokenizer

    # the shards folder carries the tokenizer it was built with (its fingerprint was checked on open)
    tok = load_tokenizer(Path(train_src.folder) / "tokenizer")
    specials, seq_len, micro = SpecialTokens.from_tokenizer(tok), cfg.seq_len(), cfg.train.micro_batch(world)
    word_starts = tok.word_starts if cfg.mlm.whole_word else None
    batches = MaskedLMBatches(train_src, specials, seq_len, cfg.train.batch_size, cfg.train.seed, cfg.mlm,
                              word_starts)
    make_eval = None
    if val_src is not None:
        val = MaskedLMBatches(val_src, specials, seq_len, micro, VAL_MASK_SEED, cfg.mlm, word_starts,
                              shuffle=False)
        make_eval = lambda n: val.eval_batches(micro, _eval_count(cfg, n, world), rank, world)
    # bits per byte mean nothing for masked tokens; the [CLS] pooler belongs to fine-tuning
    return Task(masked_lm_loss, batches, make_eval, None, frozen=("pooler.",))


RNN_EVAL_STREAMS = 10
"""Evaluation streams of a recurrent LM: the batch size of the classic word-level evaluation."""


def truncated_bptt_task(cfg: RunConfig, train_src: Any, val_src: Any | None, world: int = 1,
                        rank: int = 0) -> Task:
    """train.batch_size contiguous streams read window after window, the state carried between them."""
    from lmforge.data.loaders import StreamBatches, bytes_per_token, stream_eval_batches
    from lmforge.objectives import TruncatedBPTTLoss

    seq_len, n_train = cfg.seq_len(), cfg.train.batch_size
    # training streams are 0..n_train-1, evaluation streams come after them in the same state buffer
    objective = TruncatedBPTTLoss(n_train + RNN_EVAL_STREAMS)
    batches = StreamBatches(train_src, seq_len, n_train)
    make_eval = None
    if val_src is not None:
        make_eval = lambda n: stream_eval_batches(val_src, seq_len, RNN_EVAL_STREAMS, n, rank, world,
                                                  first_stream=n_train)
    return Task(objective, batches, make_eval, bytes_per_token(val_src) if val_src else None)


TASKS: dict[str, Callable[..., Task]] = {"gpt": causal_lm_task, "bert": masked_lm_task,
                                         "rnn": truncated_bptt_task}
"""Model kind -> task builder. 'bert' (masked LM) and 'rnn' (truncated BPTT) register here."""


def _task_for(kind: str) -> Callable[..., Task]:
    if kind not in TASKS:
        raise LmforgeError(f"model.kind={kind!r} has no pretraining task yet (available: {', '.join(TASKS)})")
    return TASKS[kind]


def _open_splits(cfg: RunConfig, fingerprint: str):
    from lmforge.data.shards import TokenShards

    if not cfg.data.path:
        raise LmforgeError("config key 'data.path' is empty: pass --data SHARDS "
                           "(a `lmforge shards build` folder)")
    train_src = TokenShards.open(Path(cfg.data.path), cfg.data.train_split, expect_fingerprint=fingerprint)
    try:
        val_src = TokenShards.open(Path(cfg.data.path), cfg.data.val_split, expect_fingerprint=fingerprint)
    except LmforgeError as e:
        if "split" not in str(e):
            raise
        val_src = None
    return train_src, val_src


def resolve_config(cfg: RunConfig, vocab_size: int) -> RunConfig:
    """Fill model.vocab_size from the tokenizer and check the sequence length against the model."""
    model = cfg.model
    if model.vocab_size == 0:
        model = dataclasses.replace(model, vocab_size=vocab_size)
    elif model.vocab_size < vocab_size:
        raise LmforgeError(f"config key 'model.vocab_size' = {model.vocab_size} is smaller than the "
                           f"tokenizer's {vocab_size}: set it to 0 (the tokenizer's) or >= {vocab_size}")
    if cfg.seq_len() > model.context_len:
        raise LmforgeError(f"config key 'data.seq_len' = {cfg.seq_len()} exceeds model.context_len = "
                           f"{model.context_len}: lower data.seq_len or raise model.context_len")
    return dataclasses.replace(cfg, model=model)


def _prepare_folder(out: Path, overwrite: bool) -> None:
    if out.exists() and not overwrite:
        raise LmforgeError(f"run folder {out} already exists: continue it with --resume, choose another "
                           "--out, or pass --overwrite to start over")
    if out.exists():
        if not (out / "config.toml").is_file() and any(out.iterdir()):
            raise LmforgeError(f"{out} is not a run folder (no config.toml): refusing to overwrite it")
        shutil.rmtree(out)
    out.mkdir(parents=True)


def pretrain(cfg: RunConfig, out: Path, resume: bool = False, overwrite: bool = False,
             init_from: str | Path | None = None) -> Path:
    """Train a model as `cfg` says into run folder `out`; `resume` continues its latest checkpoint.

    `init_from` (a run folder or `hf:...`) starts a fresh run (step 0, new optimizer) from that run's
    best weights and tokenizer; `cfg.model` must be its model (see `init_config`).
    """
    from lmforge.models import build_model
    from lmforge.runtime import setup_runtime
    from lmforge.tokenizer import load_tokenizer
    from lmforge.train import train

    out = Path(out)
    if is_classifier_config(cfg):
        raise LmforgeError(f"{out} is a fine-tuned classifier: continue it with `lmforge finetune --resume "
                           f"{out}`")
    init_ckpt = None
    if resume:
        if not (out / "config.toml").is_file():
            raise LmforgeError(f"cannot resume {out}: it has no config.toml (start it without --resume)")
        if init_from is not None:
            raise LmforgeError("--init-from starts a new run: drop it when resuming (the weights are in RUN)")
        tok = load_tokenizer(out / "tokenizer")
    elif init_from is not None:
        cfg, tok, init_ckpt = _init_source(cfg, init_from)
    else:
        if not cfg.data.path:
            raise LmforgeError("config key 'data.path' is empty: pass --data SHARDS")
        tok = load_tokenizer(Path(cfg.data.path) / "tokenizer")
    cfg = resolve_config(cfg, tok.vocab_size)
    runtime = setup_runtime(cfg.runtime)
    train_src, val_src = _open_splits(cfg, tok.fingerprint)  # refuses another tokenizer's shards
    task = _task_for(cfg.model.kind)(cfg, train_src, val_src, runtime.world_size, runtime.rank)
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model)
    if init_ckpt is not None:
        from lmforge.checkpoint import load_weights

        load_weights(init_ckpt, model)
    for name, p in model.named_parameters():
        if name.startswith(task.frozen):
            p.requires_grad_(False)
    if runtime.is_main:
        if not resume:
            _prepare_folder(out, overwrite)
            tok.save(out / "tokenizer")
            if init_ckpt is not None:
                from lmforge.atomic import write_json

                write_json(out / INIT_FROM, {"run": str(init_from), "checkpoint": str(init_ckpt)})
        save_config(cfg, out / "config.toml")  # on resume, records --set changes (e.g. more steps)
    evaluate_fn = None
    if task.eval_batches is not None:
        from lmforge.evaluate import evaluate_lm

        evaluate_fn = lambda m: evaluate_lm(
            m, task.objective, runtime.even_batches(task.eval_batches(cfg.train.eval_batches)), runtime,
            task.bytes_per_token)
    n_params = sum(p.numel() for p in model.parameters())  # a tied tensor counts once
    if runtime.is_main:
        print(f"lmforge: {cfg.model.kind} with {n_params / 1e6:.2f}M parameters on {runtime.device} "
              f"({cfg.runtime.precision}), {cfg.train.max_steps} steps of {cfg.train.batch_size} x "
              f"{cfg.seq_len()} tokens -> {out}")
    try:
        result = train(model, task.objective, task.train_batches, optim_cfg=cfg.optim,
                       schedule_cfg=cfg.schedule, train_cfg=cfg.train, runtime=runtime, run_dir=out,
                       evaluate_fn=evaluate_fn, resume=resume)
    finally:
        runtime.close()
    if runtime.is_main:
        best = f", best val loss {result.best_val_loss:.4f}" if result.best_val_loss is not None else ""
        verb = {"interrupted": "stopped by Ctrl-C at", "time": "stopped by train.max_minutes at"}.get(
            result.stopped, "finished")
        hint = f"; continue with `lmforge pretrain --resume {out}`" if result.stopped == "interrupted" else ""
        print(f"lmforge: {verb} step {result.step}{best}; checkpoint {result.checkpoint}{hint}")
    return out


INIT_FROM = "init_from.json"
"""Written into a run started with `init_from`: the source run and checkpoint its weights came from."""

MUTABLE_MODEL_KEYS = ("dropout", "attn_dropout")
"""Model keys a run started from another run's weights may change; the others define those weights."""


def init_config(init_from: str | Path, path: str | Path | None = None,
                overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """The config of a run started from `init_from`'s weights: its config without data.path, then the
    TOML `path` (a [model] section may only repeat it) and `--set` overrides on top."""
    from lmforge.config import read_toml, resolve_preset, to_dict

    source = _init_source_config(init_from)
    raw = to_dict(source)
    raw["data"]["path"] = ""
    model_raw = read_toml(resolve_preset(str(path))).get("model", {}) if path is not None else {}
    kinds = [model_raw.get("kind")] + [o.partition("=")[2].strip().strip("\"'") for o in overrides
                                       if o.partition("=")[0].strip() == "model.kind"]
    for kind in kinds:
        if kind is not None and kind != source.model.kind:
            raise LmforgeError(f"config key 'model.kind' = {kind!r} conflicts with {init_from}, a "
                               f"{source.model.kind} run: --init-from takes its model as it is")
    return load_config(RunConfig, path, overrides, base=raw)


def _init_source_config(init_from: str | Path) -> RunConfig:
    cfg = read_run_config(init_from)
    if is_classifier_config(cfg):
        raise LmforgeError(f"{init_from} is a fine-tuned classifier: --init-from takes a pretrained run "
                           f"(e.g. its finetune.from_run {cfg.finetune.from_run})")
    return cfg


def _init_source(cfg: RunConfig, init_from: str | Path):
    """(cfg with the source's model, the source's tokenizer, its best checkpoint), after the checks."""
    from lmforge.checkpoint import find_checkpoint
    from lmforge.interop import resolve_run
    from lmforge.tokenizer import load_tokenizer

    run_dir = resolve_run(init_from)
    source = _init_source_config(run_dir).model
    model = cfg.model
    if model.kind != source.kind:
        raise LmforgeError(f"config key 'model.kind' = {model.kind!r} conflicts with {init_from}, a "
                           f"{source.kind} run: build the config with `init_config` (or drop [model])")
    if model.vocab_size == 0:
        model = dataclasses.replace(model, vocab_size=source.vocab_size)
    for f in dataclasses.fields(source):
        mine, theirs = getattr(model, f.name), getattr(source, f.name)
        if f.name not in MUTABLE_MODEL_KEYS and mine != theirs:
            raise LmforgeError(f"config key 'model.{f.name}' = {mine!r} conflicts with {init_from}'s "
                               f"{theirs!r}, which its weights need: drop it from --config/--set (only "
                               f"{', '.join('model.' + k for k in MUTABLE_MODEL_KEYS)} may change)")
    ckpt = find_checkpoint(run_dir, "best")
    tok = load_tokenizer(ckpt / "tokenizer" if (ckpt / "tokenizer").is_dir() else run_dir / "tokenizer")
    if not cfg.data.path:
        raise LmforgeError("config key 'data.path' is empty: pass --data SHARDS")
    shards_tok = Path(cfg.data.path) / "tokenizer"
    theirs = load_tokenizer(shards_tok).fingerprint if shards_tok.is_dir() else None
    if theirs is not None and theirs != tok.fingerprint:
        raise LmforgeError(f"shards in {cfg.data.path} were built with tokenizer {theirs}, {init_from} "
                           f"expects {tok.fingerprint}: rebuild them with `lmforge shards build --tokenizer "
                           f"{run_dir / 'tokenizer'}`")
    return dataclasses.replace(cfg, model=model), tok, ckpt


def read_run_config(run_dir: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """A run folder's (or `hf:...` import's) config.toml; a fine-tuned run's is a `FinetuneRunConfig`."""
    from lmforge.config import FinetuneRunConfig, read_toml

    if str(run_dir).startswith("hf:"):
        from lmforge.interop import resolve_run

        run_dir = resolve_run(run_dir)
    path = Path(run_dir) / "config.toml"
    if not path.is_file():
        raise LmforgeError(f"{run_dir} is not a run folder (no config.toml): "
                           "give the --out folder of `lmforge pretrain`")
    cls = FinetuneRunConfig if "finetune" in read_toml(path) else RunConfig
    return load_config(cls, path, overrides)


def is_classifier_config(cfg: RunConfig) -> bool:
    from lmforge.config import FinetuneRunConfig

    return isinstance(cfg, FinetuneRunConfig)


@dataclass
class LoadedRun:
    """A language model; `load_run` gives a fine-tuned run as its subclass `finetune.LoadedClassifier`."""

    model: nn.Module
    """In eval mode, on the requested device."""
    tokenizer: Any
    config: RunConfig
    run_dir: Path
    step: int
    checkpoint: Path


def load_run(run_dir: Path, checkpoint: str = "best", device: str = "cpu") -> LoadedRun:
    """A trained model with its tokenizer and config, from a run folder's checkpoint.

    `checkpoint`: best (lowest val loss; the latest when none was evaluated), latest, step-N, or a path.
    `run_dir` may also be `hf:DIR` (a transformers folder) or `hf:NAME` (a Hub model). A fine-tuned
    run gives a `LoadedClassifier` (model: a `SequenceClassifier`, plus `labels`).
    """
    from lmforge.checkpoint import find_checkpoint, load_weights, read_meta
    from lmforge.interop import resolve_run
    from lmforge.models import build_model
    from lmforge.runtime import resolve_device
    from lmforge.tokenizer import load_tokenizer

    run_dir = resolve_run(run_dir)  # `hf:DIR` or `hf:NAME`: imported once into a cache folder
    cfg = read_run_config(run_dir)
    if is_classifier_config(cfg):
        from lmforge.finetune import load_classifier

        return load_classifier(run_dir, checkpoint, device)
    ckpt = find_checkpoint(run_dir, checkpoint)
    tok_dir = ckpt / "tokenizer" if (ckpt / "tokenizer").is_dir() else run_dir / "tokenizer"
    tokenizer = load_tokenizer(tok_dir)
    model = build_model(cfg.model).to(resolve_device(device))
    load_weights(ckpt, model, next(model.parameters()).device)
    model.eval()
    return LoadedRun(model, tokenizer, cfg, run_dir, int(read_meta(ckpt)["step"]), ckpt)

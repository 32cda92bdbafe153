"""Atomic checkpoints: weights, optimizer, scaler, RNG states and data position.

Layout: RUN/checkpoints/step-000123/ holding
  model.safetensors   the unwrapped model's weights (a tied tensor stored once)
  trainer_state.pt    optimizer, grad scaler, RNG states, step, tokens seen, val loss (torch.save;
                      read back with weights_only=True)
  meta.json           step, tokens, val_loss: what `latest`/`best` resolution reads
  config.toml, tokenizer/   copies from the run folder, so a checkpoint stands alone
A checkpoint is written to a hidden temporary folder and renamed into place, so a crash leaves the
previous checkpoints intact. Since batches are a function of the step, the step *is* the data position.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_model, save_file, save_model
from torch import nn

from lmforge.errors import LmforgeError

_STEP_DIR = re.compile(r"^step-(\d+)$")


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step-{step:06d}"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first (temporary folders of a killed save are ignored)."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _STEP_DIR.match(p.name) and (p / "meta.json").is_file()]
    return sorted(found, key=lambda p: int(_STEP_DIR.match(p.name).group(1)))


def read_meta(ckpt: Path) -> dict[str, Any]:
    return json.loads((Path(ckpt) / "meta.json").read_text())


def best_checkpoint(checkpoints: list[Path]) -> Path | None:
    metas = [read_meta(c) for c in checkpoints]
    scored = [(m["val_loss"], i) for i, m in enumerate(metas) if m.get("val_loss") is not None]
    return checkpoints[min(scored)[1]] if scored else None


def find_checkpoint(run_dir: Path, which: str = "latest") -> Path:
    """`latest`, `best` (lowest val loss; latest when none was evaluated), `step-N`, N, or a path."""
    if Path(which).is_dir() and (Path(which) / "meta.json").is_file():
        return Path(which)
    checkpoints = list_checkpoints(run_dir)
    if not checkpoints:
        raise LmforgeError(f"{run_dir} has no checkpoints: train it first with `lmforge pretrain`")
    if which == "latest":
        return checkpoints[-1]
    if which == "best":
        return best_checkpoint(checkpoints) or checkpoints[-1]
    match = re.fullmatch(r"(?:step-)?(\d+)", which)
    if match:
        for c in checkpoints:
            if int(_STEP_DIR.match(c.name).group(1)) == int(match.group(1)):
                return c
    names = ", ".join(c.name for c in checkpoints)
    raise LmforgeError(f"checkpoint {which!r} not in {run_dir}/checkpoints: "
                       f"use latest, best or one of {names}")


def rng_states() -> dict[str, Any]:
    np_state = np.random.get_state(legacy=False)
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": {"key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                       "pos": int(np_state["state"]["pos"]),
                       "has_gauss": int(np_state["has_gauss"]), "gauss": float(np_state["gauss"])}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_states(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(state["torch"])
    npst = state["numpy"]
    np.random.set_state({"bit_generator": "MT19937", "has_gauss": npst["has_gauss"], "gauss": npst["gauss"],
                         "state": {"key": npst["key"].numpy().astype(np.uint32), "pos": npst["pos"]}})
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(run_dir: Path, step: int, model: nn.Module, optimizer: Any, scaler: Any,
                    state: dict[str, Any], keep_last: int = 2, model_state: dict | None = None,
                    optimizer_state: dict | None = None) -> Path:
    """Write checkpoint `step` atomically, then drop old ones beyond the last `keep_last` and the best.

    `model` must be unwrapped (no compile/DDP prefixes in its names). `state` holds plain values
    (step, tokens, val_loss, ...) saved in trainer_state.pt and meta.json. `model_state` and
    `optimizer_state`, when given, replace `model.state_dict()` / `optimizer.state_dict()`: the
    whole states gathered from FSDP shards (`Runtime.full_state`).
    """
    run_dir = Path(run_dir)
    final = checkpoint_dir(run_dir, step)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp"))
    try:
        if model_state is None:
            save_model(model, str(tmp / "model.safetensors"))
        else:
            _save_state(model, model_state, tmp / "model.safetensors")
        optimizer_state = optimizer.state_dict() if optimizer_state is None else optimizer_state
        trainer_state = {"optimizer": optimizer_state, "scaler": scaler.state_dict(),
                         "rng": rng_states(), **state}
        torch.save(trainer_state, tmp / "trainer_state.pt")
        for name in ("config.toml", "tokenizer"):
            src = run_dir / name
            if src.is_dir():
                shutil.copytree(src, tmp / name)
            elif src.is_file():
                shutil.copy2(src, tmp / name)
        meta = {k: v for k, v in state.items() if isinstance(v, (int, float, str, type(None)))}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        if final.exists():  # re-saving a step (e.g. Ctrl-C right after a periodic save)
            shutil.rmtree(final)
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    prune_checkpoints(run_dir, keep_last)
    return final


def _save_state(model: nn.Module, model_state: dict[str, torch.Tensor], path: Path) -> None:
    """Save a gathered state dict with a tied tensor once, under the name `named_parameters` gives it."""
    names = {n for n, _ in model.named_parameters()} | {n for n, _ in model.named_buffers()}
    kept = {k: v.contiguous() for k, v in model_state.items() if k in names}
    save_file(kept, str(path))


def prune_checkpoints(run_dir: Path, keep_last: int) -> None:
    checkpoints = list_checkpoints(run_dir)
    keep = set(checkpoints[-keep_last:]) if keep_last > 0 else set()
    keep.add(checkpoints[-1])
    best = best_checkpoint(checkpoints)
    if best is not None:
        keep.add(best)
    for c in checkpoints:
        if c not in keep:
            shutil.rmtree(c, ignore_errors=True)


def load_weights(ckpt: Path, model: nn.Module, device: str | torch.device = "cpu") -> None:
    path = Path(ckpt) / "model.safetensors"
    try:
        missing, unexpected = load_model(model, str(path), strict=False, device=str(device))
    except RuntimeError as e:  # shape mismatches
        missing, unexpected = [str(e).splitlines()[-1].strip()], []
    if missing or unexpected:
        raise LmforgeError(f"{path} does not fit the model of config.toml (missing {sorted(missing)[:3]}, "
                           f"unexpected {sorted(unexpected)[:3]}): was the config edited?")


def load_checkpoint(ckpt: Path, model: nn.Module, optimizer: Any = None, scaler: Any = None,
                    restore_rng: bool = True) -> dict[str, Any]:
    """Load weights (and optimizer, scaler, RNG) in place; return the trainer state (step, ...)."""
    ckpt = Path(ckpt)
    device = next(model.parameters()).device
    load_weights(ckpt, model, device)
    state = torch.load(ckpt / "trainer_state.pt", map_location="cpu", weights_only=True)
    if optimizer is not None:
        optimizer.load_state_dict(state["optimizer"])
    if scaler is not None:
        scaler.load_state_dict(state["scaler"])
    if restore_rng:
        set_rng_states(state["rng"])
    return state

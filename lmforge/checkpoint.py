"""Atomic checkpoints: weights, optimizer, scaler, RNG states and data position.

Layout: RUN/checkpoints/step-000123/ holding
  model.safetensors   the unwrapped model's weights (a tied tensor stored once)
  trainer_state.pt    optimizer, grad scaler, RNG states, step, tokens seen, val loss (torch.save;
                      read back with weights_only=True)
  meta.json           step, tokens, val_loss: what `latest`/`best` resolution reads; the sha256 of
                      model.safetensors and trainer_state.pt, verified before they are read
  config.toml, tokenizer/   copies from the run folder, so a checkpoint stands alone
A checkpoint is written to a hidden temporary folder and renamed into place, and an old one is renamed
out of the listing before it is deleted, so a crash leaves every listed checkpoint whole; the hidden
leftovers of a killed save or prune are removed by the next run (`clean_stale`). A damaged file is
refused by name, with the newest intact checkpoint to fall back to. Since batches are a function of the
step, the step *is* the data position.
"""

from __future__ import annotations

import hashlib
import json
import os
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


def find_checkpoint(run_dir: Path, which: str = "latest", skip_damaged: bool = False) -> Path:
    """`latest`, `best` (lowest val loss; latest when none was evaluated), `step-N`, N, or a path.

    `skip_damaged` leaves out checkpoints whose files fail their checksums (saying so), so `latest` is
    then the newest intact one; by default a damaged choice is refused when it is read.
    """
    if Path(which).is_dir() and (Path(which) / "meta.json").is_file():
        return Path(which)
    checkpoints = list_checkpoints(run_dir)
    if skip_damaged:
        why = {c: damage(c) for c in checkpoints}
        for c, reason in why.items():
            if reason is not None:
                print(f"lmforge: skipping damaged checkpoint {c} ({reason})", flush=True)
        checkpoints = [c for c in checkpoints if why[c] is None]
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
    from lmforge.atomic import writing

    run_dir = Path(run_dir)
    final = checkpoint_dir(run_dir, step)
    with writing(final):
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp"))
    try:
        with writing(final):  # a full disk: one line, the earlier checkpoints untouched
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
            write_meta(tmp, {k: v for k, v in state.items() if isinstance(v, (int, float, str, type(None)))})
            if final.exists():  # re-saving a step (e.g. Ctrl-C right after a periodic save)
                _delete(final)
            tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    prune_checkpoints(run_dir, keep_last)
    return final


CHECKSUMMED = ("model.safetensors", "trainer_state.pt")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_meta(ckpt: Path, meta: dict[str, Any]) -> None:
    """meta.json of a checkpoint folder being written, with the checksums of its files."""
    sums = {name: _sha256(ckpt / name) for name in CHECKSUMMED if (ckpt / name).is_file()}
    (ckpt / "meta.json").write_text(json.dumps({**meta, "sha256": sums}, indent=2))


def damage(ckpt: Path, files: tuple[str, ...] = CHECKSUMMED) -> str | None:
    """Why checkpoint `ckpt` cannot be read ("model.safetensors is missing", "... does not match its
    checksum"), or None when it is intact. Checkpoints saved without checksums are taken as they are."""
    sums = read_meta(ckpt).get("sha256") or {}
    for name in files:
        if name in sums and not (ckpt / name).is_file():
            return f"{name} is missing"
        if name in sums and _sha256(ckpt / name) != sums[name]:
            return f"{name} does not match the checksum saved with it (damaged)"
    if "model.safetensors" in files and not (ckpt / "model.safetensors").is_file():
        return "model.safetensors is missing"
    return None


def check_intact(ckpt: Path, files: tuple[str, ...] = CHECKSUMMED) -> None:
    why = damage(ckpt, files)
    if why is None:
        return
    others = [c for c in reversed(list_checkpoints(ckpt.parent.parent)) if c != ckpt and damage(c, files) is None]
    fallback = (f"the newest intact one is {others[0].name}: pass --checkpoint {others[0].name} (or "
                f"--skip-damaged)") if others else "no other checkpoint is intact"
    raise LmforgeError(f"checkpoint {ckpt}: {why}; {fallback}")


def _delete(ckpt: Path) -> None:
    """Remove a checkpoint folder: out of the listing first (a rename), then its files."""
    doomed = ckpt.with_name(f".{ckpt.name}.deleting")
    os.replace(ckpt, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def clean_stale(run_dir: Path) -> None:
    """The hidden leftovers of saves and prunes a kill interrupted (call while holding the run's lock)."""
    root = Path(run_dir) / "checkpoints"
    if root.is_dir():
        for stale in root.glob(".step-*"):
            shutil.rmtree(stale, ignore_errors=True)


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
            _delete(c)


def load_weights(ckpt: Path, model: nn.Module, device: str | torch.device = "cpu", prefix: str = "") -> None:
    """Load a checkpoint's weights into `model`, all of them; with `prefix` (one name, "discriminator."),
    the part of a larger model's checkpoint stored under it, the rest of the file left aside."""
    path = Path(ckpt) / "model.safetensors"
    check_intact(Path(ckpt), ("model.safetensors",))
    quantization = read_meta(Path(ckpt)).get("quantization")
    if quantization:
        return _load_quantized(path, model, quantization)
    target = model
    if prefix:  # the names in the file then match a holder of `model`, tied tensors resolved as usual
        target = nn.Module()
        target.add_module(prefix.rstrip("."), model)
    try:
        missing, unexpected = load_model(target, str(path), strict=False, device=str(device))
        unexpected = [name for name in unexpected if name.startswith(prefix)]
    except RuntimeError as e:  # shape mismatches
        missing, unexpected = [str(e).splitlines()[-1].strip()], []
    except Exception as e:  # noqa: BLE001 - a damaged file saved before checksums existed
        raise LmforgeError(f"{path}: unreadable weights ({type(e).__name__}): use another checkpoint") from None
    if missing or unexpected:
        raise LmforgeError(f"{path} does not fit the model of config.toml (missing {sorted(missing)[:3]}, "
                           f"unexpected {sorted(unexpected)[:3]}): was the config edited?")


def _load_quantized(path: Path, model: nn.Module, how: dict) -> None:
    """Weights saved by `lmforge compress quantize`: torchao tensors flattened into safetensors, put in
    place of the model's fp32 parameters (they only run inference, on the CPU)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from lmforge.extras import import_torchao, require

    require("torchao", f"{path} (quantized {how.get('scheme', '')})")
    import_torchao()
    from torchao.prototype.safetensors.safetensors_support import unflatten_tensor_state_dict

    with safe_open(str(path), "pt") as f:
        metadata = f.metadata()
    state, leftover = unflatten_tensor_state_dict(load_file(str(path)), metadata)
    plain = {k: v for k, v in state.items() if type(v) is torch.Tensor}
    model.load_state_dict(plain, strict=False)  # copied in place: a tied table stays tied
    _, unexpected = model.load_state_dict({k: v for k, v in state.items() if k not in plain}, strict=False,
                                          assign=True)
    missing = set(model.state_dict()) - set(state) - _tied_aliases(model)
    if missing or unexpected or leftover:
        raise LmforgeError(f"{path} does not fit the model of config.toml (missing {sorted(missing)[:3]}, "
                           f"unexpected {sorted(unexpected or leftover)[:3]}): was the config edited?")


def _tied_aliases(model: nn.Module) -> set[str]:
    """Names of parameters that are another, earlier-named parameter (a tied output layer): saved once."""
    first = {id(p): n for n, p in model.named_parameters()}
    return {n for n, p in model.named_parameters(remove_duplicate=False) if first[id(p)] != n}


def load_checkpoint(ckpt: Path, model: nn.Module, optimizer: Any = None, scaler: Any = None,
                    restore_rng: bool = True) -> dict[str, Any]:
    """Load weights (and optimizer, scaler, RNG) in place; return the trainer state (step, ...)."""
    ckpt = Path(ckpt)
    check_intact(ckpt, ("trainer_state.pt",))  # the weights are checked as they load
    device = next(model.parameters()).device
    load_weights(ckpt, model, device)
    try:
        state = torch.load(ckpt / "trainer_state.pt", map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - unreadable, or holds more than plain state
        raise LmforgeError(f"{ckpt / 'trainer_state.pt'}: unreadable trainer state ({type(e).__name__}): resume "
                           "from another checkpoint (--skip-damaged), or start again") from None
    if optimizer is not None:
        optimizer.load_state_dict(state["optimizer"])
    if scaler is not None:
        scaler.load_state_dict(state["scaler"])
    if restore_rng:
        set_rng_states(state["rng"])
    return state

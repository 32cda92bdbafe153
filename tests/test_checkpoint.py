"""Checkpoints: tied weights, full state round trip, latest/best resolution, pruning, atomicity."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from lmforge.checkpoint import (
    checkpoint_dir,
    find_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from lmforge.errors import LmforgeError
from lmforge.models import GPTConfig, build_model
from lmforge.optim import OptimConfig, build_optimizer


def _setup(seed=0):
    torch.manual_seed(seed)
    model = build_model(GPTConfig(vocab_size=30, context_len=8, n_layer=1, n_head=2, d_model=16))
    opt = build_optimizer(model, OptimConfig(lr=1e-2))
    x = torch.randint(0, 30, (2, 8))
    model(x).sum().backward()
    opt.step()
    return model, opt, torch.amp.GradScaler("cpu", enabled=False)


def _save(run, step, model, opt, scaler, val_loss=None, keep_last=10):
    return save_checkpoint(run, step, model, opt, scaler, {"step": step, "tokens": step * 10,
                                                          "val_loss": val_loss}, keep_last=keep_last)


def test_round_trip_restores_weights_optimizer_and_rng(tmp_path):
    model, opt, scaler = _setup()
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    ckpt = _save(tmp_path, 7, model, opt, scaler)
    expected = (random.random(), np.random.rand(), torch.rand(1))
    other, other_opt, _ = _setup(seed=1)
    assert not torch.equal(other.wte.weight, model.wte.weight)
    state = load_checkpoint(ckpt, other, other_opt, scaler)
    assert state["step"] == 7 and state["tokens"] == 70
    for a, b in zip(model.state_dict().values(), other.state_dict().values()):
        assert torch.equal(a, b)
    assert other.lm_head.weight is other.wte.weight  # still tied after loading
    sa, sb = opt.state_dict()["state"], other_opt.state_dict()["state"]
    assert all(torch.equal(sa[k]["exp_avg"], sb[k]["exp_avg"]) for k in sa)
    assert (random.random(), np.random.rand(), torch.rand(1)) == expected


def test_latest_best_and_pruning(tmp_path):
    model, opt, scaler = _setup()
    for step, val in [(10, 2.0), (20, 1.5), (30, 1.7), (40, 1.9)]:
        _save(tmp_path, step, model, opt, scaler, val_loss=val, keep_last=2)
    assert [c.name for c in list_checkpoints(tmp_path)] == ["step-000020", "step-000030", "step-000040"]
    assert find_checkpoint(tmp_path, "latest").name == "step-000040"
    assert find_checkpoint(tmp_path, "best").name == "step-000020"
    assert find_checkpoint(tmp_path, "30").name == "step-000030"
    assert find_checkpoint(tmp_path, "step-000030").name == "step-000030"
    with pytest.raises(LmforgeError, match="use latest, best or one of step-000020"):
        find_checkpoint(tmp_path, "step-5")


def test_half_written_checkpoint_is_ignored(tmp_path):
    model, opt, scaler = _setup()
    _save(tmp_path, 5, model, opt, scaler)
    (tmp_path / "checkpoints" / ".step-000010.abc.tmp").mkdir()  # a save killed mid-write
    checkpoint_dir(tmp_path, 15).mkdir()  # no meta.json: incomplete
    assert find_checkpoint(tmp_path, "latest").name == "step-000005"


def test_no_checkpoint_and_mismatched_model(tmp_path):
    with pytest.raises(LmforgeError, match="has no checkpoints"):
        find_checkpoint(tmp_path)
    model, opt, scaler = _setup()
    ckpt = _save(tmp_path, 1, model, opt, scaler)
    torch.manual_seed(0)
    bigger = build_model(GPTConfig(vocab_size=30, context_len=8, n_layer=2, n_head=2, d_model=16))
    with pytest.raises(LmforgeError, match="does not fit the model"):
        load_checkpoint(ckpt, bigger)

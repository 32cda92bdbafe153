"""Schedules, parameter groups, every optimizer, LAMB against the paper's update rule, Muon's split."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lmforge.models import GPTConfig, build_model
from lmforge.optim import Lamb, MultiOptimizer, OptimConfig, ScheduleConfig, build_optimizer, lr_at, param_groups


def _tiny_gpt(tie: bool = True) -> nn.Module:
    torch.manual_seed(0)
    return build_model(GPTConfig(vocab_size=50, context_len=16, n_layer=2, n_head=2, d_model=16,
                                 tie_embeddings=tie))


@pytest.mark.parametrize("name", ["cosine", "linear", "constant", "wsd"])
def test_warmup_then_decay(name):
    cfg = ScheduleConfig(name=name, warmup_steps=10, min_lr_ratio=0.1, decay_fraction=0.2)
    lrs = [lr_at(s, 100, cfg) for s in range(101)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(lrs[:9], lrs[1:10]))  # warmup rises
    assert all(a >= b - 1e-12 for a, b in zip(lrs[10:], lrs[11:]))  # then never rises
    if name == "constant":
        assert lrs[-1] == 1.0
    else:
        assert lrs[100] == pytest.approx(0.1) and min(lrs[10:]) >= 0.1 - 1e-12


def test_schedule_shapes():
    cos = ScheduleConfig(name="cosine", warmup_steps=0, min_lr_ratio=0.0)
    assert lr_at(50, 100, cos) == pytest.approx(0.5)
    assert lr_at(25, 100, cos) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    lin = ScheduleConfig(name="linear", warmup_steps=0, min_lr_ratio=0.0)
    assert lr_at(25, 100, lin) == pytest.approx(0.75)
    wsd = ScheduleConfig(name="wsd", warmup_steps=0, min_lr_ratio=0.0, decay_fraction=0.2)
    assert lr_at(79, 100, wsd) == 1.0 and lr_at(90, 100, wsd) == pytest.approx(0.5)


def test_decay_groups():
    model = _tiny_gpt()
    groups = param_groups(model, OptimConfig(weight_decay=0.1))
    decay, no_decay = ({id(p) for p in g["params"]} for g in groups)
    assert groups[0]["weight_decay"] == 0.1 and groups[1]["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(p.ndim >= 2 for n, p in model.named_parameters() if id(p) in decay)
    assert id(model.wte.weight) in no_decay and id(model.wpe.weight) in no_decay
    assert all("bias" in names[i] or "ln" in names[i] or "wte" in names[i] or "wpe" in names[i]
               for i in no_decay)
    every = [id(p) for g in groups for p in g["params"]]
    assert len(every) == len(set(every)) == len(list(model.parameters()))  # tied head counted once


@pytest.mark.parametrize("name", ["adamw", "adam", "sgd", "lamb", "muon", "adagrad", "rmsprop"])
def test_every_optimizer_learns(name):
    model = _tiny_gpt(tie=False)
    lr = {"sgd": 0.3, "adagrad": 0.05, "rmsprop": 3e-3, "lamb": 0.1}.get(name, 1e-2)
    opt = build_optimizer(model, OptimConfig(name=name, lr=lr, weight_decay=0.01))
    x = torch.randint(0, 50, (4, 16), generator=torch.Generator().manual_seed(1))
    losses = []
    for _ in range(15):
        loss = nn.functional.cross_entropy(model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.3, losses
    state = opt.state_dict()
    fresh = build_optimizer(model, OptimConfig(name=name, lr=lr, weight_decay=0.01))
    fresh.load_state_dict(state)  # checkpoints round-trip every optimizer's state


def test_muon_only_takes_hidden_matrices():
    model = _tiny_gpt(tie=False)
    opt = build_optimizer(model, OptimConfig(name="muon"))
    assert isinstance(opt, MultiOptimizer)
    muon_ids = {id(p) for g in opt.optimizers[0].param_groups for p in g["params"]}
    names = {n for n, p in model.named_parameters() if id(p) in muon_ids}
    assert names and all(".attn." in n or ".mlp." in n for n in names)
    assert all(n.endswith("weight") for n in names)
    assert "lm_head.weight" not in names and "wte.weight" not in names
    rest = {id(p) for g in opt.optimizers[1].param_groups for p in g["params"]}
    assert rest.isdisjoint(muon_ids) and len(rest | muon_ids) == len(list(model.parameters()))


def _lamb_reference(w, grads, lr, b1, b2, eps, wd):
    """You et al. 2019, Algorithm 2, one tensor (one layer), written out step by step."""
    w, m, v = w.clone().double(), torch.zeros_like(w).double(), torch.zeros_like(w).double()
    for t, g in enumerate(grads, start=1):
        g = g.double()
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        r = (m / (1 - b1 ** t)) / ((v / (1 - b2 ** t)).sqrt() + eps)
        u = r + wd * w
        wn, un = w.norm(), u.norm()
        ratio = wn / un if wn > 0 and un > 0 else 1.0
        w = w - lr * ratio * u
    return w


def test_lamb_matches_the_paper():
    torch.manual_seed(0)
    w0 = torch.randn(7, 5)
    grads = [torch.randn(7, 5) for _ in range(4)]
    p = nn.Parameter(w0.clone())
    opt = Lamb([p], lr=0.05, betas=(0.9, 0.99), eps=1e-6, weight_decay=0.1)
    for g in grads:
        p.grad = g.clone()
        opt.step()
    expected = _lamb_reference(w0, grads, 0.05, 0.9, 0.99, 1e-6, 0.1)
    torch.testing.assert_close(p.detach().double(), expected, rtol=1e-5, atol=1e-6)


def test_lamb_trust_ratio_is_one_for_zero_weights():
    p = nn.Parameter(torch.zeros(3))
    opt = Lamb([p], lr=0.1, betas=(0.9, 0.999), eps=0.0, weight_decay=0.0)
    p.grad = torch.tensor([1.0, -2.0, 0.5])
    opt.step()
    # the first Adam direction is sign(g); a zero-norm weight keeps the plain Adam step
    torch.testing.assert_close(p.detach(), torch.tensor([-0.1, 0.1, -0.1]))

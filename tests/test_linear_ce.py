"""The output layer and cross-entropy in one chunked pass equals F.linear + F.cross_entropy, gradients too."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lmforge.models import RNNConfig, build_model, linear_ce
from lmforge.models.linear_ce import IGNORE, linear_cross_entropy


@pytest.fixture
def small_chunks(monkeypatch):
    # several chunks and vocabulary tiles, the last of each shorter than the others
    monkeypatch.setattr(linear_ce, "CHUNK_FLOATS", 7000)  # 6 tokens of 1037 words, 33 of 211
    monkeypatch.setattr(linear_ce, "CPU_VOCAB_TILE", 100)


@pytest.mark.parametrize("bias", [True, False])
def test_loss_and_gradients_equal_the_plain_computation(small_chunks, bias):
    torch.manual_seed(0)
    h = torch.randn(50, 8, requires_grad=True)  # (N, H)
    w = torch.randn(1037, 8, requires_grad=True)  # (V, H)
    b = torch.randn(1037, requires_grad=True) if bias else None
    labels = torch.randint(0, 1037, (50,))
    labels[::7] = IGNORE
    params = [t for t in (h, w, b) if t is not None]
    want = F.cross_entropy(F.linear(h, w, b), labels, reduction="sum")
    want_grads = torch.autograd.grad(want * 0.3, params)
    got = linear_cross_entropy(h, w, b, labels)
    got_grads = torch.autograd.grad(got * 0.3, params)
    torch.testing.assert_close(got, want)
    for g, expected in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(g, expected)
    with torch.no_grad():  # evaluation: no gradients computed, the same loss
        torch.testing.assert_close(linear_cross_entropy(h, w, b, labels), want)


def test_under_bf16_autocast_it_runs_in_float32():
    torch.manual_seed(0)
    h = torch.randn(20, 8, requires_grad=True)
    w = torch.randn(300, 8, requires_grad=True)
    labels = torch.randint(0, 300, (20,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = linear_cross_entropy(h.bfloat16(), w, None, labels)
    got.backward()
    assert got.dtype == h.grad.dtype == w.grad.dtype == torch.float32
    torch.testing.assert_close(got, F.cross_entropy(h.bfloat16().float() @ w.T, labels, reduction="sum"))


def test_rnn_with_labels_returns_the_summed_loss_of_its_logits(small_chunks):
    torch.manual_seed(0)
    model = build_model(RNNConfig(vocab_size=211, n_layer=2, d_embed=16, d_hidden=16, dropout=0.0))
    ids, labels = torch.randint(0, 211, (3, 12)), torch.randint(0, 211, (3, 12))
    logits, state = model(ids)
    want = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="sum")
    want_grads = torch.autograd.grad(want, list(model.parameters()))
    got, got_state = model(ids, labels=labels)
    got_grads = torch.autograd.grad(got, list(model.parameters()))
    torch.testing.assert_close(got, want)
    for g, expected in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(g, expected)
    torch.testing.assert_close(got_state, state)


@pytest.mark.parametrize("tie", [True, False])
def test_gpt_with_labels_returns_the_summed_loss_of_its_logits(small_chunks, monkeypatch, tie):
    from lmforge.models import GPTConfig
    from lmforge.models import gpt as gpt_module

    torch.manual_seed(0)
    model = build_model(GPTConfig(vocab_size=211, context_len=16, n_layer=1, n_head=2, d_model=16, dropout=0.0,
                                  tie_embeddings=tie))
    ids, labels = torch.randint(0, 211, (3, 12)), torch.randint(0, 211, (3, 12))
    labels[:, :2] = IGNORE  # e.g. a prompt that is not a target
    want = F.cross_entropy(model(ids).flatten(0, 1), labels.flatten(), reduction="sum")
    want_grads = torch.autograd.grad(want, list(model.parameters()))
    fused = []
    monkeypatch.setattr(gpt_module, "linear_cross_entropy", lambda *a: fused.append(1) or linear_cross_entropy(*a))
    got = model(ids, labels=labels)
    got_grads = torch.autograd.grad(got, list(model.parameters()))
    assert fused, "on a CPU in float32 the loss goes through the fused output layer"
    torch.testing.assert_close(got, want)
    for g, expected in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(g, expected)
    fused.clear()
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the head's matmul in bf16: through the logits
        got_bf16 = model(ids, labels=labels)
    assert not fused and torch.isclose(got_bf16, want, rtol=0.05)

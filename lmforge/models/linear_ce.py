"""An output layer and its cross-entropy in one pass: the summed loss of hidden states without the logits.

Dimensions: N tokens, H hidden width, V vocabulary, n tokens of one chunk.

With a word vocabulary (V = 33k) the output layer is most of a small recurrent LM's step, and on a
CPU much of that is memory, not arithmetic: the logits, their log-softmax and the two gradients
behind them are each N x V floats (93 MB at 20 x 35 tokens), written once and read back, in fresh
pages every step. Here each chunk of n tokens goes through one reused (n, V) buffer: logits,
log-softmax, and at once (the loss is a sum, so its gradient is known up to the incoming scale) the
softmax minus the one-hot targets, which the gradient matmuls read while it is still in cache.
Backward only scales the gradients kept from forward. Results equal `F.cross_entropy(h @ W.T + b, y,
reduction="sum")` and its gradients up to float rounding.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

IGNORE = -100  # = lmforge.objectives.IGNORE (models sit below objectives in the import order)
CHUNK_FLOATS = 1 << 23
"""Logits per chunk (32 MiB of floats, about a CPU's last-level cache): 256 tokens of a 33k-word vocabulary,
2048 of a 4k one (gpt-tiny, 2 threads, one process: 177 ms a step against 191 with 256-token chunks)."""
CPU_VOCAB_TILE = 512
"""On CPUs the logits matmul runs as column tiles of the weight: with a short inner dimension (H) a
whole-vocabulary matmul ran at 60% of the speed of 512-word tiles (MKL, one thread)."""


def linear_cross_entropy(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                         labels: torch.Tensor) -> torch.Tensor:
    """Sum over labels != IGNORE of -log_softmax(h @ weight.T + bias)[label]; h (N, H), labels (N,).

    Computed in float32 whatever the autocast (autocast runs softmax and cross-entropy in float32 too).
    """
    with torch.autocast(h.device.type, enabled=False):
        args = (h.float(), weight.float(), None if bias is None else bias.float(), labels)
        if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in args):
            return _LinearCrossEntropy.apply(*args)
        return _chunks(*args, grads=False)[0]


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, weight, bias, labels):
        loss, *grads = _chunks(h, weight, bias, labels, grads=True)
        ctx.save_for_backward(*grads)
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        # in place: a second backward through this graph (retain_graph) fails autograd's version check
        return *(None if g is None else g.mul_(grad) for g in ctx.saved_tensors), None


def _chunks(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, labels: torch.Tensor,
            grads: bool) -> tuple[torch.Tensor | None, ...]:
    """(loss, and with `grads` the loss's gradients with respect to h, weight and bias)."""
    keep = (labels != IGNORE).to(h.dtype)  # (N,)
    target = labels.clamp_min(0)  # (N,) an ignored label reads class 0, weighted by 0
    n = max(1, min(CHUNK_FLOATS // weight.size(0), h.size(0)))
    buf = h.new_empty(n, weight.size(0))  # (n, V)
    loss = h.new_zeros(())
    new = torch.empty_like if h.size(0) else torch.zeros_like  # the first chunk writes gw and gb, the others add
    gh = torch.empty_like(h) if grads else None
    gw = new(weight) if grads else None
    gb = new(bias) if grads and bias is not None else None
    for s in range(0, h.size(0), n):
        hc, tc, kc = h[s:s + n], target[s:s + n], keep[s:s + n]
        logp = buf[:len(hc)]  # (n, V)
        _logits(hc, weight, bias, logp)
        torch.log_softmax(logp, 1, out=logp)
        loss -= logp.gather(1, tc[:, None]).squeeze(1) @ kc
        if not grads:
            continue
        g = logp.exp_()  # softmax: (n, V)
        g[torch.arange(len(hc), device=g.device), tc] -= kc  # minus the one-hot targets
        # an ignored token's row of g is not zeroed (a pass over (n, V)): the weights kc zero its products
        torch.mm(g, weight, out=gh[s:s + n]).mul_(kc[:, None])
        beta = 0 if s == 0 else 1  # beta 0: what gw and gb held (nothing yet) is ignored
        gw.addmm_(g.t(), hc * kc[:, None], beta=beta)
        if gb is not None:
            gb.addmv_(g.t(), kc, beta=beta)
    return loss, gh, gw, gb


def _logits(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, out: torch.Tensor) -> None:
    tile = CPU_VOCAB_TILE if h.device.type == "cpu" else weight.size(0)
    for v in range(0, weight.size(0), tile):
        w, o = weight[v:v + tile], out[:, v:v + tile]  # (tile, H), (n, tile)
        if bias is None:
            torch.mm(h, w.t(), out=o)
        else:
            torch.addmm(bias[v:v + tile], h, w.t(), out=o)

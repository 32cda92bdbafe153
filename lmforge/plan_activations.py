"""What a model keeps for backward, in bytes per sequence: the activation term of `lmforge plan`.

Dimensions: T tokens per sequence (S source, T target for T5), P positions the output layer runs at
(T; BERT: the masked ones), C d_model, F MLP width, V vocabulary, nh / nkv query / key-value heads, hs
head size, I = nh hs attention's width, W = (nh + 2 nkv) hs the fused q/k/v width, H an RNN's width.

Counted tensor by tensor from what autograd saves in the models' forward passes (torch 2.13), per token
and layer. `a` is the size of a matmul input (4 bytes in fp32, 2 under bf16/fp16 autocast); the
residual stream, norm inputs and statistics, softmax and log-softmax outputs stay fp32 (4 bytes); `m`
is a dropout mask (the masked tensor's size on CPU, a 1-byte bool on CUDA). GPT:

    block   norms 2 x (4C + 8) (layernorm: input, mean, rstd) or 2 x (8C + 4) (rmsnorm: input,
            normalised input, rsqrt); q/k/v input aC; attention that keeps no T x T matrix (CUDA's flash
            and memory-efficient kernels; CPU's flash kernel when there is no attention dropout)
            a(W + I) + 4nh (q, k, v, output, log-sum-exp), plus a(nh + nkv) hs for RoPE's rotated q, k;
            otherwise torch's math kernel, in fp32 even under autocast, 12I + aI + 4nhT (q, k, v and
            output copies, softmax) + 8nhT with dropout (its mask, the dropped probabilities); MLP
            aC + 2aF (GELU, ReLU^2) or aC + 4aF (SwiGLU); with dropout, 2 masks of C
    top     16 per token (int64 ids and labels), an embedding dropout mask; per position P the final
            norm, the head's input aC and the log-softmax 4V; with the fused output layer (below) the
            norm and the loss's gradient for the hidden state 4C instead

Under autocast a width-C input read by k linear layers is cast k times (autocast caches the casts of
weights only), hence `_inputs`. BERT (three q/k/v projections, post- or pre-norm, the MLM head at the
masked positions) and T5 (both stacks, the encoder output read by every cross-attention, the
position-bias self-attention that needs the math kernel on CPU) are written the same way below; the
RNN from the kernels' workspaces (`RNN_CELL_STATE`). The loss adds 2 x 4V per position at the start
of backward (the gradients of the log-softmax and of the logits); the backward of a layer holds its
gradients, 4C + 2aF per token at the widest (the MLP's; 3aF with a gated MLP). With activation
checkpointing a layer keeps its input (4C per token) and one layer is recomputed at a time.

The fused output layer (models/linear_ce.py: the RNN always, the GPT on a CPU in fp32) computes the
loss's gradients in forward and keeps those instead of the logits: 4C per position and, once per
micro-batch, the head's weight gradient 4VC (and bias 4V); backward starts with nothing more to add.

tests/test_plan.py checks these against the bytes autograd saves on CPU, fp32 and bf16: within 1% for
GPT and BERT, 3% for T5 and ELECTRA, 5% for the GRU and Elman RNN and 15% for a small LSTM. The CUDA variants (flash
kernels with dropout, bool masks) follow the kernels' saved tensors and are not measured here.
"""

from __future__ import annotations

from dataclasses import dataclass

ACT_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
"""Bytes of a matmul input, by `runtime.precision`."""

RNN_CELL_STATE = {"lstm": 16.5, "gru": 7, "rnn_tanh": 1, "rnn_relu": 1}
"""fp32 values per token and hidden unit a recurrent layer keeps besides its input: oneDNN's LSTM
workspace and output; the GRU's and Elman cell's gates and states, step by step (torch 2.13, CPU)."""


def fused_output_layer(kind: str, precision: str, cuda: bool) -> bool:
    """Whether training computes this model's output layer and loss without the logits (linear_ce)."""
    return kind == "rnn" or (kind == "gpt" and precision == "fp32" and not cuda)


@dataclass(frozen=True)
class _Bytes:
    a: int
    """A matmul input."""
    cuda: bool
    fused: bool = False
    """The output layer is fused with its loss (`fused_output_layer`)."""

    def mask(self, size: int) -> int:
        """A dropout mask over elements of `size` bytes."""
        return 1 if self.cuda else size

    def inputs(self, C: int, readers: int) -> int:
        """A width-C input read by `readers` linear layers: cast anew by each under autocast."""
        return self.a * C * (1 if self.a == 4 else readers)


def activations(cfg, seq_len: int, targets: int, precision: str, cuda: bool, checkpointing: bool) -> dict:
    """{"saved", "peak"}: bytes one sequence keeps for backward at the end of forward, and at backward's
    fullest moment: its start (the loss's gradients, 2 x 4V per position) or the first layer it goes
    through (the top's tensors freed, that layer's gradients alive; with checkpointing, that layer's
    recomputed activations too); "per_batch": bytes kept once per micro-batch whatever its size (the
    fused output layer's weight gradient), in neither of the others.

    `cfg` is the [model] section; `targets` the positions the output layer runs at (T5: the decoder
    length); `cuda` picks the attention kernels and mask sizes of CUDA instead of the CPU's.
    """
    fused = fused_output_layer(cfg.kind, precision, cuda)
    layers, inputs, top, grads = _SAVED[cfg.kind](cfg, seq_len, targets, _Bytes(ACT_BYTES[precision], cuda, fused))
    loss = 0 if fused else 8 * targets * cfg.vocab_size
    per_batch = 4 * cfg.vocab_size * (cfg.d_hidden + 1 if cfg.kind == "rnn" else cfg.d_model) if fused else 0
    if checkpointing:
        kept = sum(inputs)
        return {"saved": kept + top, "peak": max(kept + top + loss, kept + max(map(sum, zip(layers, grads)))),
                "per_batch": per_batch}
    return {"saved": sum(layers) + top, "peak": max(sum(layers) + top + loss, sum(layers) + max(grads)),
            "per_batch": per_batch}


def _norm(kind: str, C: int) -> int:
    return 4 * C + 8 if kind == "layernorm" else 8 * C + 4


def _math_attention(b: _Bytes, nh: int, inner: int, k_len: int, dropout: bool) -> int:
    """torch's math kernel, fp32 even under autocast: q, k, v copies (grouped heads expanded), the
    softmax, with dropout its mask and the dropped probabilities, and the output copy."""
    return 12 * inner + (12 if dropout else 4) * nh * k_len + b.a * inner


def _gpt(cfg, T: int, P: int, b: _Bytes):
    C, F, nh, nkv, hs = cfg.d_model, cfg.ff_width(), cfg.n_head, cfg.kv_heads(), cfg.head_size()
    a, inner, drop = b.a, cfg.n_head * hs, cfg.dropout > 0
    if b.cuda or not drop:
        attn = a * ((nh + 2 * nkv) * hs + inner) + 4 * nh + (a * (nh + nkv) * hs if cfg.pos == "rope" else 0)
    else:
        attn = _math_attention(b, nh, inner, T, True)
    mlp = b.inputs(C, 2) + 4 * a * F if cfg.mlp == "swiglu" else a * (C + 2 * F)
    layer = T * (2 * _norm(cfg.norm, C) + a * C + attn + mlp + (2 * b.mask(a) * C if drop else 0))
    head = 4 * C if b.fused else a * C + 4 * cfg.vocab_size
    top = T * (16 + (b.mask(4) * C if drop else 0)) + P * (_norm(cfg.norm, C) + head)
    grads = T * (4 * C + (3 if cfg.mlp == "swiglu" else 2) * a * F)  # the MLP's backward: its widest moment
    return [layer] * cfg.n_layer, [4 * C * T] * cfg.n_layer, top, [grads] * cfg.n_layer


def _bert(cfg, T: int, P: int, b: _Bytes):
    C, F, nh, inner = cfg.d_model, cfg.ff_width(), cfg.n_head, cfg.n_head * cfg.head_size()
    a, ln, drop = b.a, 4 * cfg.d_model + 8, cfg.dropout > 0
    if b.cuda or cfg.attn_dropout == 0:
        attn = a * 4 * inner + 4 * nh  # q, k, v (three linear outputs), output, log-sum-exp
    else:
        attn = _math_attention(b, nh, inner, T, True)
    layer = T * (2 * ln + b.inputs(C, 3) + attn + a * (C + 2 * F) + (2 * b.mask(a) * C if drop else 0))
    ids = 8 * (2 if cfg.type_vocab_size else 1)
    # the embeddings' norm and dropout; the final hidden states, which the gather of the masked ones keeps
    top = T * (ids + ln + (b.mask(4) * C if drop else 0) + (ln if cfg.pre_norm else 0) + 4 * C)
    top += P * (4 * a * C + 16 + 4 * cfg.vocab_size)  # the MLM head: dense, GELU, norm, decoder; labels
    return [layer] * cfg.n_layer, [4 * C * T] * cfg.n_layer, top, [T * (4 * C + 2 * a * F)] * cfg.n_layer


def _t5(cfg, S: int, T: int, b: _Bytes):
    C, F, nh, inner = cfg.d_model, cfg.ff_width(), cfg.n_head, cfg.n_head * cfg.head_size()
    a, p, rms = b.a, cfg.dropout > 0, 8 * cfg.d_model + 4
    ff = b.inputs(C, 2) + 4 * a * F if cfg.feed_forward == "gated-gelu" else a * (C + 2 * F)
    ff += (b.mask(a) * (F + C)) if p else 0

    def attn(q_len: int, k_len: int, bias_grad: bool) -> float:
        """Per query token. Self-attention's position bias needs a gradient: torch's math kernel on CPU,
        the memory-efficient one on CUDA (which keeps the bias); cross-attention projects the encoder
        output to k and v in every layer."""
        per_key = 2 * inner * k_len / q_len  # k and v of the k_len keys, per query token
        if b.cuda or not (bias_grad or p):  # q, k, v, output, log-sum-exp (and the bias)
            core = a * (2 * inner + per_key) + 4 * nh + (4 * nh * k_len if bias_grad else 0)
        else:  # fp32 copies of q, k, v; softmax (dropout mask, dropped probabilities); output copy
            core = 4 * (inner + per_key) + (12 if p else 4) * nh * k_len + a * inner
        return b.inputs(C, 3 if bias_grad else 1) + core + (b.mask(a) * C if p else 0)

    enc = S * (2 * rms + attn(S, S, True) + ff)
    dec = T * (3 * rms + attn(T, T, True) + attn(T, S, False) + ff)
    memory = S * b.inputs(C, 2 * cfg.decoder_layers())  # the encoder output, read by each k and v
    drops = 2 * b.mask(4) * C if p else 0  # the embeddings' and the stack's output dropout masks
    top = S * (8 + rms + drops) + memory + T * (16 + rms + drops + a * C + 4 * cfg.vocab_size)
    # checkpointed layers also keep the position biases they are handed (B, nh, S, S) and (1, nh, T, T)
    biases = 4 * nh * (S * S + T * T)
    inputs = [4 * C * S + biases] + [4 * C * S] * (cfg.n_layer - 1) + [4 * C * T] * cfg.decoder_layers()
    grad = 4 * C + (3 if cfg.feed_forward == "gated-gelu" else 2) * a * F
    grads = [S * grad] * cfg.n_layer + [T * grad] * cfg.decoder_layers()
    return [enc] * cfg.n_layer + [dec] * cfg.decoder_layers(), inputs, top, grads


def _rnn(cfg, T: int, P: int, b: _Bytes):
    E, H, p = cfg.d_embed, cfg.d_hidden, cfg.dropout > 0
    layers = [T * (b.a * (E if i == 0 else H) + 4 * RNN_CELL_STATE[cfg.cell] * H + (b.mask(b.a) * H if p else 0))
              for i in range(cfg.n_layer)]
    top = T * (16 + (b.mask(b.a) * E if p else 0)) + P * (4 * H if b.fused else b.a * H + 4 * cfg.vocab_size)
    return layers, [0] * cfg.n_layer, top, [T * 16 * H] * cfg.n_layer  # gate gradients


def _electra(cfg, T: int, P: int, b: _Bytes):
    """The generator's blocks (G wide) and the discriminator's (C wide), as BERT's; the top: the embeddings
    (C wide) normalised twice, the generator's projection input, its final states (G) gathered at the P
    masked positions for its head (dense G -> C, GELU, norm, decoder, log-softmax), and the discriminator's
    replaced-token head at every token (dense input, GELU, one logit, its label)."""
    C, G, a, drop = cfg.d_model, cfg.generator().d_model, b.a, cfg.dropout > 0
    g_layers, g_inputs, _, g_grads = _bert(cfg.generator(), T, P, b)
    d_layers, d_inputs, _, d_grads = _bert(cfg.discriminator(), T, 0, b)
    ids, ln = 8 * (2 if cfg.type_vocab_size else 1), 4 * C + 8
    embed = ids + ln + (b.mask(4) * C if drop else 0)
    top = T * (2 * embed + a * C + 4 * G + 2 * a * C + 12) + P * (a * G + 3 * a * C + 16 + 4 * cfg.vocab_size)
    return g_layers + d_layers, g_inputs + d_inputs, top, g_grads + d_grads


_SAVED = {"gpt": _gpt, "bert": _bert, "t5": _t5, "rnn": _rnn, "electra": _electra}
"""The formula of each `model.kind` (kept beside each other so that they read as one table)."""

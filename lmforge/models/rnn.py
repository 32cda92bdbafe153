"""Recurrent language model (LSTM / GRU / Elman RNN), the classic word-level baseline.

Dimensions: B batch, T sequence length, E d_embed, H d_hidden, V vocabulary, L layers.

The state carries across truncated-BPTT windows: pass the state a forward returned into the next one
(after `detach_state`, so gradients stop at the window boundary).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn

from lmforge.config import check, check_ranges
from lmforge.models.linear_ce import linear_cross_entropy


@dataclass(frozen=True)
class RNNConfig:
    kind: Literal["rnn"] = "rnn"
    vocab_size: int = 0
    """Vocabulary size; 0 takes it from the tokenizer."""
    cell: Literal["lstm", "gru", "rnn_tanh", "rnn_relu"] = "lstm"
    context_len: int = 35
    """Truncated-BPTT length: tokens per training window."""
    n_layer: int = 2
    d_embed: int = 650
    d_hidden: int = 650
    dropout: float = 0.5
    tie_embeddings: bool = True
    """Share input and output embeddings (needs d_embed == d_hidden)."""
    init_range: float = 0.1

    def __post_init__(self) -> None:
        check_ranges(self, "model", positive="context_len n_layer d_embed d_hidden init_range",
                     non_negative="vocab_size", fraction="dropout")
        check(not self.tie_embeddings or self.d_embed == self.d_hidden, "model.tie_embeddings",
               "needs model.d_embed == model.d_hidden")

    @property
    def hidden_size(self) -> int:
        return self.d_hidden

    @property
    def max_positions(self) -> None:
        """None: a recurrent model reads any length (context_len is only its training window)."""
        return None

    input_format = "plain"
    token_types = False


State = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


class RNNLM(nn.Module):
    # the backbone contract (models/__init__.py)
    pretraining_task = "bptt"
    recomputable_layers = False  # one fused recurrent module: no layers to recompute
    decoding = "recurrent"
    default_pooling = "last"
    lm_head_prefixes = ("decoder.",)
    pooler_prefixes = ()
    classifier_bias = classifier_dropout = True

    def __init__(self, cfg: RNNConfig):
        super().__init__()
        if cfg.vocab_size <= 0:
            raise ValueError("RNNConfig.vocab_size must be set (the tokenizer's vocabulary size)")
        self.config = cfg
        self.encoder = nn.Embedding(cfg.vocab_size, cfg.d_embed)
        self.drop = nn.Dropout(cfg.dropout)
        between = cfg.dropout if cfg.n_layer > 1 else 0.0  # torch warns on dropout with one layer
        if cfg.cell == "lstm":
            self.rnn = nn.LSTM(cfg.d_embed, cfg.d_hidden, cfg.n_layer, dropout=between, batch_first=True)
        elif cfg.cell == "gru":
            self.rnn = nn.GRU(cfg.d_embed, cfg.d_hidden, cfg.n_layer, dropout=between, batch_first=True)
        else:
            self.rnn = nn.RNN(cfg.d_embed, cfg.d_hidden, cfg.n_layer, dropout=between, batch_first=True,
                              nonlinearity=cfg.cell.removeprefix("rnn_"))
        self.decoder = nn.Linear(cfg.d_hidden, cfg.vocab_size)
        if cfg.tie_embeddings:
            self.decoder.weight = self.encoder.weight
        # the word_language_model recipe: uniform embeddings/decoder, zero decoder bias, default cell init
        nn.init.uniform_(self.encoder.weight, -cfg.init_range, cfg.init_range)
        if not cfg.tie_embeddings:
            nn.init.uniform_(self.decoder.weight, -cfg.init_range, cfg.init_range)
        nn.init.zeros_(self.decoder.bias)

    def forward(self, input_ids: torch.Tensor, state: State | None = None,
                labels: torch.Tensor | None = None) -> tuple[torch.Tensor, State]:
        """(logits (B, T, V), state); given `labels` (B, T), (the summed next-token loss over labels !=
        -100, state) instead, computed without the logits (models/linear_ce.py)."""
        x = self.drop(self.encoder(input_ids))  # (B, T, E)
        if state is None:
            state = self.init_state(input_ids.size(0), input_ids.device)
        y, state = self.rnn(x, state)  # (B, T, H)
        y = self.drop(y)
        if labels is None:
            return self.decoder(y), state  # (B, T, V)
        loss_sum = linear_cross_entropy(y.flatten(0, 1), self.decoder.weight, self.decoder.bias, labels.flatten())
        return loss_sum, state

    def hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
               token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """The last layer's output at every position (B, T, H), from a zero state; no decoder. Reading
        left to right, a real token never sees the right padding after it (no mask needed)."""
        x = self.drop(self.encoder(input_ids))  # (B, T, E)
        y, _ = self.rnn(x, self.init_state(input_ids.size(0), input_ids.device))  # (B, T, H)
        return self.drop(y)

    def init_state(self, batch_size: int, device: torch.device | str | None = None) -> State:
        """Zeros: (L, B, H), or a pair of them for an LSTM (h, c)."""
        cfg, dtype = self.config, self.encoder.weight.dtype
        h = torch.zeros(cfg.n_layer, batch_size, cfg.d_hidden, device=device, dtype=dtype)
        return (h, h.clone()) if cfg.cell == "lstm" else h

    @staticmethod
    def detach_state(state: State) -> State:
        """The same state cut from the graph that produced it (truncated BPTT)."""
        return tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()

    def layer_of(self, name: str) -> int:
        """Depth of a parameter: 0 the embedding, 1..n_layer the cells' layers, n_layer + 1 the decoder."""
        if name.startswith("rnn."):  # weight_ih_l0, bias_hh_l1, ...
            return int(name.rpartition("_l")[2]) + 1
        return 0 if name.startswith("encoder.") else self.config.n_layer + 1

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameters (a tied matrix once); `non_embedding` leaves out the input embedding table."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.encoder.weight.numel() if non_embedding else n

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token, 6*N, N every matmul weight (cells + decoder); seq_len plays no part."""
        n = self.num_params(non_embedding=True)
        if self.config.tie_embeddings:
            n += self.decoder.weight.numel()
        return 6.0 * n

"""ELECTRA (Clark et al., 2020): a small generator fills masked positions, a discriminator spots them.

Dimensions: B batch, T sequence length, N real (unpadded) tokens of a batch, P masked positions listed
per sequence, C the discriminator's d_model (also the embedding width E), G the generator's width,
V vocabulary.

The discriminator is a whole lmforge `Bert` (under `discriminator.`), so that fine-tuning takes it as
one: its [CLS] pooler and MLM head are never run in pretraining (`idle_prefixes`, frozen by the task).
The generator is a narrower stack of the same blocks over the discriminator's embeddings (word,
position, segment and their norm are one set of tensors, as in the paper): a projection from C to G
(HF's `embeddings_project`), its blocks, and an MLM head back to C (dense, GELU, LayerNorm) whose decoder
is the word-embedding table with its own bias: HF's ElectraForMaskedLM with embedding_size = C. The
replaced-token head is HF's ElectraDiscriminatorPredictions: dense, GELU, one logit per token.

The model builds on BERT's parts (its blocks, its padding layout), the one import of another model file.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from lmforge.config import check
from lmforge.models.bert import Bert, BertConfig, Block, Layout


@dataclass(frozen=True)
class ElectraConfig(BertConfig):
    """The discriminator's BERT (every BertConfig key means what it means there) and the generator's size."""

    kind: Literal["electra"] = "electra"
    generator_width_ratio: float = 0.25
    """The generator's d_model, n_head and d_ff as a share of the discriminator's (the paper's generator
    size: 1/4 for ELECTRA-Small and -Large, 1/3 for -Base), rounded, with at least one head; the head size
    stays the discriminator's while n_head x ratio is a whole number."""
    generator_layers: int = 0
    """Blocks of the generator; 0 means as many as the discriminator (the paper's choice)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(0.0 < self.generator_width_ratio <= 1.0, "model.generator_width_ratio", "must be in (0, 1]")
        check(self.generator_layers >= 0, "model.generator_layers", "must be >= 0 (0: the discriminator's n_layer)")
        heads, width = self._generator_shape()
        check(width % heads == 0, "model.generator_width_ratio",
              f"gives a generator {width} wide with {heads} heads, which do not divide it: pick a ratio that "
              f"makes d_model x ratio a multiple of n_head x ratio")

    def _generator_shape(self) -> tuple[int, int]:
        heads = max(1, round(self.n_head * self.generator_width_ratio))
        return heads, max(heads, round(self.d_model * self.generator_width_ratio))

    def discriminator(self) -> BertConfig:
        """The discriminator: the BERT that fine-tuning and export take."""
        return BertConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(BertConfig) if f.name != "kind"})

    def generator(self) -> BertConfig:
        """The shape of the generator's blocks (its embeddings are the discriminator's)."""
        heads, width = self._generator_shape()
        return dataclasses.replace(
            self.discriminator(), n_layer=self.generator_layers or self.n_layer, n_head=heads, d_model=width,
            head_dim=0, d_ff=max(1, round(self.ff_width() * self.generator_width_ratio)))


def sample(logits: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Token ids drawn from softmax(logits) (..., V) by inverting the CDF at `uniforms` (...,) in [0, 1):
    the draw is a function of the uniforms, which come with the batch (seeded like its masks), so a
    resumed run and every validation pass draw the same tokens."""
    cdf = torch.softmax(logits.float(), dim=-1).cumsum(dim=-1)  # (..., V)
    u = uniforms.to(cdf.dtype)[..., None] * cdf[..., -1:]  # the total is 1 up to rounding
    return torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp_(max=logits.size(-1) - 1)  # (...,)


class Generator(nn.Module):
    """A masked LM G wide on C-wide embedded tokens; its output layer is the embedding table it is given."""

    def __init__(self, cfg: BertConfig, emb_width: int):
        super().__init__()
        G, C = cfg.d_model, emb_width
        self.project = nn.Linear(C, G) if G != C else None
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(G, eps=cfg.norm_eps) if cfg.pre_norm else None
        self.head_dense = nn.Linear(G, C)
        self.head_norm = nn.LayerNorm(C, eps=cfg.norm_eps)
        self.decoder_bias = nn.Parameter(torch.zeros(cfg.vocab_size))

    def forward(self, x: torch.Tensor, layout: Layout, positions: torch.Tensor,
                decoder: torch.Tensor) -> torch.Tensor:
        """x (N, C) the embedded real tokens, positions (B, P), decoder (V, C): logits (B, P, V)."""
        if self.project is not None:
            x = self.project(x)  # (N, G)
        for block in self.blocks:
            x = block(x, layout)
        h = layout.pad(self.ln_f(x) if self.ln_f is not None else x)  # (B, T, G)
        h = h.gather(1, positions[:, :, None].expand(-1, -1, h.size(-1)))  # (B, P, G)
        h = self.head_norm(F.gelu(self.head_dense(h)))  # (B, P, C)
        return F.linear(h, decoder, self.decoder_bias)  # (B, P, V)


class Electra(nn.Module):
    # the backbone contract (models/__init__.py): the discriminator's, except where pretraining differs
    pretraining_task = "replaced_token_detection"
    recomputable_layers = True  # the blocks of both stacks
    decoding = None
    default_pooling = "cls"
    lm_head_prefixes = ("generator.head_dense.", "generator.head_norm.", "generator.decoder_bias")
    pooler_prefixes = ("discriminator.pooler.",)
    classifier_bias = classifier_dropout = True
    idle_prefixes = tuple(f"discriminator.{p}" for p in Bert.lm_head_prefixes + Bert.pooler_prefixes)
    """The discriminator's parameters that pretraining never runs (its BERT MLM head and pooler)."""

    def __init__(self, cfg: ElectraConfig):
        super().__init__()
        self.config = cfg
        self.discriminator = Bert(cfg.discriminator())
        self.generator = Generator(cfg.generator(), cfg.d_model)
        self.rtd_dense = nn.Linear(cfg.d_model, cfg.d_model)  # the replaced-token head
        self.rtd_out = nn.Linear(cfg.d_model, 1)
        for module in (self.generator, self.rtd_dense, self.rtd_out):
            module.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=self.config.init_std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, positions: torch.Tensor,
                targets: torch.Tensor, uniforms: torch.Tensor, token_type_ids: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One pretraining pass: the generator reads the masked `input_ids` (B, T), a token sampled from it
        replaces each masked position, and the discriminator reads the result.

        positions (B, P): the masked positions, padded with 0; targets (B, P): the original tokens there,
        negative at the padding; uniforms (B, P): the draws that pick the samples. Returns the generator's
        logits (B, P, V), the discriminator's (B, T), and where its input differs from the original text
        (B, T) bool: a sample equal to the original counts as original, as in the paper.
        """
        d, layout = self.discriminator, Layout(attention_mask, *input_ids.shape)
        gen_logits = self.generator(d.embed(input_ids, layout, token_type_ids), layout, positions,
                                    d.word_embeddings.weight)  # (B, P, V)
        with torch.no_grad():  # no gradient flows through the sampling
            here = input_ids.gather(1, positions)  # (B, P); the padding's position 0 is [CLS], left as it is
            valid = targets >= 0
            corrupted = input_ids.scatter(1, positions, torch.where(valid, sample(gen_logits, uniforms), here))
            original = input_ids.scatter(1, positions, torch.where(valid, targets, here))  # (B, T)
            replaced = corrupted != original
        disc_logits = self._detect(d.encode(corrupted, layout, token_type_ids))  # (B, T)
        return gen_logits, disc_logits, replaced

    def detect(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
               token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """The discriminator's logits (B, T): > 0 where it takes a token for a replacement."""
        return self._detect(self.discriminator.hidden(input_ids, attention_mask, token_type_ids))

    def _detect(self, h: torch.Tensor) -> torch.Tensor:
        return self.rtd_out(F.gelu(self.rtd_dense(h))).squeeze(-1)  # (B, T, C) -> (B, T)

    def hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
               token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """The discriminator's final hidden states (B, T, C)."""
        return self.discriminator.hidden(input_ids, attention_mask, token_type_ids)

    def pool(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.discriminator.pool(hidden)

    def layer_of(self, name: str) -> int:
        """The discriminator's depths (0 embeddings, 1..n_layer its blocks); the generator and the
        replaced-token head on top (n_layer + 1)."""
        if name.startswith("discriminator."):
            return self.discriminator.layer_of(name.removeprefix("discriminator."))
        return self.config.n_layer + 1

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameters (shared tensors once), the idle ones included; `non_embedding` leaves out the tables."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.discriminator.num_params() - self.discriminator.num_params(non_embedding=True)
        return n

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token, 6*N + 12*L*T*C over both stacks, as for BERT: N holds the matmul
        weights that run (the idle MLM head and pooler of the discriminator left out) and the word-embedding
        matrix once, as the generator's decoder (counted at every position, as BERT's)."""
        gen = self.config.generator()
        idle = sum(p.numel() for name, p in self.named_parameters() if name.startswith(self.idle_prefixes))
        n = self.num_params(non_embedding=True) - idle + self.discriminator.word_embeddings.weight.numel()
        attention = sum(c.n_layer * c.n_head * c.head_size() for c in (self.config, gen))
        return 6.0 * n + 12.0 * seq_len * attention

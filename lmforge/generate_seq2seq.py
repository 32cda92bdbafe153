"""Decoding an encoder-decoder (T5): greedy, sampling and beam search, batched, with caches.

The encoder runs once per source; the decoder reads its output through cross-attention keys and
values projected once (`T5.new_cache`), and its own past through a self-attention cache that beam
search reorders as beams move. Every output is at most `max_new_tokens` tokens, end-of-text
included; `Output.hit_limit` says which ones were cut there (the classic silent truncation is a
default length of 20 nobody asked for, so there is no default here: callers pass the length).

Beam search follows the `transformers` rules, so both pick the same beams with the same scores:
each step keeps the 2k best continuations of the k beams; those that end (end-of-text, or the length
limit) and rank among the first k become finished hypotheses, scored sum(log p) / length **
length_penalty (length counts the end token); the k best others continue. A source is done when its
k finished slots are full and the best running beam, normalised at the current length, cannot beat
the worst of them (or at once, with `early_stopping`). `no_repeat_ngram_size` forbids any n-gram
that already occurs in the hypothesis (the start token included).

Dimensions: B sources, k beams, R = B * k rows, S source length, V vocabulary, L tokens so far.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.errors import LmforgeError

NEG = -1.0e9
"""The score of an empty slot or a beam that may not continue (finite, so sums stay ordered)."""


@dataclass(frozen=True)
class Decoding:
    """How to decode: the settings of `lmforge generate` and of a seq2seq run's evaluation."""

    max_new_tokens: int
    """Most tokens per output, end-of-text included (required: no silent default)."""
    num_beams: int = 1
    length_penalty: float = 1.0
    """Beam scores are sum(log p) / length ** length_penalty: > 0 favours longer outputs."""
    no_repeat_ngram_size: int = 0
    early_stopping: bool = False
    """Beam search: finish a source as soon as it has num_beams finished hypotheses."""
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        checks = [(self.max_new_tokens >= 1, "max_new_tokens", "must be >= 1"),
                  (self.num_beams >= 1, "num_beams", "must be >= 1 (1: greedy or sampling)"),
                  (self.no_repeat_ngram_size >= 0, "no_repeat_ngram_size", "must be >= 0 (0: no limit)"),
                  (self.temperature > 0, "temperature", "must be > 0 (greedy: leave do_sample off)"),
                  (self.top_k >= 0, "top_k", "must be >= 0 (0 keeps every token)"),
                  (0 < self.top_p <= 1, "top_p", "must be in (0, 1] (1 keeps every token)"),
                  (not (self.do_sample and self.num_beams > 1), "do_sample",
                   "cannot be combined with num_beams > 1: sample (num_beams 1) or search (no sampling)")]
        for ok, name, message in checks:
            if not ok:
                raise LmforgeError(f"generation setting '{name}' {message}")


@dataclass
class Output:
    ids: list[int]
    """Generated tokens, without the end-of-text token."""
    score: float
    """Beam search: the hypothesis's length-normalised score; greedy and sampling: sum(log p)."""
    hit_limit: bool
    """Cut at max_new_tokens instead of ending with end-of-text."""


def banned_by_ngrams(seqs: torch.Tensor, n: int) -> torch.Tensor:
    """(R, L-n+1) token ids each row of `seqs` (R, L) may not take next, or -1: the last token of every
    n-gram so far whose first n-1 tokens equal the row's last n-1."""
    R, L = seqs.shape
    if n <= 0 or L < n:
        return torch.full((R, 0), -1, dtype=seqs.dtype, device=seqs.device)
    grams = seqs.unfold(1, n, 1)  # (R, L-n+1, n)
    prefix = seqs[:, L - n + 1:]  # (R, n-1)
    match = (grams[:, :, :-1] == prefix[:, None, :]).all(-1)  # (R, L-n+1)
    return torch.where(match, grams[:, :, -1], torch.full_like(grams[:, :, -1], -1))


def ban(logp: torch.Tensor, seqs: torch.Tensor, n: int) -> torch.Tensor:
    """`logp` (R, V) with -inf where a token would repeat an n-gram of `seqs` (R, L)."""
    banned = banned_by_ngrams(seqs, n)
    if banned.numel() == 0:
        return logp
    hit = banned >= 0
    rows = torch.arange(logp.size(0), device=logp.device)[:, None].expand_as(banned)
    return logp.index_put((rows[hit], banned[hit]), torch.tensor(float("-inf"), device=logp.device))


def _filter(logits: torch.Tensor, d: Decoding) -> torch.Tensor:
    """Temperature, then top-k, then top-p, over rows of logits (R, V)."""
    logits = logits / d.temperature
    if 0 < d.top_k < logits.size(-1):
        kth = logits.topk(d.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if d.top_p < 1.0:
        ordered, order = logits.sort(dim=-1, descending=True)
        probs = ordered.softmax(-1)
        drop = probs.cumsum(-1) - probs >= d.top_p  # mass strictly ahead of each token reaches p
        drop[:, 0] = False
        logits = logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    return logits


@torch.no_grad()
def decode_batch(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, d: Decoding,
                 eos: int, pad: int) -> list[Output]:
    """One output per source row of `input_ids` (B, S)."""
    if getattr(model, "decoding", None) != "encoder_decoder":
        raise LmforgeError(f"sequence-to-sequence decoding needs an encoder-decoder (t5), not {type(model).__name__}")
    was_training = model.training
    model.eval()
    try:
        memory = model.encode(input_ids, attention_mask)  # (B, S, C)
        if d.num_beams > 1:
            return _beam_search(model, memory, attention_mask, d, eos, pad)
        return _greedy_or_sample(model, memory, attention_mask, d, eos, pad)
    finally:
        model.train(was_training)


def _greedy_or_sample(model, memory, mask, d: Decoding, eos: int, pad: int) -> list[Output]:
    B = memory.size(0)
    cache = model.new_cache(memory)
    rng = torch.Generator(device=memory.device).manual_seed(d.seed) if d.seed is not None else None
    seqs = torch.full((B, 1), pad, dtype=torch.long, device=memory.device)
    done = torch.zeros(B, dtype=torch.bool, device=memory.device)
    scores = torch.zeros(B, device=memory.device)
    for _ in range(d.max_new_tokens):
        logp = F.log_softmax(model.decode(seqs[:, -1:], memory, mask, cache)[:, -1].float(), dim=-1)  # (B, V)
        logp = ban(logp, seqs, d.no_repeat_ngram_size)
        if d.do_sample:
            probs = _filter(logp, d).softmax(-1)
            token = torch.multinomial(probs, 1, generator=rng)[:, 0]
        else:
            token = logp.argmax(-1)
        token = torch.where(done, torch.full_like(token, pad), token)
        scores += torch.where(done, 0.0, logp.gather(1, token[:, None])[:, 0])
        seqs = torch.cat([seqs, token[:, None]], dim=1)
        done |= token == eos
        if done.all():
            break
    return [_output(row[1:].tolist(), float(s), eos) for row, s in zip(seqs, scores)]


def _output(ids: list[int], score: float, eos: int) -> Output:
    """An output row (max_new_tokens long unless it ended) without its end token and what follows."""
    if eos in ids:
        return Output(ids[:ids.index(eos)], score, False)
    return Output(ids, score, True)


def _beam_search(model, memory, mask, d: Decoding, eos: int, pad: int) -> list[Output]:
    B, k, N, dev = memory.size(0), d.num_beams, d.max_new_tokens, memory.device
    memory, mask = memory.repeat_interleave(k, 0), mask.repeat_interleave(k, 0)  # (R, S, C), (R, S)
    cache = model.new_cache(memory)
    seqs = torch.full((B, k, 1), pad, dtype=torch.long, device=dev)  # the start token, then the beams' tokens
    running = torch.full((B, k), NEG, device=dev)
    running[:, 0] = 0.0  # the first step expands one beam only
    final = torch.full((B, k, N + 1), pad, dtype=torch.long, device=dev)  # finished hypotheses
    final_scores = torch.full((B, k), NEG, device=dev)
    filled = torch.zeros(B, k, dtype=torch.bool, device=dev)
    open_ = torch.ones(B, dtype=torch.bool, device=dev)  # may a new hypothesis still enter?
    first_k = torch.arange(2 * k, device=dev) < k
    for t in range(N):
        flat = seqs.view(B * k, -1)
        logp = F.log_softmax(model.decode(flat[:, -1:], memory, mask, cache)[:, -1].float(), dim=-1)  # (R, V)
        logp = ban(logp, flat, d.no_repeat_ngram_size)
        V = logp.size(-1)
        total = (logp.view(B, k, V) + running[:, :, None]).view(B, k * V)
        top, index = total.topk(2 * k, dim=-1)  # (B, 2k), best first
        beam, token = index // V, index % V
        cand = torch.cat([seqs.gather(1, beam[:, :, None].expand(-1, -1, t + 1)), token[:, :, None]], dim=2)
        ends = (token == eos) | (t + 1 == N)  # (B, 2k)
        # finished: among the first k candidates, while the source may still take one
        may_enter = open_ & ~(filled.all(-1) & d.early_stopping)
        entering = ends & first_k & may_enter[:, None]
        norm = torch.where(entering, top / float(t + 1) ** d.length_penalty, torch.full_like(top, NEG))
        padded = F.pad(cand, (0, N + 1 - (t + 2)), value=pad)
        pool_scores = torch.cat([final_scores, norm], dim=1)  # (B, 3k)
        best = pool_scores.topk(k, dim=-1).indices
        final_scores = pool_scores.gather(1, best)
        final = torch.cat([final, padded], dim=1).gather(1, best[:, :, None].expand(-1, -1, N + 1))
        filled = torch.cat([filled, entering], dim=1).gather(1, best)
        if t + 1 == N or ends.all():  # the limit, or no candidate left to continue
            break
        # running: the k best candidates that did not end
        live = top + ends.float() * NEG
        keep = live.topk(k, dim=-1).indices  # (B, k)
        running = live.gather(1, keep)
        seqs = cand.gather(1, keep[:, :, None].expand(-1, -1, t + 2))
        rows = (beam.gather(1, keep) + torch.arange(B, device=dev)[:, None] * k).view(-1)
        cache.reorder(rows)
        # a source stays open while its best running beam could still beat its worst finished one
        best_possible = running[:, 0] / float(t + 1) ** d.length_penalty
        worst = torch.where(filled, final_scores, torch.full_like(final_scores, NEG)).min(-1).values
        open_ &= ~filled.all(-1) | (best_possible > worst)
        if not open_.any() or (d.early_stopping and filled.all()):
            break
    return [_output(final[b, 0, 1:].tolist(), float(final_scores[b, 0]), eos) for b in range(B)]


@dataclass
class Translation:
    text: str
    tokens: int
    """Generated tokens (end-of-text not counted)."""
    hit_limit: bool
    source_truncated: bool
    score: float


def translate(model: nn.Module, tokenizer, texts: list[str], d: Decoding, prefix: str = "", max_length: int = 512,
              batch_size: int = 32, progress: bool = False) -> list[Translation]:
    """The output text of each source text, in order (batched longest first, which pads least)."""
    from tqdm.auto import tqdm

    from lmforge.data.pairs import encode_sources

    if isinstance(texts, str):
        texts = [texts]
    sources, cut = encode_sources(tokenizer, list(texts), prefix, max_length)
    device = next(model.parameters()).device
    order = sorted(range(len(sources)), key=lambda i: -len(sources[i]))
    out: list[Translation | None] = [None] * len(sources)
    for start in tqdm(range(0, len(order), batch_size), disable=not progress, unit="batch"):
        index = order[start:start + batch_size]
        S = max(len(sources[i]) for i in index)
        ids = torch.full((len(index), S), tokenizer.pad_id, dtype=torch.long)
        for r, i in enumerate(index):
            ids[r, :len(sources[i])] = torch.tensor(sources[i])
        mask = (torch.arange(S)[None, :] < torch.tensor([len(sources[i]) for i in index])[:, None]).long()
        outputs = decode_batch(model, ids.to(device), mask.to(device), d, tokenizer.eot_id, tokenizer.pad_id)
        for i, o in zip(index, outputs):
            out[i] = Translation(tokenizer.decode(o.ids), len(o.ids), o.hit_limit, cut[i], o.score)
    return out  # type: ignore[return-value]

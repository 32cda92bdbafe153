"""Text generation (GPT with a KV cache, RNN with its carried state) and fill-mask (BERT).

Dimensions: V vocabulary, M masks in a fill-mask text.

Sampling order per step: repetition penalty -> temperature -> top-k -> top-p -> draw. Greedy (or
temperature 0) takes the arg-max after the repetition penalty.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
import torch.nn as nn

from lmforge.errors import LmforgeError


def apply_repetition_penalty(logits: torch.Tensor, prev_ids: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL-style: divide positive logits of tokens already seen by `penalty`, multiply negative ones."""
    if penalty == 1.0 or prev_ids.numel() == 0:
        return logits
    logits = logits.clone()
    seen = logits[prev_ids]
    logits[prev_ids] = torch.where(seen > 0, seen / penalty, seen * penalty)
    return logits


def filter_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest logits (ties at the k-th included); 0 keeps all."""
    if k <= 0 or k >= logits.size(-1):
        return logits
    kth = torch.topk(logits, k).values[-1]
    return logits.masked_fill(logits < kth, float("-inf"))


def filter_top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose probability reaches p (at least one)."""
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, descending=True)
    probs = torch.softmax(sorted_logits, dim=-1)
    before = torch.cumsum(probs, dim=-1) - probs  # probability mass strictly ahead of each token
    drop = before >= p
    drop[0] = False
    return logits.masked_fill(drop.scatter(0, order, drop), float("-inf"))


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                repetition_penalty: float = 1.0, prev_ids: torch.Tensor | None = None, greedy: bool = False,
                generator: torch.Generator | None = None) -> int:
    """One token id from next-token logits (V,); `generator` (CPU) makes the draw reproducible."""
    logits = logits.float()
    if prev_ids is not None:
        logits = apply_repetition_penalty(logits, prev_ids.to(logits.device), repetition_penalty)
    if greedy or temperature == 0:
        return int(torch.argmax(logits))
    logits = filter_top_p(filter_top_k(logits / temperature, top_k), top_p)
    probs = torch.softmax(logits, dim=-1).cpu()
    return int(torch.multinomial(probs, 1, generator=generator))


def _check_args(max_new_tokens: int, temperature: float, top_k: int, top_p: float, penalty: float) -> None:
    checks = [(max_new_tokens >= 0, "max_new_tokens", "must be >= 0"),
              (temperature >= 0, "temperature", "must be >= 0 (0 means greedy)"),
              (top_k >= 0, "top_k", "must be >= 0 (0 keeps every token)"),
              (0 < top_p <= 1, "top_p", "must be in (0, 1] (1 keeps every token)"),
              (penalty > 0, "repetition_penalty", "must be > 0 (1 means none; 1.1-1.3 is typical)")]
    for ok, name, message in checks:
        if not ok:
            raise LmforgeError(f"generation setting '{name}' {message}")


def iter_ids(model: nn.Module, ids: list[int], max_new_tokens: int = 100, temperature: float = 1.0,
             top_k: int = 0, top_p: float = 1.0, repetition_penalty: float = 1.0, greedy: bool = False,
             seed: int | None = None, eot_id: int | None = None, use_cache: bool = True) -> Iterator[int]:
    """Yield new token ids one at a time; stops before `eot_id`. `use_cache=False` recomputes each step."""
    _check_args(max_new_tokens, temperature, top_k, top_p, repetition_penalty)
    decoding = getattr(model, "decoding", None)  # the backbone contract (models/__init__.py)
    if decoding is None:
        raise LmforgeError(f"generation needs a causal language model (gpt or rnn), this one is "
                           f"{type(model).__name__}: use fill-mask for bert")
    ids = list(ids)
    if not ids:
        if eot_id is None:
            raise LmforgeError("empty prompt: give some text to continue")
        ids = [eot_id]  # documents start after an end-of-text token, so it is a neutral start
    rng = torch.Generator().manual_seed(seed) if seed is not None else None
    feed = _gpt_feeder(model, use_cache) if decoding == "kv_cache" else _rnn_feeder(model)
    seen = set(ids)
    was_training = model.training
    model.eval()
    try:
        pending = ids
        for _ in range(max_new_tokens):
            # no_grad per step, not around the loop: a grad mode set inside a generator would leak
            # into the caller's code between yields
            with torch.no_grad():
                logits = feed(pending)  # (V,)
                prev = torch.tensor(sorted(seen)) if repetition_penalty != 1.0 else None
                tok = sample_next(logits, temperature, top_k, top_p, repetition_penalty, prev, greedy, rng)
            if tok == eot_id:
                return
            yield tok
            seen.add(tok)
            pending = [tok]
    finally:
        model.train(was_training)


def _gpt_feeder(model: nn.Module, use_cache: bool) -> Callable[[list[int]], torch.Tensor]:
    """Feed new tokens, return the next-token logits: prefill, then one token at a time via the cache.

    Once the context is full the cache cannot slide (positions are absolute), so every later step
    recomputes over the last context_len tokens.
    """
    ctx = model.config.context_len
    device = next(model.parameters()).device
    window: list[int] = []
    cache = model.new_kv_cache(1) if use_cache else None

    def feed(new: list[int]) -> torch.Tensor:
        nonlocal window, cache
        new = new[-ctx:]
        window = (window + new)[-ctx:]
        if cache is not None and cache.pos + len(new) <= ctx:
            return model(torch.tensor([new], device=device), cache)[0, -1]
        cache = None
        return model(torch.tensor([window], device=device))[0, -1]

    return feed


def _rnn_feeder(model: nn.Module) -> Callable[[list[int]], torch.Tensor]:
    device = next(model.parameters()).device
    state = model.init_state(1, device)

    def feed(new: list[int]) -> torch.Tensor:
        nonlocal state
        logits, state = model(torch.tensor([new], device=device), state)
        return logits[0, -1]

    return feed


def generate_ids(model: nn.Module, ids: list[int], max_new_tokens: int = 100, temperature: float = 1.0,
                 top_k: int = 0, top_p: float = 1.0, repetition_penalty: float = 1.0, greedy: bool = False,
                 seed: int | None = None, eot_id: int | None = None, use_cache: bool = True) -> list[int]:
    """The new token ids after `ids` (the end-of-text token itself is not included)."""
    return list(iter_ids(model, ids, max_new_tokens, temperature, top_k, top_p, repetition_penalty, greedy,
                         seed, eot_id, use_cache))


def _emittable(text: str, stop: list[str]) -> int:
    """Length of `text` safe to show now: hold back an unfinished UTF-8 character (decoded as U+FFFD)
    and any ending that could still grow into a stop string."""
    safe = len(text.rstrip("\ufffd"))
    for s in stop:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                safe = min(safe, len(text) - k)
                break
    return safe


class TextStream:
    """The text of generated tokens, released as it becomes safe to show.

    `push(token)` returns the new piece (often ""): decoding the whole sequence keeps word joins
    (WordPiece "##", leading spaces) right, an unfinished UTF-8 character and any ending that could
    still grow into a stop string are held back. At the first stop string `stopped` turns True and the
    text ends before it; `flush()` returns what was held back. The pieces join to exactly `text`.
    """

    def __init__(self, tokenizer, prompt_ids: list[int], stop: list[str] | tuple[str, ...] = ()):
        self.tokenizer, self.prompt_ids = tokenizer, list(prompt_ids)
        self.prefix = tokenizer.decode(self.prompt_ids)
        self.stop = [s for s in stop if s]
        self.new: list[int] = []
        self.text, self.shown, self.stopped = "", 0, False

    def push(self, token: int) -> str:
        self.new.append(token)
        full = self.tokenizer.decode(self.prompt_ids + self.new)
        text = full[len(self.prefix):] if full.startswith(self.prefix) else self.tokenizer.decode(self.new)
        hits = [i for i in (text.find(s) for s in self.stop) if i >= 0]
        if hits:
            self.text, self.stopped = text[:min(hits)], True
            return self.flush()
        self.text = text
        safe = _emittable(text, self.stop)
        if safe <= self.shown:
            return ""
        piece, self.shown = text[self.shown:safe], safe
        return piece

    def flush(self) -> str:
        piece, self.shown = self.text[self.shown:], max(self.shown, len(self.text))
        return piece


def generate(model: nn.Module, tokenizer, prompt: str | list[int], max_new_tokens: int = 100,
             temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, repetition_penalty: float = 1.0,
             greedy: bool = False, seed: int | None = None, stop: list[str] | None = None,
             stop_at_eot: bool = True, stream: Callable[[str], None] | None = None) -> str:
    """The continuation of `prompt` as text; `stream` receives it piece by piece as it is made.

    Generation ends after `max_new_tokens`, at the end-of-text token (`stop_at_eot`), or at the first
    `stop` string (which is cut off, like everything after it). The pieces given to `stream` join to
    exactly the returned text.
    """
    ids = tokenizer.encode(prompt) if isinstance(prompt, str) else [int(i) for i in prompt]
    ids = ids or [tokenizer.eot_id]  # an empty prompt starts a fresh document
    text = TextStream(tokenizer, ids, stop or [])
    eot_id = tokenizer.eot_id if stop_at_eot else None
    for tok in iter_ids(model, ids, max_new_tokens, temperature, top_k, top_p, repetition_penalty, greedy,
                        seed, eot_id):
        piece = text.push(tok)
        if stream is not None and piece:
            stream(piece)
        if text.stopped:
            break
    rest = text.flush()
    if stream is not None and rest:
        stream(rest)
    return text.text


def fill_mask(model: nn.Module, tokenizer, text: str, top_k: int = 5) -> list[list[tuple[str, float]]]:
    """For each mask token in `text`, the `top_k` most likely tokens and their probabilities."""
    if getattr(model, "pretraining_task", None) != "masked_lm":
        raise LmforgeError(f"fill-mask needs a masked language model (bert), this one is "
                           f"{type(model).__name__}: use generate for gpt and rnn")
    if top_k < 1:
        raise LmforgeError(f"fill-mask setting 'top_k' must be >= 1, got {top_k}")
    mask = tokenizer.id_to_piece(tokenizer.mask_id)
    if mask not in text:
        raise LmforgeError(f"the text has no {mask} token: add {mask} where a word should be predicted")
    ids = [tokenizer.cls_id, *tokenizer.encode(text), tokenizer.sep_id]
    positions = [i for i, t in enumerate(ids) if t == tokenizer.mask_id]
    if not positions:
        raise LmforgeError(f"the tokenizer did not read {mask} as the mask token: write it exactly, "
                           "with spaces around it")
    ctx = model.config.context_len
    if len(ids) > ctx:
        raise LmforgeError(f"the text is {len(ids)} tokens, the model reads at most {ctx}: shorten it")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            logits = model(torch.tensor([ids], device=device))[0, positions]  # (M, V)
    finally:
        model.train(was_training)
    probs, top = torch.softmax(logits.float(), dim=-1).topk(min(top_k, logits.size(-1)), dim=-1)  # (M, k)
    return [[(_piece_text(tokenizer, int(i)), float(p)) for i, p in zip(row_ids, row_probs)]
            for row_ids, row_probs in zip(top.tolist(), probs.tolist())]


def _piece_text(tokenizer, i: int) -> str:
    return tokenizer.decode([i]).strip() or tokenizer.id_to_piece(i)

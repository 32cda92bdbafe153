"""Exposure of canaries (Carlini et al. 2019, "The Secret Sharer"): how much more likely a model finds a
canary's secret than the other secrets of its shape.

exposure = log2 |R| - log2 rank, where R (the candidate space) holds every secret of the canary's shape and
rank is the canary's place when R is sorted by the model's loss on the whole canary line (1: the model's
favourite). 0 bits: the model prefers the canary to no more candidates than chance; log2 |R|: to all.

When |R| is at most `candidates`, every candidate is scored (method "exact"). Otherwise S = `candidates`
secrets are drawn uniformly (method "sampled") and rank ~ 1 + (|R| - 1) m / S, m of them having a lower
loss: the paper's sampling estimate. It cannot resolve more than about log2 S bits; when m = 0 it is a
lower bound (`lower_bound`), so the paper's extrapolation is given beside it (`exposure_fit`): a
skew-normal fitted to the S losses by the method of moments, exposure ~ -log2 CDF(canary's loss).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np


def secrets(indices: np.ndarray, digits: int, alphabet: str, separator: str) -> list[str]:
    """Candidate secrets by index in [0, |alphabet|^digits): index 0 is all first letters."""
    base = len(alphabet)
    place = base ** np.arange(digits - 1, -1, -1, dtype=np.int64)  # (D,)
    codes = (np.asarray(indices, dtype=np.int64)[:, None] // place) % base  # (N, D)
    return [separator.join(alphabet[c] for c in row) for row in codes]


def secret_index(secret: str, alphabet: str, separator: str) -> int:
    index = 0
    for ch in secret.split(separator):
        index = index * len(alphabet) + alphabet.index(ch)
    return index


def exposure_of(p_lower: float, space: int) -> float:
    """log2 |R| - log2 rank for rank = 1 + (|R| - 1) * p_lower."""
    return math.log2(space) - math.log2(1 + (space - 1) * p_lower)


def skewnorm_cdf(samples: np.ndarray, x: float) -> float:
    """P(X <= x) under a skew-normal fitted to `samples` by the method of moments."""
    import torch

    mean, std = float(samples.mean()), float(samples.std())
    if std == 0:
        return float(x >= mean)
    g = float(np.clip(((samples - mean) ** 3).mean() / std ** 3, -0.99, 0.99))  # a skew-normal's skew < 0.9953
    r = abs(g) ** (2 / 3)
    delta = math.copysign(math.sqrt(math.pi / 2 * r / (r + ((4 - math.pi) / 2) ** (2 / 3))), g)
    alpha = delta / math.sqrt(1 - delta ** 2)
    omega = std / math.sqrt(1 - 2 * delta ** 2 / math.pi)
    z = (x - (mean - omega * delta * math.sqrt(2 / math.pi))) / omega
    # the density 2 phi(u) Phi(alpha u), integrated in log space: far tails stay accurate
    u = torch.linspace(z - 12, z, 4001, dtype=torch.float64)
    log_f = math.log(2) - u ** 2 / 2 - 0.5 * math.log(2 * math.pi) + torch.special.log_ndtr(alpha * u)
    return float(torch.exp(torch.logsumexp(log_f, 0) + math.log(12 / 4000)))


def canary_exposure(score: Callable[[list[str]], np.ndarray], canary: dict, record: dict, candidates: int,
                    rng: np.random.Generator) -> dict:
    """One canary's exposure; `score(texts)` gives the model's loss on each text."""
    space, alphabet, sep = record["space"], record["alphabet"], record["separator"]
    own = secret_index(canary["secret"], alphabet, sep)
    loss = float(score([canary["text"]])[0])
    exact = space <= candidates + 1
    if exact:
        others = np.delete(np.arange(space), own)
    else:  # uniform over the other secrets
        others = rng.integers(0, space - 1, size=candidates)
        others += others >= own
    texts = [canary["prefix"] + s + canary["suffix"] for s in secrets(others, record["digits"], alphabet, sep)]
    losses = score(texts)
    lower = int((losses < loss).sum())
    out = {"name": canary["name"], "text": canary["text"], "repetitions": canary["repetitions"],
           "in_train": canary["in_train"], "loss": round(loss, 4)}
    if exact:
        return {**out, "rank": lower + 1, "exposure": round(exposure_of(lower / (space - 1), space), 3)}
    p_fit = skewnorm_cdf(losses, loss)
    return {**out, "rank": round(1 + (space - 1) * lower / len(losses), 1), "beaten_by": lower,
            "exposure": round(exposure_of(max(lower, 1) / len(losses), space), 3), "lower_bound": lower == 0,
            "exposure_fit": round(exposure_of(p_fit, space), 3)}


def by_repetitions(rows: list[dict]) -> list[dict]:
    """Mean exposure of the canaries asked for each repetition count."""
    out = []
    for reps in sorted({r["repetitions"] for r in rows}):
        group = [r for r in rows if r["repetitions"] == reps]
        row = {"repetitions": reps, "in_train": sorted({r["in_train"] for r in group}), "canaries": len(group),
               "exposure": round(float(np.mean([r["exposure"] for r in group])), 3),
               "lower_bound": any(r.get("lower_bound") for r in group)}
        if "exposure_fit" in group[0]:
            row["exposure_fit"] = round(float(np.mean([r["exposure_fit"] for r in group])), 3)
        out.append(row)
    return out


def exposure_report(model, tokenizer, record: dict, candidates: int = 10_000, per_count: int = 0, seed: int = 0,
                    batch_size: int = 256) -> dict:
    """Exposure of the canaries of a canaries.json `record` (the first `per_count` of each count; 0: all)."""
    from lmforge.probe_lm import sequence_losses

    def score(texts: list[str]) -> np.ndarray:
        seqs = [[tokenizer.eot_id, *ids] for ids in tokenizer.encode_batch(texts)]
        return sequence_losses(model, seqs, batch_size)

    chosen, seen = [], {}
    for c in record["canaries"]:
        seen[c["repetitions"]] = seen.get(c["repetitions"], 0) + 1
        if not per_count or seen[c["repetitions"]] <= per_count:
            chosen.append(c)
    rng = np.random.default_rng(seed)
    rows = [canary_exposure(score, c, record, candidates, rng) for c in chosen]
    space = record["space"]
    return {"space": space, "max_exposure": round(math.log2(space), 3),
            "method": "exact" if space <= candidates + 1 else "sampled",
            "candidates": min(candidates, space - 1), "template": record["template"], "hosts": record["hosts"],
            "canaries": rows, "by_repetitions": by_repetitions(rows)}

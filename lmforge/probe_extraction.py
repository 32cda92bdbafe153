"""Extraction and membership: does the model give back its training text, and can its loss tell training
documents from held-out ones?

Extraction (Carlini et al. 2021, 2023): a training window of K + M tokens is *extractable* when the
greedy continuation of its first K tokens is exactly its last M. Windows are grouped by how many times
they occur in the train split: every window of K + M tokens is hashed (random 64-bit multipliers per
position, summed mod 2^64) and counted, since the corpus build's dedup keeps no counts. Up to `windows`
distinct windows are drawn from each occurrence bucket; `extractable` over all weighs each bucket by its
share of the split's windows.

Membership: the mean loss of `documents` training and held-out documents (their first context_len
tokens), and the ROC AUC of the loss-threshold attack ("a member when the loss is below t"):
P(loss_train < loss_val) + P(equal) / 2, the Mann-Whitney U statistic over n_train * n_val.
"""

from __future__ import annotations

import numpy as np

BUCKETS = ((1, 1), (2, 4), (5, 19), (20, None))
"""Occurrence counts of a window, grouped (low, high; None: no upper end)."""


def count_windows(tokens: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
    """Each distinct window of `length` tokens as (its first start, how many times it occurs)."""
    n = len(tokens) - length + 1
    if n <= 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    mult = np.random.default_rng(0).integers(0, 1 << 63, size=length, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    t = tokens.astype(np.uint64)
    h = np.zeros(n, dtype=np.uint64)
    for j in range(length):
        h += t[j:j + n] * mult[j]  # wraps mod 2^64 on purpose
    _, first, counts = np.unique(h, return_index=True, return_counts=True)
    return first.astype(np.int64), counts.astype(np.int64)


def _label(low: int, high: int | None) -> str:
    return str(low) if low == high else f"{low}+" if high is None else f"{low}-{high}"


def extraction_report(model, src, prompt_tokens: int, continuation_tokens: int, windows: int,
                      max_tokens: int, seed: int = 0, batch_size: int = 64) -> dict:
    """k-extractable training windows of a token source (`num_tokens`, `tokens`), by occurrence bucket."""
    from lmforge.probe_lm import greedy

    length = prompt_tokens + continuation_tokens
    counted = min(src.num_tokens, max_tokens)
    first, counts = count_windows(src.tokens(0, counted), length)
    rng = np.random.default_rng(seed)
    rows, total = [], max(int(counts.sum()), 1)
    for low, high in BUCKETS:
        inside = (counts >= low) & (counts <= (high or np.inf))
        if not inside.any():
            continue
        pick = rng.choice(np.nonzero(inside)[0], size=min(windows, int(inside.sum())), replace=False)
        seqs = np.stack([src.tokens(int(s), int(s) + length) for s in first[pick]])  # (N, K + M)
        out = greedy(model, seqs[:, :prompt_tokens], continuation_tokens, batch_size)
        same = out == seqs[:, prompt_tokens:]  # (N, M)
        rows.append({"occurrences": _label(low, high), "distinct_windows": int(inside.sum()),
                     "share": round(int(counts[inside].sum()) / total, 6), "sampled": len(pick),
                     "extractable": round(float(same.all(1).mean()), 4),
                     "token_accuracy": round(float(same.mean()), 4)})
    overall = sum(r["share"] * r["extractable"] for r in rows)
    return {"prompt_tokens": prompt_tokens, "continuation_tokens": continuation_tokens,
            "counted_tokens": counted, "extractable": round(overall, 4), "by_occurrences": rows}


def auc(members: np.ndarray, others: np.ndarray) -> float:
    """P(member loss < other loss) + P(equal) / 2, from average ranks (Mann-Whitney U)."""
    x = np.concatenate([members, others])
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    first_rank = np.cumsum(counts) - counts + 1  # rank of each distinct value's first copy, ascending
    ranks = (first_rank + (counts - 1) / 2)[inverse]  # ties share their average rank
    n1, n2 = len(members), len(others)
    u_members_higher = ranks[:n1].sum() - n1 * (n1 + 1) / 2  # pairs where the member's loss is larger
    return float(1 - u_members_higher / (n1 * n2))


def doc_losses(model, src, documents: int, context: int, eot_id: int, rng: np.random.Generator,
               batch_size: int = 64) -> np.ndarray:
    """Mean loss of up to `documents` random documents of a split, each read from its start (after eot)."""
    from lmforge.probe_lm import sequence_losses

    starts = src.doc_offsets()
    lengths = np.diff(starts)
    ok = np.nonzero(lengths >= 2)[0]
    pick = np.sort(rng.choice(ok, size=min(documents, len(ok)), replace=False))
    seqs = [[eot_id, *src.tokens(int(starts[d]), int(starts[d] + min(lengths[d], context - 1))).tolist()]
            for d in pick]
    return sequence_losses(model, seqs, batch_size, mean=True)


def membership_report(model, train, val, documents: int, context: int, eot_id: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    a = doc_losses(model, train, documents, context, eot_id, rng)
    b = doc_losses(model, val, documents, context, eot_id, rng)
    return {"train_documents": len(a), "val_documents": len(b), "train_loss": round(float(a.mean()), 4),
            "val_loss": round(float(b.mean()), 4), "auc": round(auc(a, b), 4)}

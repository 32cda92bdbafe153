"""PII regeneration: of what `scrub_pii` would have removed from the training text (emails, IP addresses,
phone numbers; corpus/pii.py), how much does the model write back verbatim when prompted with what
precedes it?

Meant for a corpus built with `corpus.scrub_pii = false` (a scrubbed one has nothing left to find).
Occurrences are found with the scrubber's own patterns and checks, in its order, so they are exactly what
it would replace. Up to `limit` are drawn (reservoir, seeded); each is prompted with the K training
tokens before the token where it starts (read from the shards: what the model trained on) and counts as
regenerated when the greedy continuation reproduces the text from that token to its end.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np

from lmforge.corpus import pii
from lmforge.errors import LmforgeError

_CHECKS = (("email", pii.EMAIL, None), ("ip", pii.IPV4, pii._ipv4), ("ip", pii.IPV6, pii._ipv6),
           ("phone", pii.PHONE, pii._phone))


def pii_spans(text: str) -> list[tuple[str, int, int]]:
    """(kind, start, end) of each occurrence `ScrubPii` replaces. Each pass sees the earlier ones masked
    by a same-length "<xx..x>", as the scrubber's later passes see its "<EMAIL>" placeholders."""
    spans = []
    for kind, pattern, check in _CHECKS:
        found = [m.span() for m in pattern.finditer(text) if check is None or check(m) != m.group()]
        for a, b in found:
            text = text[:a] + "<" + "x" * (b - a - 2) + ">" + text[b:]
        spans += [(kind, a, b) for a, b in found]
    return sorted(spans, key=lambda s: s[1])


def _draw(corpus_dir: Path, limit: int, seed: int) -> tuple[dict[str, int], list[tuple]]:
    """Counts by kind over the train split, and up to `limit` (doc, kind, start, end, text) drawn uniformly."""
    from lmforge.corpus import iter_corpus

    rng, found, chosen, n = random.Random(seed), {}, [], 0
    for d, text in enumerate(iter_corpus(corpus_dir, "train")):
        for kind, a, b in pii_spans(text):
            found[kind] = found.get(kind, 0) + 1
            if len(chosen) < limit:
                chosen.append((d, kind, a, b, text))
            elif (j := rng.randrange(n + 1)) < limit:
                chosen[j] = (d, kind, a, b, text)
            n += 1
    return found, chosen


def pii_report(model, tokenizer, corpus_dir: Path, src, prompt_tokens: int, limit: int, context: int,
               seed: int = 0, batch_size: int = 64) -> dict:
    """Regenerated share of the PII in a corpus's train split (`src`: its train shards). Prompts are cut
    to fit the model's `context` with the longest occurrence after them."""
    from lmforge.probe_lm import greedy

    found, chosen = _draw(corpus_dir, limit, seed)
    starts = src.doc_offsets()
    prompts, targets, expected, kinds = [], [], [], []
    for d, kind, a, b, text in chosen:
        ids, offsets = tokenizer.encode_offsets([text])[0]
        if ids != src.tokens(int(starts[d]), int(starts[d + 1]) - 1).tolist():
            raise LmforgeError(f"{corpus_dir}: train document {d} is not what the shards hold there: pass the "
                               "--corpus the shards were built from")
        t0 = next(i for i, (_, e) in enumerate(offsets) if e > a)
        t1 = max(i for i, (s, _) in enumerate(offsets) if s < b)
        at = int(starts[d]) + t0
        prompt = src.tokens(max(0, at - prompt_tokens), at).tolist()
        prompts.append([tokenizer.eot_id] * (prompt_tokens - len(prompt)) + prompt)
        targets.append(t1 + 1 - t0)
        expected.append(text[offsets[t0][0]:b])
        kinds.append(kind)
    by_kind = {k: {"found": n, "probed": 0, "regenerated": 0} for k, n in sorted(found.items())}
    keep = prompt_tokens
    if chosen:
        steps = max(targets) + 2
        keep = min(prompt_tokens, context - steps)
        if keep < 1:
            raise LmforgeError(f"a PII occurrence of {steps - 2} tokens leaves no room for a prompt in the model's "
                               f"context ({context}): probe without pii (--parts)")
        out = greedy(model, np.array(prompts)[:, prompt_tokens - keep:], steps, batch_size)
        for row, n, want, kind in zip(out, targets, expected, kinds):
            by_kind[kind]["probed"] += 1
            by_kind[kind]["regenerated"] += tokenizer.decode(row[:n + 2]).startswith(want)
    regenerated = sum(v["regenerated"] for v in by_kind.values())
    return {"prompt_tokens": keep, "found": sum(found.values()), "probed": len(chosen), "regenerated": regenerated,
            "fraction": round(regenerated / len(chosen), 4) if chosen else None, "by_kind": by_kind}

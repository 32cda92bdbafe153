#!/usr/bin/env python
"""How well an ELECTRA run's discriminator spots replaced tokens: ROC AUC of its logits on validation
batches (the run's own masking and the fixed validation seed), over every real token and over the masked
positions only, with the share replaced. Accuracy alone hides learning while the discriminator is never
confident enough to say "replaced" (it then sits at the prior).

    python bench/electra_detection.py bench/_work/pays/electra --data bench/_work/pays/general
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from lmforge.data.mlm import VAL_MASK_SEED, ReplacementBatches, SpecialTokens
from lmforge.data.shards import TokenShards
from lmforge.tasks import load_run


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC by ranks (Mann-Whitney U), ties averaged."""
    order = scores.argsort(kind="stable")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    i = 0
    while i < len(scores):  # average the ranks of tied scores
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    pos = labels.astype(bool)
    n_pos, n_neg = pos.sum(), (~pos).sum()
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


@torch.no_grad()
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path, help="an ELECTRA run folder")
    p.add_argument("--data", type=Path, required=True, help="shards folder with a val split")
    p.add_argument("--batches", type=int, default=10, help="validation batches of 32 (default 10)")
    a = p.parse_args(argv)
    run = load_run(a.run)
    model, cfg = run.model.eval(), run.config
    shards = TokenShards.open(a.data, "val", expect_fingerprint=run.tokenizer.fingerprint)
    val = ReplacementBatches(shards, SpecialTokens.from_tokenizer(run.tokenizer), cfg.seq_len(), 32, VAL_MASK_SEED,
                             cfg.mlm, shuffle=False)
    every, masked = ([], []), ([], [])
    for b in val.eval_batches(32, a.batches):
        positions = b["mlm_positions"]
        targets = b["labels"].gather(1, positions)
        _, logits, replaced = model(b["input_ids"], b["attention_mask"], positions=positions, targets=targets,
                                    uniforms=b["replace_uniforms"])
        real, valid = b["attention_mask"].bool(), targets >= 0
        every[0].append(replaced[real].numpy())
        every[1].append(logits[real].numpy())
        masked[0].append(replaced.gather(1, positions)[valid].numpy())
        masked[1].append(logits.gather(1, positions)[valid].numpy())
    for what, (y, s) in (("real tokens", every), ("masked positions", masked)):
        y, s = np.concatenate(y), np.concatenate(s)
        print(f"{what}: {len(y)}, replaced {y.mean():.4f}, AUC {auc(y, s):.4f}, "
              f"accuracy {((s > 0) == y).mean():.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""One masked-LM validation for runs pretrained with different masking or packing.

Each run's own validation uses its own settings (a 25% masking rate is a harder test than 15%; packing
across documents puts more tokens in a sequence), so their losses do not compare. This script scores
every run on the same batches: BERT's masking (15% of the tokens; 80% [MASK], 10% random, 10% kept),
one document per sequence, the fixed validation seed, the first --batches batches of 32 x --seq-len of
the shards' val split. Runs must share the shards' tokenizer. ELECTRA runs are scored by their
generator (its MLM), the only part that predicts tokens.

    python bench/mlm_val.py --data bench/_work/pays/general bench/_work/pays/{mlm,mlm-half,cram2}

Prints one row per run: the masked-LM loss, perplexity and accuracy over the masked tokens.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

from lmforge.data.mlm import VAL_MASK_SEED, MaskedLMBatches, MaskingConfig, SpecialTokens
from lmforge.data.shards import TokenShards
from lmforge.objectives import masked_lm_loss, replaced_token_detection_loss
from lmforge.tasks import load_run


@torch.no_grad()
def score(run_dir: Path, data: Path, batches: int, seq_len: int) -> dict[str, float]:
    run = load_run(run_dir)
    model = run.model.eval()
    shards = TokenShards.open(data, "val", expect_fingerprint=run.tokenizer.fingerprint)
    val = MaskedLMBatches(shards, SpecialTokens.from_tokenizer(run.tokenizer), seq_len, 32, VAL_MASK_SEED,
                          MaskingConfig(), shuffle=False)
    loss = correct = targets = 0.0
    for batch in val.eval_batches(32, batches):
        if run.config.model.kind == "electra":  # the generator's MLM (uniforms only pick its samples)
            batch["replace_uniforms"] = torch.zeros(batch["mlm_positions"].shape)
            _, _, extras = replaced_token_detection_loss(model, batch, 1.0, 0.15)
            s, n = extras["gen_loss"], (batch["labels"] >= 0).sum()
        else:
            s, n, extras = masked_lm_loss(model, batch)
        loss, correct, targets = loss + float(s), correct + float(extras["correct"]), targets + float(n)
    return {"loss": loss / targets, "perplexity": math.exp(loss / targets), "accuracy": correct / targets,
            "targets": int(targets)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path, help="run folders (masked LM or ELECTRA)")
    p.add_argument("--data", type=Path, required=True, help="shards folder with a val split")
    p.add_argument("--batches", type=int, default=40, help="validation batches of 32 (default 40)")
    p.add_argument("--seq-len", type=int, default=128, help="tokens per sequence (default 128)")
    a = p.parse_args(argv)
    print("run\tmlm_loss\tperplexity\taccuracy\ttargets")
    for run_dir in a.runs:
        m = score(run_dir, a.data, a.batches, a.seq_len)
        print(f"{run_dir.name}\t{m['loss']:.4f}\t{m['perplexity']:.1f}\t{m['accuracy']:.4f}\t{m['targets']}",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

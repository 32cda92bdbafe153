"""Masked-LM training throughput: lmforge's BERT against `transformers.BertForMaskedLM`, on CPU.

Both models get the same architecture (BERT-mini: 4 layers x 256 wide x 4 heads, d_ff 1024, vocabulary
30,522, dropout 0.1), the same initial weights (lmforge's, copied into the HF model through the export
key map), the same masked batches (lmforge's MaskedLMBatches over a synthetic Zipf-distributed token
stream, generated once before timing), AdamW (fused: the `transformers.Trainer` default since torch 2.8)
with gradient clipping at 1.0, fp32, and the same number of threads, in one process (CPU by default,
`--device cuda` on a GPU).

Variants are timed interleaved (A B C A B C ...) so a busy machine slows them alike; each round runs
`--warmup` untimed steps and then `--steps` timed steps per variant. The report gives the median
tokens/s of each variant and the per-round ratio to HF.

- `hf`: BertForMaskedLM(input_ids, attention_mask, labels), its mean loss, backward, clip, step.
- `lmforge`: lmforge's `masked_lm_loss` (head at the masked positions only), `build_optimizer`.
- `lmforge-full`: the same with the MLM head over every position (the batch without `mlm_positions`),
  to measure that lever alone.

    python bench/bench_mlm.py --rounds 3 --steps 5
    python bench/bench_mlm.py --variants hf,lmforge --padding   # documents of uneven length, padded
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch

from lmforge.data.mlm import MaskedLMBatches, MaskingConfig, SpecialTokens
from lmforge.models import BertConfig, build_model
from lmforge.objectives import masked_lm_loss
from lmforge.optim import OptimConfig, build_optimizer

SPECIALS = SpecialTokens(cls_id=2, sep_id=3, pad_id=0, mask_id=4, eot_id=1, vocab_size=30522,
                         special_ids=frozenset(range(5)))


class SyntheticDocs:
    """A token stream of documents with Zipf-like token frequencies (each document ends with id 1)."""

    def __init__(self, n_tokens: int, vocab: int, padding: bool, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        ranks = np.minimum(rng.zipf(1.2, n_tokens), vocab - 6)
        self.stream = (ranks + 4).astype(np.int64)
        # full-length documents unless asked for uneven ones (then most sequences carry padding)
        lengths = rng.integers(20, 127, n_tokens // 20) if padding else np.full(n_tokens // 127, 127)
        ends = np.cumsum(lengths)
        ends = ends[ends <= n_tokens]
        self.stream[ends - 1] = 1
        self.offsets = np.concatenate([[0], ends])
        self.num_tokens = int(ends[-1])

    def tokens(self, start: int, stop: int) -> np.ndarray:
        return self.stream[start:stop]

    def doc_offsets(self) -> np.ndarray:
        return self.offsets


def make_batches(args: argparse.Namespace) -> list[dict[str, torch.Tensor]]:
    n = args.warmup + args.steps
    docs = SyntheticDocs(args.batch * args.seq_len * (n + 2), SPECIALS.vocab_size, args.padding)
    loader = MaskedLMBatches(docs, SPECIALS, args.seq_len, args.batch, seed=0, masking=MaskingConfig())
    return [loader.get(step) for step in range(n)]


def bert_config(args: argparse.Namespace) -> BertConfig:
    return BertConfig(vocab_size=SPECIALS.vocab_size, context_len=args.seq_len, n_layer=args.n_layer,
                      n_head=args.n_head, d_model=args.d_model, d_ff=4 * args.d_model)


def hf_model(ours: torch.nn.Module, cfg: BertConfig) -> torch.nn.Module:
    from transformers import BertConfig as HFBertConfig
    from transformers import BertForMaskedLM

    from lmforge.interop.hf import FAMILIES, SpecialIds, to_hf_config, to_hf_state

    ids = SpecialIds(bos=SPECIALS.cls_id, eos=SPECIALS.sep_id, pad=SPECIALS.pad_id)
    hf_cfg = to_hf_config(cfg, FAMILIES["bert"], ids)
    hf_cfg = {k: v for k, v in hf_cfg.items() if k not in ("architectures", "model_type", "dtype")}
    model = BertForMaskedLM(HFBertConfig(**hf_cfg, attn_implementation="sdpa"))
    state = {k: v for k, v in to_hf_state(ours.state_dict(), cfg, FAMILIES["bert"]).items() if "pooler" not in k}
    missing, unexpected = model.load_state_dict(state, strict=False)
    # the decoder is tied to the word embeddings and its bias to cls.predictions.bias
    assert not unexpected and all(k.startswith("cls.predictions.decoder.") for k in missing), missing
    return model


class Trainer:
    """One variant: a model, its optimizer and a step function over host batches."""

    def __init__(self, name: str, cfg: BertConfig, init: dict[str, torch.Tensor], device: torch.device) -> None:
        self.name = name
        ours = build_model(cfg)
        ours.load_state_dict(init)
        if name == "hf":
            self.model = hf_model(ours, cfg).to(device)
            decay = [p for n, p in self.model.named_parameters() if p.ndim >= 2]
            rest = [p for n, p in self.model.named_parameters() if p.ndim < 2]
            groups = [{"params": decay, "weight_decay": 0.01}, {"params": rest, "weight_decay": 0.0}]
            self.optimizer = torch.optim.AdamW(groups, lr=1e-4, eps=1e-6, fused=True)
        else:
            self.model = ours.to(device)
            self.optimizer = build_optimizer(ours, OptimConfig(lr=1e-4, weight_decay=0.01, eps=1e-6), device.type)
        self.model.train()

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.name == "hf":
            return self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                              labels=batch["labels"]).loss
        if self.name == "lmforge-full":
            batch = {k: batch[k] for k in ("input_ids", "attention_mask", "labels")
                     if batch.get(k) is not None}
            if "attention_mask" not in batch:
                batch["attention_mask"] = torch.ones_like(batch["input_ids"])
        loss_sum, n_targets, _ = masked_lm_loss(self.model, batch)
        return loss_sum / n_targets

    def step(self, batch: dict[str, torch.Tensor]) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()


def check_same_loss(trainers: list[Trainer], batch: dict[str, torch.Tensor]) -> dict[str, float]:
    """Loss of the first batch in eval mode (no dropout): the variants compute the same function."""
    out = {}
    for t in trainers:
        t.model.eval()
        with torch.no_grad():
            out[t.name] = t.loss(batch).item()
        t.model.train()
    first = next(iter(out.values()))
    assert all(abs(v - first) < 1e-4 for v in out.values()), out
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--variants", default="hf,lmforge,lmforge-full")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=5, help="timed steps per variant per round")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--n-layer", type=int, default=4)
    p.add_argument("--n-head", type=int, default=4)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--padding", action="store_true", help="uneven documents: most sequences padded")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = bert_config(args)
    init = build_model(cfg).state_dict()
    device = torch.device(args.device)
    batches = [{k: v.to(device) for k, v in b.items()} for b in make_batches(args)]
    trainers = [Trainer(name, cfg, init, device) for name in args.variants.split(",")]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    print(f"threads={args.threads} batch={args.batch} seq_len={args.seq_len} layers={args.n_layer} "
          f"d_model={args.d_model} heads={args.n_head} vocab={cfg.vocab_size} padding={args.padding}")
    print("first-batch loss (eval mode):", check_same_loss(trainers, batches[0]))
    tokens = args.batch * args.seq_len
    rates: dict[str, list[float]] = {t.name: [] for t in trainers}
    for r in range(args.rounds):
        for t in trainers:
            for batch in batches[:args.warmup]:
                t.step(batch)
            sync()
            start = time.perf_counter()
            for batch in batches[args.warmup:]:
                t.step(batch)
            sync()
            rates[t.name].append(tokens * args.steps / (time.perf_counter() - start))
        print(f"round {r}: " + "  ".join(f"{k} {v[-1]:,.0f} tok/s" for k, v in rates.items()), flush=True)
    base = rates.get("hf")
    result = {"args": vars(args), "tokens_per_s": rates}
    for name, v in rates.items():
        line = f"{name:>14}: median {statistics.median(v):>9,.0f} tokens/s"
        if base is not None and name != "hf":
            ratios = [a / b for a, b in zip(v, base)]
            result[f"{name}/hf"] = ratios
            line += f"   x{statistics.median(ratios):.2f} of hf (per round: {', '.join(f'{x:.2f}' for x in ratios)})"
        print(line)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()

"""Span corruption: the example layout, its statistics over many draws, and batches that are pure
functions of (seed, step)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lmforge.data.loaders import ArrayTokens
from lmforge.data.span import IGNORE_INDEX, SpanConfig, SpanCorruptionBatches, corrupt, lengths, raw_length
from lmforge.errors import LmforgeError

SENTINELS = list(range(999, 899, -1))  # <extra_id_0> is the highest id, as T5 has it
EOS, PAD = 1, 0


def _spans(inputs: list[int], targets: list[int]) -> tuple[list[int], list[int]]:
    """(lengths of the corrupted spans, lengths of the kept runs) read back from one example."""
    noise, kept, run = [], [], 0
    for t in targets[:-1]:
        if t in SENTINELS:
            noise.append(0)
        else:
            noise[-1] += 1
    for t in inputs[:-1]:
        if t in SENTINELS:
            kept.append(run)
            run = 0
        else:
            run += 1
    return noise, kept


def test_inputs_and_targets_rebuild_the_original_run():
    rng = np.random.default_rng(0)
    tokens = np.arange(10, 124)
    inputs, targets = corrupt(tokens, rng, SpanConfig(), SENTINELS, EOS)
    assert inputs[-1] == EOS and targets[-1] == EOS
    # replace each sentinel of the inputs by what follows it in the targets
    fills, current = {}, None
    for t in targets[:-1]:
        if t in SENTINELS:
            current = t
            fills[t] = []
        else:
            fills[current].append(t)
    rebuilt = [x for t in inputs[:-1] for x in (fills[t] if t in SENTINELS else [t])]
    assert rebuilt == tokens.tolist()
    used = [t for t in inputs if t in SENTINELS]
    assert used == SENTINELS[:len(used)]  # in order, starting from <extra_id_0>


def test_noise_density_and_mean_span_length_over_many_draws():
    cfg = SpanConfig(noise_density=0.15, mean_span=3.0)
    rng = np.random.default_rng(1)
    noise_lengths, kept_total, noise_total = [], 0, 0
    for _ in range(400):
        inputs, targets = corrupt(np.arange(10, 10 + 240), rng, cfg, SENTINELS, EOS)
        noise, kept = _spans(inputs, targets)
        assert min(noise) >= 1 and min(kept) >= 1  # every span and every kept run holds a token
        noise_lengths += noise
        noise_total += sum(noise)
        kept_total += len(inputs) - 1 - len(noise)  # inputs: kept tokens, one sentinel per span, eos
    assert abs(noise_total / (noise_total + kept_total) - 0.15) < 0.005
    assert abs(np.mean(noise_lengths) - 3.0) < 0.1
    assert np.std(noise_lengths) > 0.5  # lengths vary: a random partition, not fixed spans


def test_inputs_fill_the_input_length_exactly():
    cfg = SpanConfig()
    for input_len in (32, 64, 128, 512):
        raw = raw_length(input_len, cfg)
        assert lengths(raw, cfg)[2][0] == input_len or lengths(raw + 1, cfg)[2][0] > input_len
        assert lengths(raw, cfg)[2][0] <= input_len


def _batches(seed=3, **kw):
    data = ArrayTokens((np.arange(20_000) * 13) % 800 + 2)
    return SpanCorruptionBatches(data, 64, 8, seed, SpanConfig(), SENTINELS, EOS, PAD, **kw)


def test_batches_are_pure_in_the_step_and_split_into_micro_batches():
    a, b = _batches(), _batches()
    first = a.get(5)
    assert all(torch.equal(first[k], b.get(5)[k]) for k in first)  # asked fresh: the same batch
    halves = [a.get(5, micro=m, micro_batch=4) for m in range(2)]
    ranks = [a.get(5, rank=r, world=2) for r in range(2)]
    for k in first:
        assert torch.equal(torch.cat([h[k] for h in halves]), first[k])
        assert torch.equal(torch.cat([r[k] for r in ranks]), first[k])
    assert not torch.equal(a.get(6)["input_ids"], first["input_ids"])
    assert not torch.equal(_batches(seed=4).get(5)["input_ids"], first["input_ids"])


def test_teacher_forcing_layout():
    batch = _batches().get(0)
    labels, dec = batch["labels"], batch["decoder_ids"]
    assert batch["input_ids"].shape == (8, 64) and (batch["attention_mask"] == 1).all()  # packed: no padding
    assert (dec[:, 0] == PAD).all()
    shifted = torch.where(labels[:, :-1] == IGNORE_INDEX, PAD, labels[:, :-1])
    assert torch.equal(dec[:, 1:], shifted)
    assert (labels[:, 0] == SENTINELS[0]).all()


def test_validation_batches_are_fixed_and_cover_the_split():
    val = _batches(shuffle=False)
    once = list(val.eval_batches(8, 0))
    again = list(val.eval_batches(8, 3))
    assert len(again) == 3 and all(torch.equal(x["labels"], y["labels"]) for x, y in zip(once, again))
    assert sum(len(b["input_ids"]) for b in once) == (20_000 - 1) // val.raw


def test_too_few_sentinels_is_refused_with_the_fix():
    with pytest.raises(LmforgeError, match="extra_ids"):
        corrupt(np.arange(500), np.random.default_rng(0), SpanConfig(), SENTINELS[:3], EOS)

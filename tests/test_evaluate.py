"""Loss, perplexity and bits per byte against a direct computation; `lmforge eval`."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lmforge.data.loaders import ArrayTokens, eval_batches
from lmforge.evaluate import evaluate_lm
from lmforge.models import GPTConfig, build_model
from lmforge.objectives import causal_lm_loss
from lmforge.runtime import RuntimeConfig, setup_runtime


def test_metrics_match_a_direct_computation():
    torch.manual_seed(0)
    model = build_model(GPTConfig(vocab_size=20, context_len=8, n_layer=1, n_head=2, d_model=16)).eval()
    tokens = np.random.default_rng(0).integers(0, 20, 83)
    src = ArrayTokens(tokens, bytes_per_token=2.5)
    runtime = setup_runtime(RuntimeConfig(device="cpu"))
    out = evaluate_lm(model, causal_lm_loss, eval_batches(src, 8, 3), runtime, bytes_per_token=2.5)
    n_windows = (83 - 1) // 8
    x = torch.tensor(tokens[:n_windows * 8 + 1])
    with torch.no_grad():
        logits = model(x[:-1].view(n_windows, 8))
    nats = F.cross_entropy(logits.flatten(0, 1), x[1:], reduction="sum").item()
    assert out["tokens"] == n_windows * 8
    assert out["loss"] == pytest.approx(nats / out["tokens"], rel=1e-6)
    assert out["perplexity"] == pytest.approx(math.exp(out["loss"]), rel=1e-6)
    assert out["bits_per_byte"] == pytest.approx(nats / math.log(2) / (out["tokens"] * 2.5), rel=1e-6)


def test_eval_cli(tmp_path, tiny_shards, cli):
    sets = ["model.n_layer=1", "model.d_model=32", "model.context_len=32", "train.max_steps=4",
            "train.batch_size=4", "train.progress=false", "train.eval_batches=3", "runtime.device=cpu"]
    code, _, err = cli("pretrain", "--config", "gpt-tiny", "--data", tiny_shards, "--out", tmp_path / "run",
                       *[a for s in sets for a in ("--set", s)])
    assert code == 0, err
    code, out, err = cli("eval", tmp_path / "run", "--batches", 3, "--out", tmp_path / "m.json",
                         "--device", "cpu")
    assert code == 0, err
    metrics = json.loads(out)
    assert metrics == json.loads((tmp_path / "m.json").read_text())
    assert metrics["tokens"] == 3 * 4 * 32 and metrics["split"] == "val"
    logged = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert metrics["loss"] == pytest.approx(logged[-1]["val_loss"], rel=1e-6)  # training's eval batches
    assert 0 < metrics["bits_per_byte"] < 10
    code, _, err = cli("eval", tmp_path / "nowhere")
    assert code == 2 and "config.toml" in err
    code, _, err = cli("eval", tmp_path / "run", "--split", "test", "--device", "cpu")
    assert code == 2 and "no 'test' split" in err


def test_entity_metrics_are_seqeval_strict_iob2():
    seqeval = pytest.importorskip("seqeval.metrics")
    from seqeval.scheme import IOB2

    from lmforge.evaluate import entity_metrics

    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O", "B-PER"], ["O", "B-LOC", "I-LOC"]]
    pred = [["B-PER", "I-PER", "O", "I-LOC"], ["B-ORG", "O", "B-LOC"], ["O", "B-LOC", "I-LOC"]]
    m = entity_metrics(gold, pred)
    strict = {"mode": "strict", "scheme": IOB2}
    assert m["f1"] == pytest.approx(seqeval.f1_score(gold, pred, **strict))
    assert m["precision"] == pytest.approx(seqeval.precision_score(gold, pred, **strict))
    assert m["recall"] == pytest.approx(seqeval.recall_score(gold, pred, **strict))
    # by hand: 5 gold entities; predicted PER, ORG, LOC(2nd sentence, wrong), LOC(3rd) = 4, of which 3 right
    assert (m["precision"], m["recall"]) == pytest.approx((3 / 4, 3 / 5))
    # the lenient default (conlleval's) also counts the chunk that starts with I-LOC: the modes differ
    assert seqeval.f1_score(gold, pred) > m["f1"]
    assert m["per_type"]["PER"] == pytest.approx({"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 2})
    assert m["accuracy"] == pytest.approx(8 / 10)

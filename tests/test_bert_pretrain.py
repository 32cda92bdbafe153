"""BERT pretraining: the masked-LM objective, and `lmforge pretrain` / `lmforge fill-mask` end to end."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_BERT

from lmforge.data.mlm import MaskedLMBatches, MaskingConfig, SpecialTokens
from lmforge.models import BertConfig, build_model
from lmforge.objectives import IGNORE, masked_lm_loss
from lmforge.optim import OptimConfig, ScheduleConfig
from lmforge.runtime import RuntimeConfig, setup_runtime
from lmforge.train import TrainConfig, train

GOLDEN = Path(__file__).parent / "golden" / "bert_tiny_losses.json"


def _tiny_bert(vocab: int = 50) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(BertConfig(vocab_size=vocab, context_len=16, n_layer=1, n_head=2, d_model=16,
                                  dropout=0.0, attn_dropout=0.0)).eval()


def test_masked_lm_loss_sums_over_selected_tokens_and_counts_correct():
    model = _tiny_bert()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 50, (3, 12), generator=g)
    attention = torch.ones_like(ids)
    attention[2, 8:] = 0
    labels = torch.full_like(ids, IGNORE)
    labels[0, 3], labels[1, [1, 5, 7]], labels[2, 2] = 9, torch.tensor([10, 11, 12]), 13
    batch = {"input_ids": ids, "attention_mask": attention, "labels": labels}
    loss_sum, n, extras = masked_lm_loss(model, batch)
    logits = model(ids, attention_mask=attention)
    sel = labels != IGNORE
    expected = F.cross_entropy(logits[sel], labels[sel], reduction="sum")
    assert int(n) == 5
    torch.testing.assert_close(loss_sum, expected)
    assert int(extras["correct"]) == int((logits[sel].argmax(-1) == labels[sel]).sum())
    # a label equal to the model's own top prediction is counted as correct
    labels[0, 3] = logits[0, 3].argmax()
    _, _, extras2 = masked_lm_loss(model, batch)
    assert int(extras2["correct"]) == int(extras["correct"]) + int(logits[0, 3].argmax() != 9)


def test_masked_lm_loss_ignores_padding():
    model = _tiny_bert()
    ids = torch.randint(5, 50, (1, 8), generator=torch.Generator().manual_seed(2))
    labels = torch.full_like(ids, IGNORE)
    labels[0, 2] = 7
    padded = torch.cat([ids, torch.zeros(1, 4, dtype=torch.long)], dim=1)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    batch_padded = {"input_ids": padded, "attention_mask": (torch.arange(12) < 8).long()[None],
                    "labels": torch.cat([labels, torch.full((1, 4), IGNORE)], dim=1)}
    torch.testing.assert_close(masked_lm_loss(model, batch)[0], masked_lm_loss(model, batch_padded)[0])


def test_loss_at_loader_positions_equals_full_logits_loss():
    """The head run at `mlm_positions` only gives the loss, gradients and counts of the full-logits head."""
    specials = SpecialTokens(cls_id=2, sep_id=3, pad_id=0, mask_id=4, eot_id=1, vocab_size=50,
                             special_ids=frozenset(range(5)))
    batch = MaskedLMBatches(_Docs(), specials, 16, 6, seed=4, masking=MaskingConfig(mask_prob=0.3)).get(0)
    assert batch["mlm_positions"].shape[1] < 16
    results = []
    for b in (batch, {k: v for k, v in batch.items() if k != "mlm_positions"}):
        model = _tiny_bert()
        loss_sum, n, extras = masked_lm_loss(model, b)
        loss_sum.backward()
        results.append((loss_sum.detach(), int(n), int(extras["correct"]),
                        [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    (gathered, n_g, c_g, grads_g), (full, n_f, c_f, grads_f) = results
    assert n_g == n_f > 0 and c_g == c_f
    torch.testing.assert_close(gathered, full)
    for a, b in zip(grads_g, grads_f, strict=True):
        torch.testing.assert_close(a, b)


class _Docs:
    """In-memory token source with documents (each ends with end-of-text id 1)."""

    def __init__(self, n_docs: int = 60, vocab: int = 50, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        docs = [np.append((np.arange(rng.integers(5, 40)) * 3 + rng.integers(0, 50)) % (vocab - 5) + 5, 1)
                for _ in range(n_docs)]
        self.stream = np.concatenate(docs)
        self.offsets = np.concatenate([[0], np.cumsum([len(d) for d in docs])])
        self.num_tokens = len(self.stream)

    def tokens(self, start: int, stop: int) -> np.ndarray:
        return self.stream[start:stop]

    def doc_offsets(self) -> np.ndarray:
        return self.offsets


def test_golden_losses(tmp_path):
    """A seeded tiny masked-LM run reproduces its stored losses (LMFORGE_UPDATE_GOLDEN=1 rewrites them)."""
    specials = SpecialTokens(cls_id=2, sep_id=3, pad_id=0, mask_id=4, eot_id=1, vocab_size=50,
                             special_ids=frozenset(range(5)))
    batches = MaskedLMBatches(_Docs(), specials, 16, 8, seed=3, masking=MaskingConfig())
    model = _tiny_bert()
    model.train()
    train(model, masked_lm_loss, batches, optim_cfg=OptimConfig(lr=3e-3),
          schedule_cfg=ScheduleConfig(warmup_steps=2),
          train_cfg=TrainConfig(max_steps=10, batch_size=8, micro_batch_size=4, log_every=1, save_every=0,
                                progress=False),
          runtime=setup_runtime(RuntimeConfig(device="cpu", precision="fp32")), run_dir=tmp_path)
    losses = [r["loss"] for r in _records(tmp_path)]
    if os.environ.get("LMFORGE_UPDATE_GOLDEN") == "1":
        GOLDEN.write_text(json.dumps({"torch": torch.__version__, "losses": losses}, indent=2) + "\n")
    expected = json.loads(GOLDEN.read_text())["losses"]
    np.testing.assert_allclose(losses, expected, rtol=0, atol=1e-6)
    assert losses[-1] < losses[0]


# ----------------------------------------------------------------------------------------------------
# end to end through the CLI


@pytest.fixture(scope="module")
def wordpiece_shards(tmp_path_factory) -> Path:
    from conftest import make_wordpiece_shards

    return make_wordpiece_shards(tmp_path_factory.mktemp("bert_shards"), seed=2)


TINY = TINY_BERT


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _losses(run: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in _records(run) if "loss" in r}


@pytest.fixture(scope="module")
def bert_run(wordpiece_shards, tmp_path_factory) -> Path:
    from lmforge.cli import main

    run = tmp_path_factory.mktemp("bert_run") / "run"
    code = main(["pretrain", "--config", "bert-tiny", "--data", str(wordpiece_shards), "--out", str(run),
                 *TINY, "--set", "train.max_steps=10", "--set", "optim.lr=3e-3"])
    assert code == 0
    return run


def test_pretrain_bert_logs_masked_lm_metrics(bert_run):
    records = _records(bert_run)
    losses = _losses(bert_run)
    assert sorted(losses) == list(range(1, 11))
    assert losses[10] < losses[1] - 0.3  # it learns
    evals = [r for r in records if "val_loss" in r]
    assert [r["step"] for r in evals] == [5, 10]
    for r in evals:
        assert r["val_perplexity"] == pytest.approx(math.exp(r["val_loss"]))
        assert 0.0 <= r["val_accuracy"] <= 1.0 and r["val_tokens"] > 0
        assert "val_bits_per_byte" not in r  # meaningless over masked tokens
    assert evals[1]["val_tokens"] == evals[0]["val_tokens"]  # the same fixed validation masks
    assert evals[1]["val_loss"] < evals[0]["val_loss"]


def test_eval_cli_reports_masked_accuracy(bert_run, cli):
    code, out, err = cli("eval", bert_run, "--device", "cpu", "--batches", "2")
    assert code == 0, err
    metrics = json.loads(out)
    final = [r for r in _records(bert_run) if "val_loss" in r][-1]
    assert metrics["loss"] == pytest.approx(final["val_loss"], rel=1e-5)  # same masks as in training
    assert metrics["accuracy"] == pytest.approx(final["val_accuracy"])


def test_resume_gives_the_losses_of_an_uninterrupted_run(bert_run, tmp_path, cli):
    # a run stopped after its step-5 checkpoint: drop everything it did later
    stopped = tmp_path / "stopped"
    shutil.copytree(bert_run, stopped)
    shutil.rmtree(stopped / "checkpoints" / "step-000010")
    code, _, err = cli("pretrain", "--resume", stopped)
    assert code == 0, err
    drop = ("tokens_per_s", "elapsed", "mfu")
    strip = lambda rs: [{k: v for k, v in r.items() if k not in drop} for r in rs]  # noqa: E731
    assert strip(_records(stopped)) == strip(_records(bert_run))  # losses and val metrics, bit for bit


def test_a_second_run_reproduces_the_first(wordpiece_shards, bert_run, tmp_path, cli):
    code, _, err = cli("pretrain", "--config", "bert-tiny", "--data", wordpiece_shards,
                       "--out", tmp_path / "again", *TINY, "--set", "train.max_steps=10",
                       "--set", "optim.lr=3e-3")
    assert code == 0, err
    assert _losses(tmp_path / "again") == _losses(bert_run)


# ----------------------------------------------------------------------------------------------------
# fill-mask


def test_fill_mask_prints_top_k_candidates_per_mask(bert_run, cli):
    code, out, err = cli("fill-mask", bert_run, "the model reads [MASK] and learns to [MASK] the next token",
                         "--top-k", "3", "--device", "cpu")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "[MASK] 1:" and lines[4] == "[MASK] 2:" and len(lines) == 8
    for block in (lines[1:4], lines[5:8]):
        probs = [float(line.split()[0].rstrip("%")) / 100 for line in block]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0001
        assert all(len(line.split()) == 2 for line in block)  # probability, token


def test_fill_mask_errors(bert_run, tmp_path, cli):
    from lmforge.config import save_config
    from lmforge.models import GPTConfig
    from lmforge.runs import PretrainConfig

    code, _, err = cli("fill-mask", bert_run, "no mask token here", "--device", "cpu")
    assert code == 2 and "[MASK]" in err
    gpt_run = tmp_path / "gpt"
    gpt_run.mkdir()
    save_config(PretrainConfig(task="causal_lm", model=GPTConfig()), gpt_run / "config.toml")
    code, _, err = cli("fill-mask", gpt_run, "a [MASK] b")
    assert code == 2 and "not a masked LM" in err and "\n" not in err.strip()
    code, _, err = cli("fill-mask", tmp_path / "nowhere", "a [MASK] b")
    assert code == 2 and "config.toml" in err

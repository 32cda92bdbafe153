"""The loop: accumulation equals one big batch, pure-function batches, logging, NaN handling, Ctrl-C,
and the golden loss curve of a seeded tiny run."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from lmforge.checkpoint import list_checkpoints
from lmforge.data.loaders import ArrayTokens, CausalLMBatches, eval_batches
from lmforge.errors import LmforgeError
from lmforge.evaluate import evaluate_lm
from lmforge.models import GPTConfig, build_model
from lmforge.objectives import causal_lm_loss, count_targets
from lmforge.optim import OptimConfig, ScheduleConfig
from lmforge.runtime import RuntimeConfig, setup_runtime
from lmforge.train import Evaluation, TrainConfig, _forward_backward, train

GOLDEN = Path(__file__).parent / "golden" / "gpt_tiny_losses.json"


def _tokens(n: int = 4000, vocab: int = 40, seed: int = 0) -> ArrayTokens:
    # a learnable sequence: mostly an arithmetic pattern, with noise
    rng = np.random.default_rng(seed)
    base = (np.arange(n) * 7) % vocab
    noise = rng.integers(0, vocab, n)
    return ArrayTokens(np.where(rng.random(n) < 0.2, noise, base), bytes_per_token=1.5)


def _model(vocab: int = 40, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(GPTConfig(vocab_size=vocab, context_len=16, n_layer=2, n_head=2, d_model=32))


def _train(tmp_path, steps=12, objective=causal_lm_loss, evaluate=True, **train_kw):
    runtime = setup_runtime(RuntimeConfig(device="cpu", precision="fp32"))
    kw = dict(max_steps=steps, batch_size=8, log_every=1, eval_every=4, save_every=4, progress=False)
    kw.update(train_kw)
    train_cfg = TrainConfig(**kw)
    val = _tokens(600, seed=1)
    evaluate_fn = (lambda m: Evaluation(evaluate_lm(m, causal_lm_loss, eval_batches(val, 16, 8, 2), runtime,
                                                    1.5))) if evaluate else None
    result = train(_model(), objective, CausalLMBatches(_tokens(), 16, 8, seed=3),
                   optim_cfg=OptimConfig(lr=3e-3), schedule_cfg=ScheduleConfig(warmup_steps=2),
                   train_cfg=train_cfg, runtime=runtime, run_dir=tmp_path, evaluate_fn=evaluate_fn)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    return result, records


def test_accumulation_gives_the_gradient_of_one_big_batch():
    runtime = setup_runtime(RuntimeConfig(device="cpu"))
    batches = CausalLMBatches(_tokens(), 16, 8, seed=5)
    big = batches.get(step=2)
    big["labels"][0, :11] = -100  # uneven targets per micro-batch: a per-micro mean would be wrong
    big["labels"][5, 3:] = -100
    grads = []
    for micro_size in (8, 2):
        model = _model()
        micro = [{k: v[i:i + micro_size] for k, v in big.items()} for i in range(0, 8, micro_size)]
        n = sum(count_targets(b) for b in micro)
        _forward_backward(model, causal_lm_loss, micro, n, runtime, runtime.grad_scaler())
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_batches_are_pure_and_partitioned():
    batches = CausalLMBatches(_tokens(), 16, 8, seed=5)
    whole = batches.get(7)["input_ids"]
    assert torch.equal(whole, CausalLMBatches(_tokens(), 16, 8, seed=5).get(7)["input_ids"])
    assert not torch.equal(whole, batches.get(8)["input_ids"])
    parts = [batches.get(7, micro=m, rank=r, world=2, micro_batch=2)["input_ids"]
             for m in range(2) for r in range(2)]
    assert torch.equal(torch.cat(parts), whole)
    b = batches.get(7)
    assert torch.equal(b["input_ids"][:, 1:], b["labels"][:, :-1])


def test_eval_batches_cover_each_target_once():
    src = ArrayTokens(np.arange(101))
    labels = torch.cat([b["labels"].flatten() for b in eval_batches(src, 10, 3)])
    assert labels.tolist() == list(range(1, 101))
    assert len(list(eval_batches(src, 10, 3, max_batches=2))) == 2


def test_loop_learns_logs_and_keeps_checkpoints(tmp_path):
    result, records = _train(tmp_path, steps=12, keep_last=1)
    train_recs = [r for r in records if "loss" in r]
    evals = [r for r in records if "val_loss" in r]
    assert [r["step"] for r in train_recs] == list(range(1, 13))
    assert {"lr", "grad_norm", "tokens_per_s", "elapsed", "tokens"} <= set(train_recs[0])
    assert train_recs[-1]["loss"] < train_recs[0]["loss"] - 0.3
    assert [r["step"] for r in evals] == [4, 8, 12] and "val_bits_per_byte" in evals[0]
    assert result.stopped == "done" and result.step == 12
    kept = [c.name for c in list_checkpoints(tmp_path)]
    assert kept[-1] == "step-000012" and len(kept) <= 2  # the last one, plus the best if it differs
    assert (tmp_path / "tensorboard").is_dir()


def test_nan_stops_with_a_clear_message(tmp_path):
    def poisoned(model, batch, calls=[0]):  # noqa: B006 - a call counter
        calls[0] += 1
        loss, n, extras = causal_lm_loss(model, batch)
        return (loss * float("nan") if calls[0] >= 6 else loss), n, extras

    with pytest.raises(LmforgeError, match="NaN/inf by step 6; the last good checkpoint is .*step-000004"):
        _train(tmp_path, steps=12, objective=poisoned, evaluate=False)
    assert [c.name for c in list_checkpoints(tmp_path)] == ["step-000004"]


def test_nan_steps_can_be_skipped(tmp_path):
    def spiky(model, batch, calls=[0]):  # noqa: B006
        calls[0] += 1
        loss, n, extras = causal_lm_loss(model, batch)
        return (loss * float("inf") if calls[0] == 3 else loss), n, extras

    result, records = _train(tmp_path, steps=6, objective=spiky, evaluate=False, on_nan="skip")
    assert result.step == 6 and [r["step"] for r in records if "skipped" in r] == [3]
    assert all(np.isfinite(r["loss"]) for r in records if "loss" in r)


def test_ctrl_c_finishes_the_step_and_saves(tmp_path):
    def interrupting(model, batch, calls=[0]):  # noqa: B006
        calls[0] += 1
        if calls[0] == 5:
            os.kill(os.getpid(), signal.SIGINT)
        return causal_lm_loss(model, batch)

    result, records = _train(tmp_path, steps=50, objective=interrupting, evaluate=False, save_every=0)
    assert result.stopped == "interrupted" and result.step == 5
    assert [c.name for c in list_checkpoints(tmp_path)] == ["step-000005"]
    assert records[-1]["step"] == 5


def test_time_budget_stops_saves_and_evaluates(tmp_path, monkeypatch):
    clock = [0.0]  # a fake wall clock in seconds, so a loaded machine cannot change where the run stops
    monkeypatch.setattr("lmforge.train.time.perf_counter", lambda: clock[0])

    def slow(model, batch, calls=[0]):  # noqa: B006
        calls[0] += 1
        clock[0] += 70.0 if calls[0] == 3 else 1.0  # step 3 ends past the one-minute budget
        return causal_lm_loss(model, batch)

    result, records = _train(tmp_path, steps=50, objective=slow, save_every=0, eval_every=0,
                             log_every=10, max_minutes=1.0)
    assert result.stopped == "time" and result.step == 3
    assert [c.name for c in list_checkpoints(tmp_path)] == ["step-000003"]
    assert [r["step"] for r in records if "val_loss" in r] == [3]
    assert [r["step"] for r in records if "loss" in r] == [3]


def test_time_budget_must_not_be_negative():
    with pytest.raises(LmforgeError, match="train.max_minutes"):
        TrainConfig(max_minutes=-1)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_runs_on_cpu(tmp_path, precision):
    runtime = setup_runtime(RuntimeConfig(device="cpu", precision=precision))
    result = train(_model(), causal_lm_loss, CausalLMBatches(_tokens(), 16, 4, seed=3),
                   optim_cfg=OptimConfig(lr=3e-3), schedule_cfg=ScheduleConfig(warmup_steps=1),
                   train_cfg=TrainConfig(max_steps=3, batch_size=4, progress=False, save_every=0),
                   runtime=runtime, run_dir=tmp_path)
    assert result.step == 3 and list_checkpoints(tmp_path)


def test_golden_losses(tmp_path):
    """A seeded tiny run reproduces its stored first losses (LMFORGE_UPDATE_GOLDEN=1 rewrites them)."""
    _, records = _train(tmp_path, steps=10, evaluate=False, micro_batch_size=4)
    losses = [r["loss"] for r in records if "loss" in r]
    if os.environ.get("LMFORGE_UPDATE_GOLDEN") == "1":
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps({"torch": torch.__version__, "losses": losses}, indent=2) + "\n")
    expected = json.loads(GOLDEN.read_text())["losses"]
    np.testing.assert_allclose(losses, expected, rtol=0, atol=1e-6)


def test_an_evaluation_that_says_stop_saves_and_ends_the_run(tmp_path):
    """Early stopping is a return value of the evaluation, not an exception from the batch source."""
    runtime = setup_runtime(RuntimeConfig(device="cpu"))
    calls = []

    def evaluate_fn(model):
        calls.append(1)
        return Evaluation({"loss": 1.0}, stop="no better in 2 evaluations" if len(calls) == 2 else None)

    result = train(_model(), causal_lm_loss, CausalLMBatches(_tokens(), 16, 8, seed=3), optim_cfg=OptimConfig(),
                   schedule_cfg=ScheduleConfig(warmup_steps=2),
                   train_cfg=TrainConfig(max_steps=20, batch_size=8, eval_every=3, save_every=100, progress=False),
                   runtime=runtime, run_dir=tmp_path, evaluate_fn=evaluate_fn)
    assert result.stopped == "early_stopping" and result.step == 6 and len(calls) == 2
    assert list_checkpoints(tmp_path)[-1].name == "step-000006"  # saved although save_every is 100


def test_the_plateau_state_lives_with_the_schedule():
    from lmforge.optim import Schedule

    schedule = Schedule(ScheduleConfig(name="plateau", warmup_steps=0, plateau_factor=0.5), max_steps=10)
    for loss in (3.0, 2.0, 2.5):
        schedule.observe(loss)
    assert schedule.factor(5) == 0.5
    again = Schedule(schedule.cfg, 10)
    again.load_state_dict(schedule.state_dict())
    again.observe(2.2)  # still no better than 2.0: cut again
    assert again.factor(6) == 0.25

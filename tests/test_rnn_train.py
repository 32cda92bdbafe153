"""Recurrent LMs trained by the one loop with truncated BPTT: stream batches, the carried state,
classic stream evaluation, and `lmforge pretrain` end to end (exact resume, GRU) on a word tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lmforge.data.loaders import ArrayTokens, StreamBatches, stream_eval_batches
from lmforge.errors import LmforgeError
from lmforge.models import RNNConfig, build_model
from lmforge.objectives import TruncatedBPTTLoss
from lmforge.optim import OptimConfig, ScheduleConfig
from lmforge.runtime import RuntimeConfig, setup_runtime
from lmforge.train import Evaluation, TrainConfig, train


def _tiny_rnn(cell: str = "lstm", vocab: int = 30, dropout: float = 0.0) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(RNNConfig(vocab_size=vocab, cell=cell, context_len=8, n_layer=2, d_embed=16,
                                 d_hidden=16, dropout=dropout))


# ----------------------------------------------------------------------------------------------------
# batches


def test_stream_batches_read_consecutive_windows_of_fixed_streams():
    tokens = np.arange(1003)
    batches = StreamBatches(ArrayTokens(tokens), seq_len=7, batch_size=4)
    stream_len = 1003 // 4
    assert batches.n_windows == (stream_len - 1) // 7
    for step in (0, 1, 5, batches.n_windows - 1):
        b = batches.get(step)
        for j in range(4):
            start = j * stream_len + step * 7
            assert b["input_ids"][j].tolist() == tokens[start:start + 7].tolist()
            assert b["labels"][j].tolist() == tokens[start + 1:start + 8].tolist()
        assert b["streams"].tolist() == [0, 1, 2, 3]
        assert b["reset"].tolist() == [step == 0] * 4
    # wrap-around: a new epoch starts at window 0 and resets the state
    wrapped = batches.get(batches.n_windows)
    assert torch.equal(wrapped["input_ids"], batches.get(0)["input_ids"]) and wrapped["reset"].all()
    # never reads past a stream into the next one
    last = batches.get(batches.n_windows - 1)
    assert int(last["labels"][0, -1]) < stream_len


def test_each_micro_batch_and_rank_owns_fixed_streams():
    batches = StreamBatches(ArrayTokens(np.arange(4000)), seq_len=5, batch_size=8, first_stream=3)
    whole = batches.get(6)
    parts = [batches.get(6, micro=m, rank=r, world=2, micro_batch=2) for m in range(2) for r in range(2)]
    assert torch.equal(torch.cat([p["input_ids"] for p in parts]), whole["input_ids"])
    assert [p["streams"].tolist() for p in parts] == [[3, 4], [5, 6], [7, 8], [9, 10]]
    assert torch.equal(batches.get(6, 1, 0, 2, 2)["input_ids"], parts[2]["input_ids"])  # pure


def test_stream_eval_covers_every_target_once_and_splits_streams_across_ranks():
    tokens = np.arange(1000)
    whole = list(stream_eval_batches(ArrayTokens(tokens), seq_len=35, n_streams=10))
    stream_len = 100
    assert sum(b["labels"].numel() for b in whole) == 10 * (stream_len - 1)
    assert [b["reset"].all().item() for b in whole] == [True] + [False] * (len(whole) - 1)
    labels = torch.cat([b["labels"] for b in whole], dim=1)  # (10, 99)
    assert torch.equal(labels, torch.arange(10)[:, None] * stream_len + torch.arange(1, stream_len))
    ranks = [list(stream_eval_batches(ArrayTokens(tokens), 35, 10, rank=r, world=3)) for r in range(3)]
    assert sorted(s for r in ranks for s in r[0]["streams"].tolist()) == list(range(10))
    assert sum(b["labels"].numel() for r in ranks for b in r) == 10 * (stream_len - 1)
    assert len(list(stream_eval_batches(ArrayTokens(tokens), 35, 10, max_batches=2))) == 2


def test_too_little_data_is_a_clear_error():
    with pytest.raises(LmforgeError, match="train.batch_size"):
        StreamBatches(ArrayTokens(np.arange(50)), seq_len=10, batch_size=8).get(0)
    with pytest.raises(LmforgeError, match="validation split"):
        next(stream_eval_batches(ArrayTokens(np.arange(15)), 35, 10))


# ----------------------------------------------------------------------------------------------------
# the objective


def test_carried_state_equals_one_long_forward_and_reset_starts_fresh():
    model = _tiny_rnn().eval()
    tokens = np.random.default_rng(0).integers(0, 30, 2 * 41)
    batches = StreamBatches(ArrayTokens(tokens), seq_len=8, batch_size=2)
    loss = TruncatedBPTTLoss(n_streams=2)
    with torch.no_grad():
        sums = [loss(model, batches.get(step))[0] for step in range(3)]
        ids = torch.tensor(tokens).view(2, 41)
        logits, _ = model(ids[:, :24])  # (2, 24, V)
        expected = [F.cross_entropy(logits[:, 8 * w:8 * w + 8].flatten(0, 1),
                                    ids[:, 8 * w + 1:8 * w + 9].flatten(), reduction="sum") for w in range(3)]
    torch.testing.assert_close(torch.stack(sums), torch.stack(expected))
    with torch.no_grad():
        again = loss(model, batches.get(batches.n_windows))[0]  # a new epoch: window 0, zero state
    torch.testing.assert_close(again, expected[0])


def test_state_is_detached_between_windows():
    model = _tiny_rnn()
    batches = StreamBatches(ArrayTokens(np.arange(400) % 30), seq_len=8, batch_size=2)
    loss = TruncatedBPTTLoss(2)
    loss(model, batches.get(0))[0].backward()
    model.zero_grad()
    loss(model, batches.get(1))[0].backward()  # would fail ("backward through the graph a second time")
    assert not any(b.requires_grad for b in loss.buffers)


def test_state_dict_round_trip_continues_identically():
    model = _tiny_rnn("gru").eval()
    batches = StreamBatches(ArrayTokens(np.arange(600) % 29), seq_len=8, batch_size=3)
    a = TruncatedBPTTLoss(3)
    with torch.no_grad():
        for step in range(3):
            a(model, batches.get(step))
        b = TruncatedBPTTLoss(3)
        b.load_state_dict(a.state_dict())
        carried_a, carried_b = a(model, batches.get(3))[0], b(model, batches.get(3))[0]
        fresh = TruncatedBPTTLoss(3)(model, batches.get(3))[0]  # no state to start from: zeros
    assert torch.equal(carried_a, carried_b)
    assert not torch.allclose(fresh, carried_a)  # so the state did matter


def _loop(run_dir: Path, micro_batch: int, max_steps: int = 10, resume: bool = False):
    model = _tiny_rnn(dropout=0.0)
    data = ArrayTokens((np.arange(3000) * 7 + np.random.default_rng(0).integers(0, 3, 3000)) % 30)
    train(model, TruncatedBPTTLoss(4), StreamBatches(data, 8, 4), optim_cfg=OptimConfig(name="sgd", lr=1.0),
          schedule_cfg=ScheduleConfig(name="constant", warmup_steps=0),
          train_cfg=TrainConfig(max_steps=max_steps, batch_size=4, micro_batch_size=micro_batch, log_every=1,
                                save_every=5, progress=False),
          runtime=setup_runtime(RuntimeConfig(device="cpu")), run_dir=run_dir, resume=resume)
    return _losses(run_dir)


def test_accumulation_keeps_each_micro_batch_state_consistent(tmp_path):
    whole = _loop(tmp_path / "whole", micro_batch=4)
    accumulated = _loop(tmp_path / "accum", micro_batch=1)
    assert len(whole) == 10
    np.testing.assert_allclose(list(accumulated.values()), list(whole.values()), rtol=1e-5)


# ----------------------------------------------------------------------------------------------------
# end to end through the CLI


@pytest.fixture(scope="module")
def word_shards(tmp_path_factory) -> Path:
    """Shards with a word tokenizer (`<eos>` after every line) from generated English lines."""
    from conftest import make_english, make_shards

    from lmforge.tokenizer import TokenizerConfig

    return make_shards(tmp_path_factory.mktemp("word_shards"), make_english(300, seed=2), 30,
                       TokenizerConfig(kind="word", vocab_size=500, min_frequency=1))


RUN_TOML = """
[model]
kind = "rnn"
cell = "{cell}"
context_len = 16
n_layer = 2
d_embed = 32
d_hidden = 32
dropout = 0.2

[optim]
name = "sgd"
lr = 5.0
weight_decay = 0.0
momentum = 0.0

[schedule]
name = "constant"
warmup_steps = 0

[train]
max_steps = 60
batch_size = 8
micro_batch_size = 4
grad_clip = 0.25
log_every = 1
eval_every = 20
eval_batches = 0
save_every = 10
progress = false

[runtime]
device = "cpu"
"""


def _losses(run: Path, key: str = "loss") -> dict[int, float]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r[key] for r in records if key in r}


def _config(tmp_path: Path, cell: str = "lstm") -> Path:
    path = tmp_path / f"{cell}.toml"
    path.write_text(RUN_TOML.format(cell=cell))
    return path


def test_pretrain_lstm_learns_evaluates_and_resumes_exactly(tmp_path, word_shards, cli):
    config = _config(tmp_path)
    common = ["--config", config, "--data", word_shards]
    code, out, err = cli("pretrain", *common, "--out", tmp_path / "whole")
    assert code == 0, err
    whole = _losses(tmp_path / "whole")
    assert len(whole) == 60 and np.mean(list(whole.values())[-10:]) < np.mean(list(whole.values())[:5]) - 0.5
    val = _losses(tmp_path / "whole", "val_perplexity")
    assert set(val) == {20, 40, 60} and val[60] < val[20]
    assert _losses(tmp_path / "whole", "val_tokens")[60] > 1000  # every window of the val split
    state = torch.load(tmp_path / "whole/checkpoints/step-000060/trainer_state.pt", weights_only=True)
    # h and c of 2 layers for 8 training + 10 evaluation streams
    assert [tuple(b.shape) for b in state["objective"]["buffers"]] == [(2, 18, 32)] * 2

    code, _, err = cli("pretrain", *common, "--out", tmp_path / "cut", "--set", "train.max_steps=25")
    assert code == 0, err
    code, _, err = cli("pretrain", "--resume", tmp_path / "cut", "--set", "train.max_steps=60")
    assert code == 0, err
    assert _losses(tmp_path / "cut") == whole  # exactly: the carried state came back with the checkpoint


def test_resume_across_an_epoch_boundary_is_exact(tmp_path, word_shards, cli):
    # batch 32 x 16 on 12,000 tokens: 23 windows per epoch, so 30 steps wrap around once
    common = ["--config", _config(tmp_path), "--data", word_shards, "--set", "train.batch_size=32",
              "--set", "train.micro_batch_size=0", "--set", "train.eval_every=0"]
    assert cli("pretrain", *common, "--set", "train.max_steps=30", "--out", tmp_path / "a")[0] == 0
    assert cli("pretrain", *common, "--set", "train.max_steps=20", "--out", tmp_path / "b")[0] == 0
    assert cli("pretrain", "--resume", tmp_path / "b", "--set", "train.max_steps=30")[0] == 0
    assert _losses(tmp_path / "b") == _losses(tmp_path / "a")


def test_pretrain_gru_trains(tmp_path, word_shards, cli):
    code, _, err = cli("pretrain", "--config", _config(tmp_path, "gru"), "--data", word_shards, "--out",
                       tmp_path / "gru", "--set", "train.max_steps=30", "--set", "train.eval_every=0")
    assert code == 0, err
    losses = list(_losses(tmp_path / "gru").values())
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.5
    code, out, err = cli("eval", tmp_path / "gru", "--device", "cpu")
    assert code == 0, err
    assert json.loads(out)["perplexity"] == pytest.approx(_losses(tmp_path / "gru", "val_perplexity")[30])


def test_pretrain_with_too_little_data_says_what_to_change(tmp_path, word_shards, cli):
    code, _, err = cli("pretrain", "--config", _config(tmp_path), "--data", word_shards,
                       "--out", tmp_path / "r", "--set", "train.batch_size=1024",
                       "--set", "train.micro_batch_size=0")
    assert code == 2 and "train.batch_size" in err and "Traceback" not in err


# ----------------------------------------------------------------------------------------------------
# the plateau schedule (the classic recipe: lr / 4 when validation stops improving)


def _plateau_run(run_dir: Path, val_losses: list[float], calls: list[int], max_steps: int, resume=False):
    def evaluate_fn(model):
        calls[0] += 1
        return Evaluation({"loss": val_losses[calls[0] - 1]})

    model = _tiny_rnn()
    data = ArrayTokens(np.arange(2000) % 30)
    train(model, TruncatedBPTTLoss(4), StreamBatches(data, 8, 4), optim_cfg=OptimConfig(name="sgd", lr=1.0),
          schedule_cfg=ScheduleConfig(name="plateau", warmup_steps=0, plateau_factor=0.5),
          train_cfg=TrainConfig(max_steps=max_steps, batch_size=4, log_every=1, eval_every=2, save_every=2,
                                progress=False),
          runtime=setup_runtime(RuntimeConfig(device="cpu")), run_dir=run_dir, evaluate_fn=evaluate_fn,
          resume=resume)
    return _losses(run_dir, "lr")


def test_plateau_cuts_the_lr_when_validation_stops_improving_and_resumes(tmp_path):
    val = [3.0, 2.0, 2.5, 1.5, 1.5, 1.0]  # evaluations after steps 2, 4, ..., 12
    whole = _plateau_run(tmp_path / "a", val, [0], 12)
    # an evaluation no better than the best halves the lr from the next step on
    assert [whole[s] for s in range(1, 13)] == [1.0] * 6 + [0.5] * 4 + [0.25] * 2
    calls = [0]
    _plateau_run(tmp_path / "b", val, calls, 6)  # stops right after the cut at step 6
    assert _plateau_run(tmp_path / "b", val, calls, 12, resume=True) == whole


def _merge_worker(rank: int, world: int, init_file: str, resumed: str, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    model = _tiny_rnn().eval()
    batches = StreamBatches(ArrayTokens(np.arange(800) % 30), seq_len=8, batch_size=4)
    loss = TruncatedBPTTLoss(4)
    loss.load_state_dict(torch.load(resumed, weights_only=True))  # every process holds every row
    with torch.no_grad():
        for step in range(2, 4):
            loss(model, batches.get(step, rank=rank, world=world))
    state = loss.state_dict()  # every process takes part
    if rank == 0:
        torch.save(state, out)
    dist.destroy_process_group()


def test_state_dict_merges_the_streams_of_every_process(tmp_path):
    import torch.multiprocessing as mp

    model = _tiny_rnn().eval()
    batches = StreamBatches(ArrayTokens(np.arange(800) % 30), seq_len=8, batch_size=4)
    single = TruncatedBPTTLoss(4)
    with torch.no_grad():
        for step in range(4):
            single(model, batches.get(step))
            if step == 1:
                torch.save(single.state_dict(), tmp_path / "resumed.pt")
    paths = [str(tmp_path / name) for name in ("init", "resumed.pt", "merged.pt")]
    mp.spawn(_merge_worker, args=(2, *paths), nprocs=2)
    merged = torch.load(tmp_path / "merged.pt", weights_only=True)
    for got, want in zip(merged["buffers"], single.state_dict()["buffers"], strict=True):
        torch.testing.assert_close(got, want)

"""`lmforge pretrain` end to end on generated shards: run folder, refusals, resume, load_run, plot."""

from __future__ import annotations

import json

import pytest
import torch

from lmforge.errors import LmforgeError

TINY = ["--set", "model.n_layer=1", "--set", "model.d_model=32", "--set", "model.n_head=2",
        "--set", "model.context_len=32", "--set", "train.batch_size=4", "--set", "train.max_steps=6",
        "--set", "train.eval_every=3", "--set", "train.eval_batches=2", "--set", "train.save_every=3",
        "--set", "train.log_every=1", "--set", "train.progress=false", "--set", "runtime.device=cpu"]


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_shards):
    from lmforge.cli import main

    out = tmp_path_factory.mktemp("runs") / "run"
    args = ["pretrain", "--config", "gpt-tiny", "--data", str(tiny_shards), "--out", str(out), *TINY]
    assert main(args) == 0
    return out


def test_run_folder_layout(run, tiny_shards):
    from lmforge.tasks import load_config
    from lmforge.tokenizer import load_tokenizer

    assert {p.name for p in run.iterdir()} >= {"config.toml", "tokenizer", "metrics.jsonl", "checkpoints"}
    cfg = load_config(run / "config.toml")
    tok = load_tokenizer(tiny_shards)
    assert cfg.model.vocab_size == tok.vocab_size and cfg.train.max_steps == 6
    assert cfg.data.path == str(tiny_shards)
    ckpt = run / "checkpoints" / "step-000006"
    assert {p.name for p in ckpt.iterdir()} >= {"model.safetensors", "trainer_state.pt", "meta.json",
                                               "config.toml", "tokenizer"}


def test_load_run(run):
    from lmforge.tasks import load_run

    loaded = load_run(run, "latest")
    assert loaded.step == 6 and not loaded.model.training
    assert loaded.tokenizer.vocab_size == loaded.config.model.vocab_size
    ids = torch.tensor([loaded.tokenizer.encode("the model")])
    assert loaded.model(ids).shape == (1, ids.shape[1], loaded.config.model.vocab_size)
    assert load_run(run).step in (3, 6)  # best by val loss


def test_existing_folder_is_refused_unless_overwrite(run, tiny_shards, cli, tmp_path):
    code, _, err = cli("pretrain", "--config", "gpt-tiny", "--data", tiny_shards, "--out", run, *TINY)
    assert code == 2 and "already exists" in err and "--overwrite" in err
    copy = tmp_path / "again"
    code, _, err = cli("pretrain", "--config", "gpt-tiny", "--data", tiny_shards, "--out", copy, *TINY)
    assert code == 0, err
    code, _, err = cli("pretrain", "--config", "gpt-tiny", "--data", tiny_shards, "--out", copy,
                       "--overwrite", *TINY)
    assert code == 0, err
    assert len((copy / "metrics.jsonl").read_text().splitlines()) == 6 + 2  # not appended to the old run


def test_resume_extends_a_finished_run(run, tmp_path, cli):
    import shutil

    copy = tmp_path / "longer"
    shutil.copytree(run, copy)
    code, _, err = cli("pretrain", "--resume", copy, "--set", "train.max_steps=8")
    assert code == 0, err
    steps = [json.loads(line)["step"] for line in (copy / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == 8 and steps.count(7) == 1


def test_bad_inputs(tmp_path, tiny_shards, cli):
    code, _, err = cli("pretrain", "--config", "gpt-tiny", "--out", tmp_path / "r", *TINY)
    assert code == 2 and "data.path" in err
    code, _, err = cli("pretrain", "--resume", tmp_path / "nothing")
    assert code == 2 and "no config.toml" in err
    code, _, err = cli("pretrain", "--config", "gpt-tiny", "--data", tiny_shards, "--out", tmp_path / "r",
                       *TINY, "--set", "data.seq_len=64")
    assert code == 2 and "data.seq_len" in err and not (tmp_path / "r").exists()
    code, _, err = cli("pretrain", "--config", "gpt-tiny", "--data", tmp_path, "--out", tmp_path / "r")
    assert code == 2 and "tokenizer" in err


def test_resume_refuses_shards_of_another_tokenizer(run, tmp_path, tiny_shards, cli):
    import shutil

    from lmforge.data.shards import ShardConfig, build_shards
    from lmforge.tokenizer import TokenizerConfig, train_tokenizer

    corpus = tmp_path / "corpus"
    shutil.copytree(tiny_shards.parent / "corpus", corpus)
    train_tokenizer(corpus, tmp_path / "tok", TokenizerConfig(kind="bpe", vocab_size=300), progress=False)
    build_shards(corpus, tmp_path / "tok", tmp_path / "other", ShardConfig(num_workers=1), progress=False)
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    code, _, err = cli("pretrain", "--resume", copy, "--data", tmp_path / "other",
                       "--set", "train.max_steps=8")
    assert code == 2 and "built with tokenizer" in err
    code, _, err = cli("eval", run, "--data", tmp_path / "other")
    assert code == 2 and "built with tokenizer" in err


def test_plot(run, tmp_path, cli):
    out = tmp_path / "curves.png"
    code, _, err = cli("plot", run, run, "--out", out)
    assert code == 0, err
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(LmforgeError, match="no metrics.jsonl"):
        from lmforge.plot import plot_runs

        plot_runs([tmp_path], tmp_path / "x.png")

"""`lmforge pretrain --init-from RUN|hf:DIR`: a new run that starts from another run's weights.

The proof that the weights were loaded: the new run's first logged loss (the loss of its step-0 batch,
before any update) equals the source model's loss on that same batch, computed here independently
(with transformers itself for the imported GPT-2).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lmforge.data.loaders import CausalLMBatches
from lmforge.data.shards import TokenShards
from lmforge.errors import LmforgeError
from lmforge.pipeline import init_config, pretrain
from lmforge.tasks import load_run, read_config

SOURCE = ("[model]\nkind = \"gpt\"\ncontext_len = 32\nn_layer = 1\nn_head = 2\nd_model = 16\n\n"
          "[train]\nmax_steps = 3\nbatch_size = 4\neval_every = 0\neval_batches = 1\nsave_every = 3\n"
          "log_every = 1\nprogress = false\n\n[optim]\nlr = 0.01\n\n[schedule]\nwarmup_steps = 1\n\n"
          "[runtime]\ndevice = \"cpu\"\n")
NEW = ["train.max_steps=3", "train.seed=5", "train.log_every=1", "schedule.warmup_steps=2"]


def metrics(run: Path) -> list[dict]:
    return [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in ln]


def first_batch_loss(logits_fn, shards: Path, cfg) -> float:
    """Mean next-token loss of the batch the run's step 0 trains on."""
    batches = CausalLMBatches(TokenShards.open(shards), cfg.seq_len(), cfg.train.batch_size, cfg.train.seed)
    batch = batches.get(0, micro_batch=cfg.train.batch_size)
    with torch.no_grad():
        logits = logits_fn(batch["input_ids"])  # (B, T, V)
    return F.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=-100).item()


@pytest.fixture(scope="module")
def source(tmp_path_factory, tiny_shards) -> Path:
    root = tmp_path_factory.mktemp("init_src")
    (root / "src.toml").write_text(SOURCE)
    from lmforge.cli import main

    assert main(["pretrain", "--config", str(root / "src.toml"), "--data", str(tiny_shards), "--out",
                 str(root / "src")]) == 0
    return root / "src"


def test_new_run_starts_from_the_source_weights(source, tiny_shards, tmp_path, cli):
    out = tmp_path / "new"
    code, _, err = cli("pretrain", "--init-from", source, "--data", tiny_shards, "--out", out,
                       *[a for s in NEW for a in ("--set", s)])
    assert code == 0, err
    cfg = read_config(out)
    assert cfg.model == read_config(source).model and cfg.data.path == str(tiny_shards)
    src = load_run(source)
    want = first_batch_loss(src.model, tiny_shards, cfg)
    logged = metrics(out)
    assert [m["step"] for m in logged] == [1, 2, 3]  # a fresh run: step 0 to max_steps
    assert logged[0]["loss"] == pytest.approx(want, rel=1e-5)
    assert logged[0]["lr"] == pytest.approx(cfg.optim.lr / 2)  # a new schedule, warming up again
    assert logged[-1]["loss"] < logged[0]["loss"]  # and training goes on from there
    assert load_run(out).tokenizer.fingerprint == src.tokenizer.fingerprint
    assert json.loads((out / "init_from.json").read_text())["run"] == str(source)
    # a fresh initialisation of the same config starts elsewhere: the check above can fail
    code, _, err = cli("pretrain", "--config", source / "config.toml", "--data", tiny_shards, "--out",
                       tmp_path / "scratch", *[a for s in NEW for a in ("--set", s)])
    assert code == 0, err
    assert abs(metrics(tmp_path / "scratch")[0]["loss"] - want) > 1e-3


def test_dropout_may_change_architecture_may_not(source, tiny_shards, tmp_path, cli):
    cfg = init_config(source, None, ["model.dropout=0.1", f"data.path={tiny_shards}"])
    assert cfg.model.dropout == 0.1 and cfg.model.n_layer == 1
    code, _, err = cli("pretrain", "--init-from", source, "--data", tiny_shards, "--out", tmp_path / "a",
                       "--set", "model.n_layer=2")
    assert code == 2 and "'model.n_layer' = 2 conflicts with" in err and "model.dropout" in err, err
    (tmp_path / "c.toml").write_text("[model]\nn_head = 4\n\n[train]\nmax_steps = 2\n")
    code, _, err = cli("pretrain", "--init-from", source, "--config", tmp_path / "c.toml", "--data",
                       tiny_shards, "--out", tmp_path / "b")
    assert code == 2 and "'model.n_head' = 4" in err, err
    code, _, err = cli("pretrain", "--init-from", source, "--data", tiny_shards, "--out", tmp_path / "k",
                       "--set", "model.kind=bert")
    assert code == 2 and "'model.kind'" in err, err
    (tmp_path / "same.toml").write_text("[model]\nn_head = 2\ndropout = 0.2\n\n[train]\nmax_steps = 1\n"
                                        "progress = false\n")
    code, _, err = cli("pretrain", "--init-from", source, "--config", tmp_path / "same.toml", "--data",
                       tiny_shards, "--out", tmp_path / "ok")
    assert code == 0, err
    assert read_config(tmp_path / "ok").model.dropout == 0.2
    code, _, err = cli("pretrain", "--init-from", source, "--resume", tmp_path / "ok")
    assert code == 2 and "--init-from" in err
    with pytest.raises(LmforgeError, match="'model.d_model' = 32 conflicts"):
        cfg = init_config(source, None, [f"data.path={tiny_shards}"])
        import dataclasses

        pretrain(dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, d_model=32)), tmp_path / "x",
                 init_from=source)


def test_shards_of_another_tokenizer_are_refused(source, tmp_path, cli):
    from conftest import make_chinese

    from lmforge.corpus.store import write_file
    from lmforge.data.shards import ShardConfig, build_shards
    from lmforge.tokenizer import TokenizerConfig, train_tokenizer

    (tmp_path / "corpus").mkdir()
    write_file(tmp_path / "corpus" / "train-00000.jsonl.zst", make_chinese(30))
    train_tokenizer(tmp_path / "corpus", tmp_path / "tok", TokenizerConfig(kind="char", vocab_size=100),
                    progress=False)
    build_shards(tmp_path / "corpus", tmp_path / "tok", tmp_path / "shards", ShardConfig(num_workers=1),
                 progress=False)
    code, _, err = cli("pretrain", "--init-from", source, "--data", tmp_path / "shards", "--out",
                       tmp_path / "new")
    assert code == 2 and "were built with tokenizer" in err, err
    assert f"--tokenizer {source / 'tokenizer'}" in err
    assert not (tmp_path / "new").exists()


def test_init_from_an_imported_hf_gpt2(tmp_path, cli, monkeypatch):
    transformers = pytest.importorskip("transformers")
    from conftest import make_english

    from lmforge.corpus.store import write_file
    from lmforge.data.shards import ShardConfig, build_shards
    from lmforge.interop import resolve_run
    from lmforge.tokenizer import TokenizerConfig, load_tokenizer, train_tokenizer

    monkeypatch.setenv("LMFORGE_CACHE", str(tmp_path / "cache"))
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    docs = make_english(120, seed=3)
    write_file(corpus / "train-00000.jsonl.zst", docs[:-10])
    write_file(corpus / "val-00000.jsonl.zst", docs[-10:])
    train_tokenizer(corpus, tmp_path / "tok", TokenizerConfig(kind="bpe", vocab_size=300, min_frequency=1),
                    progress=False)
    hf_tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=load_tokenizer(tmp_path / "tok").backend, eos_token="<|endoftext|>",
        bos_token="<|endoftext|>", unk_token="<|endoftext|>")
    torch.manual_seed(0)
    hf_model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=len(hf_tok), n_positions=64, n_embd=32, n_layer=2, n_head=4, resid_pdrop=0.0,
        embd_pdrop=0.0, attn_pdrop=0.0)).eval()
    hf_model.save_pretrained(tmp_path / "hf")
    hf_tok.save_pretrained(tmp_path / "hf")
    src = f"hf:{tmp_path / 'hf'}"
    # the shards are built with the imported run's tokenizer, as the --init-from hint says
    build_shards(corpus, resolve_run(src) / "tokenizer", tmp_path / "shards", ShardConfig(num_workers=1),
                 progress=False)
    out = tmp_path / "new"
    code, _, err = cli("pretrain", "--init-from", src, "--data", tmp_path / "shards", "--out", out,
                       "--set", "data.seq_len=32", "--set", "train.batch_size=4", "--set", "train.eval_every=0",
                       "--set", "train.eval_batches=1", "--set", "train.progress=false",
                       *[a for s in NEW for a in ("--set", s)])
    assert code == 0, err
    cfg = read_config(out)
    want = first_batch_loss(lambda ids: hf_model(ids).logits, tmp_path / "shards", cfg)
    logged = metrics(out)
    assert logged[0]["loss"] == pytest.approx(want, rel=1e-4)
    assert logged[-1]["loss"] < logged[0]["loss"]
    # an imported run is a run for the language-model commands too
    code, _, err = cli("generate", src, "--prompt", "the", "--max-new-tokens", "3", "--seed", "1",
                       "--device", "cpu")
    assert code == 0, err

"""Optional extras: a command either refuses up front with the install line or does its whole job and
says in one line what it left out. Each case runs without the package (`without`) and with it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmforge.extras import available


def _text_file(tmp_path: Path) -> Path:
    from conftest import make_english

    path = tmp_path / "a.txt"
    path.write_text("\n\n".join(make_english(30)) + "\n", encoding="utf-8")
    return path


def test_available_sees_a_blocked_package(without):
    assert available("safetensors")
    without("safetensors")
    assert not available("safetensors")


def test_plot_refuses_up_front_without_matplotlib(tmp_path, cli, without):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 2.0}) + "\n")
    without("matplotlib")
    code, _, err = cli("plot", run, "--out", tmp_path / "p.png")
    assert code == 2 and "plotting needs matplotlib" in err and "pip install 'lmforge[plot]'" in err
    assert not (tmp_path / "p.png").exists()


def test_plot_with_matplotlib(tmp_path, cli):
    pytest.importorskip("matplotlib")
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 2.0}) + "\n")
    assert cli("plot", run, "--out", tmp_path / "p.png")[0] == 0
    assert (tmp_path / "p.png").stat().st_size > 0


@pytest.mark.parametrize("package,extra,args", [
    ("pyarrow", "parquet", ["--set", "corpus.format=parquet"]),
    ("datasketch", "dedup", []),
])
def test_corpus_build_refuses_up_front(tmp_path, cli, without, package, extra, args):
    src = _text_file(tmp_path)
    without(package)
    code, _, err = cli("corpus", "build", "--input", src, "--out", tmp_path / "c", "--quiet", *args)
    assert code == 2 and f"pip install 'lmforge[{extra}]'" in err, err
    assert not (tmp_path / "c").exists()


def test_corpus_build_refuses_a_parquet_input_before_reading_the_first(tmp_path, cli, without):
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    folder = tmp_path / "in"
    folder.mkdir()
    pq.write_table(pa.table({"text": ["one document of text here", "another document of text"]}),
                   folder / "b.parquet")
    src = _text_file(tmp_path)
    without("pyarrow")
    code, out, err = cli("corpus", "build", "--input", src, folder, "--out", tmp_path / "c", "--quiet")
    assert code == 2 and "b.parquet needs pyarrow" in err and "corpus:" not in out
    assert not (tmp_path / "c").exists()


def test_corpus_build_refuses_hf_inputs_without_datasets(tmp_path, cli, without):
    without("datasets")
    code, _, err = cli("corpus", "build", "--input", _text_file(tmp_path), "hf:wikitext:wikitext-2-raw-v1:train",
                       "--out", tmp_path / "c", "--quiet")
    assert code == 2 and "needs datasets" in err and "pip install 'lmforge[hf]'" in err


def test_parquet_corpus_needs_pyarrow_to_be_read(tmp_path, cli, without):
    pytest.importorskip("pyarrow")
    src = _text_file(tmp_path)
    assert cli("corpus", "build", "--input", src, "--out", tmp_path / "c", "--quiet", "--set",
               "corpus.format=parquet", "--set", "corpus.dedup_near=false")[0] == 0
    without("pyarrow")
    code, _, err = cli("tokenizer", "train", "--corpus", tmp_path / "c", "--kind", "char", "--out",
                       tmp_path / "tok", "--quiet")
    assert code == 2 and "reading the parquet corpus" in err and "lmforge[parquet]" in err
    assert not (tmp_path / "tok").exists()


def test_pretrain_without_tensorboard_says_so_and_trains(tiny_shards, tmp_path, cli, without):
    args = ["pretrain", "--config", "gpt-tiny", "--data", tiny_shards, "--set", "train.max_steps=2",
            "--set", "train.progress=false", "--set", "model.n_layer=1", "--set", "model.d_model=32"]
    without("tensorboard")
    code, out, _ = cli(*args, "--out", tmp_path / "plain")
    assert code == 0 and "TensorBoard logging skipped: tensorboard is not installed" in out
    assert (tmp_path / "plain" / "metrics.jsonl").is_file() and not (tmp_path / "plain" / "tensorboard").exists()


def test_import_hf_without_tokenizer_json_needs_transformers(tmp_path, cli, without):
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"],
                                                    "n_embd": 8, "n_layer": 1, "n_head": 2, "n_positions": 8,
                                                    "vocab_size": 10}))
    (folder / "vocab.json").write_text("{}")
    without("transformers")
    code, _, err = cli("import-hf", folder, "--out", tmp_path / "run")
    assert code == 2 and "no tokenizer.json" in err and "pip install 'lmforge[hf]'" in err
    assert not (tmp_path / "run").exists()

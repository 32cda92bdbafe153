"""Sequence to sequence end to end on tiny runs: span-corruption pretraining (exact resume), fine-tuning
on pairs, metrics equal to sacrebleu and rouge-score called directly, `generate` and `eval` on the run,
an export that `transformers` decodes the same way, and bad input refused in one line."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from conftest import make_english, make_shards

from lmforge.evaluate import text_metrics

WORDS = "the model reads text and learns to predict next token".split()


def write_pairs(path: Path, n: int, seed: int, header: str = "source\ttarget") -> Path:
    """A toy task: the target is the source's words reversed."""
    rng = random.Random(seed)
    lines = [header]
    for _ in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(3, 6))]
        lines.append(" ".join(words) + "\t" + " ".join(reversed(words)))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def s2s(tmp_path_factory):
    """A tokenizer with 20 sentinels, shards, a t5 pretrained for a few steps, and pair files."""
    from lmforge.cli import main
    from lmforge.tokenizer import TokenizerConfig

    root = tmp_path_factory.mktemp("s2s")
    shards = make_shards(root, make_english(300, seed=2), 30, TokenizerConfig(kind="bpe", vocab_size=400,
                                                                              extra_ids=20))
    assert main(["pretrain", "--config", "t5-tiny", "--data", str(shards), "--out", str(root / "pre"),
                 *PRETRAIN]) == 0
    return {"root": root, "shards": shards, "pre": root / "pre", "train": write_pairs(root / "train.tsv", 200, 0),
            "dev": write_pairs(root / "dev.tsv", 16, 1), "test": write_pairs(root / "test.tsv", 16, 2)}


PRETRAIN = ["--set", "train.max_steps=8", "--set", "train.batch_size=8", "--set", "data.seq_len=64",
            "--set", "train.eval_every=4", "--set", "train.save_every=4", "--set", "train.eval_batches=2",
            "--set", "train.progress=false"]


def _same_weights(a: Path, b: Path) -> None:
    from safetensors.torch import load_file

    x, y = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert x.keys() == y.keys() and all((x[k] == y[k]).all() for k in x)


def test_span_corruption_pretraining_resumes_exactly(s2s, tmp_path, cli):
    half = tmp_path / "half"
    code, _, err = cli("pretrain", "--config", "t5-tiny", "--data", s2s["shards"], "--out", half, *PRETRAIN,
                       "--set", "train.max_steps=4")
    assert code == 0, err
    assert cli("pretrain", "--resume", half, "--set", "train.max_steps=8")[0] == 0
    _same_weights(s2s["pre"] / "checkpoints" / "step-000008", half / "checkpoints" / "step-000008")
    metrics = [json.loads(x) for x in (s2s["pre"] / "metrics.jsonl").read_text().splitlines()]
    val = [m for m in metrics if "val_loss" in m or "val_perplexity" in m]
    assert val, metrics[-1]


def test_span_corruption_needs_sentinels(tiny_shards, tmp_path, cli):
    code, _, err = cli("pretrain", "--config", "t5-tiny", "--data", tiny_shards, "--out", tmp_path / "r", *PRETRAIN)
    assert code == 2 and "tokenizer.extra_ids=100" in err and err.count("\n") == 1, err
    assert not (tmp_path / "r").exists()


FINETUNE = ["--max_steps", "40", "--eval_steps", "20", "--per_device_train_batch_size", "16", "--learning_rate",
            "3e-3", "--max_target_length", "16", "--num_beams", "2", "--quiet"]


@pytest.fixture(scope="module")
def tuned(s2s):
    from lmforge.cli import main

    out = s2s["root"] / "ft"
    assert main(["finetune", "--task", "seq2seq", "--from", str(s2s["pre"]), "--train", str(s2s["train"]), "--dev",
                 str(s2s["dev"]), "--test", str(s2s["test"]), "--out", str(out), "--source_prefix", "reverse: ",
                 *FINETUNE]) == 0
    return out


def test_fine_tuned_metrics_equal_the_libraries_on_its_own_outputs(tuned, s2s):
    import sacrebleu

    results = json.loads((tuned / "eval_results.json").read_text())
    test = results["test"]
    rows = [json.loads(x) for x in (tuned / "predictions-test.jsonl").read_text().splitlines()]
    assert len(rows) == 16 and test["pairs"] == 16
    hyps, refs = [r["output"] for r in rows], [r["target"] for r in rows]
    assert test["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs], tokenize="13a").score, abs=1e-9)
    assert test["bleu_signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a")
    assert test["decoding"]["num_beams"] == 2 and test["decoding"]["max_new_tokens"] == 16
    assert test["loss"] < results["dev"]["loss"] + 2 and test["token_accuracy"] > 0.2  # it learned something


def test_generate_and_eval_on_the_run(tuned, s2s, cli, tmp_path):
    rows = [json.loads(x) for x in (tuned / "predictions-test.jsonl").read_text().splitlines()]
    code, out, err = cli("generate", tuned, "--input", rows[0]["source"], "--input", rows[1]["source"])
    assert code == 0, err
    assert out.splitlines() == [rows[0]["output"], rows[1]["output"]]
    assert "beam search (2 beams), max_new_tokens=16 (the run's finetune settings)" in err
    code, _, err = cli("generate", tuned, "--input-file", s2s["test"], "--output", tmp_path / "o.jsonl", "--quiet")
    assert code == 0, err
    written = [json.loads(x) for x in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert [w["output"] for w in written] == [r["output"] for r in rows]
    code, out, err = cli("eval", tuned, "--data", s2s["test"])
    assert code == 0, err
    results = json.loads((tuned / "eval_results.json").read_text())["test"]
    assert f"{results['bleu']:.4f}" in out or json.loads(out)["bleu"] == pytest.approx(results["bleu"])


def test_decoding_flags_belong_to_their_model(tuned, s2s, cli):
    code, _, err = cli("generate", tuned, "--prompt", "the model")
    assert code == 2 and "--input" in err
    code, _, err = cli("generate", tuned, "--input", "x", "--temperature", "0.7")
    assert code == 2 and "--do-sample" in err
    code, out, err = cli("generate", tuned, "--input", "the model", "--do-sample", "--seed", "1", "--max-new-tokens",
                         "3")
    assert code == 0 and "sampling, max_new_tokens=3 (this command)" in err, err


def test_export_decodes_the_same_in_transformers(tuned, tmp_path):
    transformers = pytest.importorskip("transformers")
    import torch

    from lmforge.interop import export_hf

    rows = [json.loads(x) for x in (tuned / "predictions-test.jsonl").read_text().splitlines()][:6]
    export_hf(tuned, tmp_path / "hf")
    model = transformers.AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "hf").eval()
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    for row in rows:
        with torch.no_grad():  # the exported generation_config and prefix carry the run's decoding
            ids = model.generate(**tok(model.config.prefix + row["source"], return_tensors="pt"))
        assert tok.decode(ids[0], skip_special_tokens=True) == row["output"]


def test_fine_tuning_resumes_exactly(s2s, tmp_path, cli):
    args = ["finetune", "--task", "seq2seq", "--from", s2s["pre"], "--train", s2s["train"], "--dev", s2s["dev"],
            "--max_steps", "8", "--eval_steps", "4", "--per_device_train_batch_size", "8", "--quiet"]
    assert cli(*args, "--out", tmp_path / "full")[0] == 0
    assert cli(*args, "--out", tmp_path / "half", "--set", "finetune.max_steps=4")[0] == 0
    code, _, err = cli("finetune", "--resume", tmp_path / "half", "--max_steps", "8", "--quiet")
    assert code == 0, err
    _same_weights(tmp_path / "full" / "checkpoints" / "step-000008", tmp_path / "half" / "checkpoints" /
                  "step-000008")


def test_bad_pairs_get_one_line_naming_the_file(s2s, tmp_path, cli):
    base = ["finetune", "--task", "seq2seq", "--from", s2s["pre"], "--dev", s2s["dev"], "--max_steps", "1",
            "--quiet"]
    no_target = tmp_path / "no_target.tsv"
    no_target.write_text("source\tnotes\na b\tc\n")
    code, _, err = cli(*base, "--train", no_target, "--out", tmp_path / "a", "--target_column", "target")
    assert code == 2 and "no_target.tsv: no column 'target'" in err and "'notes'" in err, err
    empty = tmp_path / "empty.tsv"
    empty.write_text("source\ttarget\na b\tb a\nc d\t\n")
    code, _, err = cli(*base, "--train", empty, "--out", tmp_path / "b")
    assert code == 2 and "empty.tsv:3: empty target" in err and err.count("\n") == 1, err
    code, out, err = cli("finetune", "--task", "seq2seq", "--from", s2s["pre"], "--train", s2s["train"], "--dev",
                         s2s["dev"], "--max_steps", "1", "--quiet", "--max_length", "8", "--out", tmp_path / "c")
    assert code == 0 and "train.tsv: 200 pairs" in out and "sources truncated to 8 tokens" in out, err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_seq2seq_needs_an_encoder_decoder(tiny_shards, tmp_path, cli, s2s):
    assert cli("pretrain", "--config", "gpt-tiny", "--data", tiny_shards, "--out", tmp_path / "gpt", "--set",
               "train.max_steps=1", "--set", "train.progress=false")[0] == 0
    code, _, err = cli("finetune", "--task", "seq2seq", "--from", tmp_path / "gpt", "--train", s2s["train"], "--dev",
                       s2s["dev"], "--out", tmp_path / "x", "--quiet")
    assert code == 2 and "encoder-decoder" in err and err.count("\n") == 1, err


def test_text_metrics_equal_sacrebleu_and_rouge_score():
    import sacrebleu
    from rouge_score import rouge_scorer

    hyps = ["我们今天学习语言模型。", "这是一个例子"]
    refs = ["我们今天学习模型训练。", "这是一个很好的例子"]
    m = text_metrics(hyps, refs)
    assert m["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs], tokenize="zh").score)
    assert m["chrf"] == pytest.approx(sacrebleu.corpus_chrf(hyps, [refs]).score)
    assert "tok:zh" in m["bleu_signature"] and "tokenize:chars" in m["rouge_signature"]
    # character ROUGE-L by hand: the LCS of 我们今天学习语言模型。 and 我们今天学习模型训练。 is 我们今天学习模型。
    first = 9 / 11
    second_lcs = 6  # 这是一个 + 例子
    second = 2 * (second_lcs / 6) * (second_lcs / 9) / (second_lcs / 6 + second_lcs / 9)
    assert m["rougeL"] == pytest.approx(100 * (first + second) / 2)
    english = text_metrics(["the cats sat on the mat"], ["the cat sat on the mat"])
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    direct = scorer.score("the cat sat on the mat", "the cats sat on the mat")
    assert english["rouge2"] == pytest.approx(100 * direct["rouge2"].fmeasure)
    assert english["rouge1"] == pytest.approx(100.0)  # stemmed: cats -> cat
    assert "tok:13a" in english["bleu_signature"]

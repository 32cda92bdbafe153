"""`lmforge finetune`, `classify` and `eval` end to end through the CLI, from tiny pretrained runs.

The labeled data is generated: filler words with one marker word whose identity decides the label, so
a tiny model can only pass the accuracy bar by actually learning from the training set.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from conftest import _WORDS, make_english, make_shards

POS, NEG = ("gains", "quickly"), ("before", "decays")
FILL = [w for w in _WORDS if w not in (*POS, *NEG)]


def _rows(n: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        positive = rng.random() < 0.5
        words = [rng.choice(FILL) for _ in range(rng.randint(3, 8))]
        words.insert(rng.randint(0, len(words)), rng.choice(POS if positive else NEG))
        rows.append((" ".join(words), "positive" if positive else "negative"))
    return rows


def _write_tsv(path: Path, rows, header=("sentence", "label")) -> Path:
    lines = ["\t".join(header)] if header else []
    path.write_text("\n".join(lines + ["\t".join(r) for r in rows]) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Tiny pretrained GPT and BERT runs (word tokenizer) made with `lmforge pretrain`, plus data files."""
    from lmforge.cli import main
    from lmforge.tokenizer import TokenizerConfig

    root = tmp_path_factory.mktemp("finetune")
    make_shards(root, make_english(200, seed=1), 20, TokenizerConfig(kind="word", vocab_size=200, min_frequency=1))
    out = {}
    for kind in ("gpt", "bert"):
        extra = "dropout = 0.0\nattn_dropout = 0.0\n" if kind == "bert" else ""
        (root / f"{kind}.toml").write_text(
            f'[model]\nkind = "{kind}"\ncontext_len = 32\nn_layer = 1\nn_head = 2\nd_model = 32\n{extra}'
            "[train]\nmax_steps = 4\nbatch_size = 8\neval_every = 4\neval_batches = 1\nsave_every = 4\n"
            "progress = false\n[schedule]\nwarmup_steps = 1\n"
        )
        assert (
            main(
                [
                    "pretrain",
                    "--config",
                    str(root / f"{kind}.toml"),
                    "--data",
                    str(root / "shards"),
                    "--out",
                    str(root / f"run_{kind}"),
                ]
            )
            == 0
        )
        out[kind] = root / f"run_{kind}"
    out["train"] = _write_tsv(root / "train.tsv", _rows(320, 0))
    out["dev"] = _write_tsv(root / "dev.tsv", _rows(100, 1))
    return out


FAST = ["--learning_rate", "5e-3", "--per-device-train-batch-size", "16", "--eval_steps", "20", "--quiet"]


@pytest.mark.parametrize("kind", ["gpt", "bert"])
def test_finetune_learns_and_the_run_classifies(runs, tmp_path, cli, kind):
    out = tmp_path / "ft"
    code, _, err = cli(
        "finetune",
        "--from",
        runs[kind],
        "--train",
        runs["train"],
        "--dev",
        runs["dev"],
        "--test",
        runs["dev"],
        "--out",
        out,
        "--max_steps",
        "60",
        *FAST,
    )
    assert code == 0, err
    results = json.loads((out / "eval_results.json").read_text())
    assert results["dev"]["accuracy"] > 0.9, results["dev"]
    assert results["test"]["confusion"] == results["dev"]["confusion"]
    assert sum(map(sum, results["dev"]["confusion"])) == 100
    label_map = json.loads((out / "label_map.json").read_text())
    assert label_map["labels"] == ["negative", "positive"]
    assert "[finetune]" in (out / "config.toml").read_text()
    evals = [
        json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines() if "val_accuracy" in ln
    ]
    assert [e["step"] for e in evals] == [20, 40, 60]

    code, stdout, err = cli("classify", out, "the model gains text", "data decays the model")
    assert code == 0, err
    preds = [json.loads(ln) for ln in stdout.splitlines()]
    assert [p["label"] for p in preds] == ["positive", "negative"]
    assert abs(sum(preds[0]["probs"].values()) - 1) < 1e-5

    texts = tmp_path / "texts.jsonl"
    texts.write_text(
        "".join(json.dumps({"id": i, "text": t}) + "\n" for i, (t, _) in enumerate(_rows(30, 5)))
    )
    code, _, err = cli("classify", out, "--input", texts, "--output", tmp_path / "preds.jsonl", "--quiet")
    assert code == 0, err
    assert len((tmp_path / "preds.jsonl").read_text().splitlines()) == 30

    code, stdout, err = cli("eval", out, "--data", runs["dev"])
    assert code == 0, err
    assert f'"accuracy": {results["dev"]["accuracy"]}' in stdout


def test_python_api_matches_the_saved_label_map(runs, tmp_path, cli):
    from lmforge.tasks import load_run
    from lmforge.tasks.classify import classify, labels_of

    out = tmp_path / "ft"
    rows = [(t, "1" if lab == "positive" else "0") for t, lab in _rows(320, 0)]
    dev = [(t, "1" if lab == "positive" else "0") for t, lab in _rows(60, 1)]
    jsonl = tmp_path / "train.jsonl"
    jsonl.write_text("".join(json.dumps({"text": t, "label": int(lab)}) + "\n" for t, lab in rows))
    code, _, err = cli(
        "finetune",
        "--from",
        runs["gpt"],
        "--train",
        jsonl,
        "--dev",
        _write_tsv(tmp_path / "dev.tsv", dev, ("text", "label")),
        "--out",
        out,
        "--max_steps",
        "60",
        *FAST,
    )
    assert code == 0, err
    clf = load_run(out)
    assert labels_of(clf) == ["0", "1"]
    preds = classify(clf, ["the model gains text", "data decays the model"])
    assert [p["label"] for p in preds] == ["1", "0"]


def test_text_pairs(runs, tmp_path, cli):
    """The first text holds a random marker, the second the one that decides: only pairs can pass."""
    rng = random.Random(3)

    def pairs(n):
        rows = []
        for t, label in _rows(n, rng.randint(0, 999)):
            rows.append((f"{rng.choice(FILL)} {rng.choice(POS + NEG)} {rng.choice(FILL)}", t, label))
        return rows

    header = ("sentence1", "sentence2", "label")
    train = _write_tsv(tmp_path / "train.tsv", pairs(320), header)
    dev = _write_tsv(tmp_path / "dev.tsv", pairs(100), header)
    out = tmp_path / "ft"
    code, log, err = cli(
        "finetune",
        "--from",
        runs["bert"],
        "--train",
        train,
        "--dev",
        dev,
        "--out",
        out,
        "--max_steps",
        "60",
        *FAST,
    )
    assert code == 0, err
    assert "text_pair column 'sentence2'" in log
    results = json.loads((out / "eval_results.json").read_text())
    assert results["dev"]["accuracy"] > 0.9, results["dev"]
    code, stdout, err = cli("classify", out, "the decays model", "--pair", "data gains")
    assert code == 0, err
    pred = json.loads(stdout)
    assert pred["text_pair"] == "data gains" and pred["label"] == "positive"


def test_resume_gives_the_same_weights(runs, tmp_path, cli):
    from safetensors.torch import load_file

    args = [
        "--from",
        runs["gpt"],
        "--train",
        runs["train"],
        "--dev",
        runs["dev"],
        "--max_steps",
        "20",
        "--eval_steps",
        "10",
        "--learning_rate",
        "5e-3",
        "--per_device_train_batch_size",
        "16",
        "--quiet",
    ]
    assert cli("finetune", *args, "--out", tmp_path / "full")[0] == 0
    assert cli("finetune", *args, "--out", tmp_path / "half", "--set", "finetune.max_steps=10")[0] == 0
    code, _, err = cli("finetune", "--resume", tmp_path / "half", "--max_steps", "20", "--quiet")
    assert code == 0, err
    a = load_file(tmp_path / "full" / "checkpoints" / "step-000020" / "model.safetensors")
    b = load_file(tmp_path / "half" / "checkpoints" / "step-000020" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert (a[k] == b[k]).all(), k


def test_early_stopping_and_best_by_metric(runs, tmp_path, cli):
    out = tmp_path / "ft"
    code, log, err = cli(
        "finetune",
        "--from",
        runs["gpt"],
        "--train",
        runs["train"],
        "--dev",
        runs["dev"],
        "--out",
        out,
        "--max_steps",
        "200",
        "--eval_steps",
        "5",
        "--early_stopping_patience",
        "1",
        "--learning_rate",
        "1e-6",
        "--per_device_train_batch_size",
        "16",
        "--quiet",
        "--metric_for_best_model",
        "accuracy",
    )
    assert code == 0, err
    assert "early stopping" in log
    results = json.loads((out / "eval_results.json").read_text())
    assert results["stopped"] == "early_stopping"
    evals = [
        json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines() if "val_accuracy" in ln
    ]
    assert evals[-1]["step"] < 200
    best = max(evals, key=lambda e: (e["val_accuracy"], -e["step"]))
    assert results["checkpoint"] == f"step-{best['step']:06d}"


def test_settings_from_toml_and_frozen_encoder(runs, tmp_path, cli):
    from safetensors.torch import load_file

    cfg = tmp_path / "ft.toml"
    cfg.write_text(
        '[finetune]\nmax_steps = 6\neval_steps = 3\nfreeze_encoder = true\nclass_weights = "balanced"\n'
        "layerwise_lr_decay = 0.8\nlearning_rate = 1e-2\nper_device_train_batch_size = 8\n"
    )
    out = tmp_path / "ft"
    code, _, err = cli(
        "finetune",
        "--from",
        runs["bert"],
        "--train",
        runs["train"],
        "--dev",
        runs["dev"],
        "--out",
        out,
        "--config",
        cfg,
        "--set",
        "finetune.seed=7",
        "--quiet",
    )
    assert code == 0, err
    text = (out / "config.toml").read_text()
    assert "seed = 7" in text and "freeze_encoder = true" in text
    before = load_file(next((runs["bert"] / "checkpoints").iterdir()) / "model.safetensors")
    after = load_file(out / "checkpoints" / "step-000006" / "model.safetensors")
    assert (after["backbone.blocks.0.attn.query.weight"] == before["blocks.0.attn.query.weight"]).all()
    assert not (after["backbone.pooler.weight"] == before["pooler.weight"]).all()


# ----------------------------------------------------------------------------------------------------
# Bad input


def _finetune(cli, runs, tmp_path, train, dev=None, *extra):
    return cli(
        "finetune",
        "--from",
        runs["gpt"],
        "--train",
        train,
        "--dev",
        dev or runs["dev"],
        "--out",
        tmp_path / "ft",
        "--max_steps",
        "2",
        "--quiet",
        *extra,
    )


def test_missing_column_lists_the_columns(runs, tmp_path, cli):
    code, _, err = _finetune(cli, runs, tmp_path, runs["train"], None, "--label_column", "sentiment")
    assert code == 2 and "no column 'sentiment'" in err and "'sentence', 'label'" in err


def test_unseen_dev_label(runs, tmp_path, cli):
    dev = _write_tsv(tmp_path / "dev.tsv", [("the model gains", "positive"), ("data text", "neutral")])
    code, _, err = _finetune(cli, runs, tmp_path, runs["train"], dev)
    assert code == 2 and "dev.tsv:3: label 'neutral' never occurs in the training data" in err


def test_empty_texts_are_skipped_and_counted(runs, tmp_path, cli):
    rows = _rows(40, 0) + [("", "positive"), ("   ", "negative")]
    code, log, err = _finetune(cli, runs, tmp_path, _write_tsv(tmp_path / "train.tsv", rows))
    assert code == 0, err
    assert "40 examples" in log and "skipped 2 empty texts" in log


def test_mixed_column_counts_name_file_and_line(runs, tmp_path, cli):
    bad = tmp_path / "train.tsv"
    bad.write_text("sentence\tlabel\nthe model gains\tpositive\ndata\tdecays\tnegative\n")
    code, _, err = _finetune(cli, runs, tmp_path, bad)
    assert code == 2 and "train.tsv:3: 3 columns, but the header has 2" in err


def test_missing_tokenizer(runs, tmp_path, cli):
    import shutil

    broken = tmp_path / "run"
    shutil.copytree(runs["gpt"], broken)
    shutil.rmtree(broken / "tokenizer")
    code, _, err = cli(
        "finetune",
        "--from",
        broken,
        "--train",
        runs["train"],
        "--dev",
        runs["dev"],
        "--out",
        tmp_path / "ft",
        "--quiet",
    )
    assert code == 2 and "has no tokenizer/ folder" in err


def test_single_class(runs, tmp_path, cli):
    rows = [(t, "positive") for t, _ in _rows(20, 0)]
    code, _, err = _finetune(cli, runs, tmp_path, _write_tsv(tmp_path / "train.tsv", rows))
    assert code == 2 and "holds one class only ('positive')" in err


def test_logging_dir_needs_tensorboard(runs, tmp_path, cli, without):
    """A TensorBoard folder asked for by name is refused up front on a core install, not left empty."""
    without("tensorboard")
    code, _, err = _finetune(cli, runs, tmp_path, runs["train"], None, "--logging_dir", tmp_path / "tb")
    assert code == 2 and "finetune.logging_dir" in err and "pip install 'lmforge[tensorboard]'" in err
    assert not (tmp_path / "ft").exists() and not (tmp_path / "tb").exists()


def test_loop_settings_fine_tuning_does_not_derive_are_honoured(runs, tmp_path, cli):
    """--set train.max_minutes and --set optim.* (those [finetune] does not cover) take effect."""
    import torch

    from lmforge.checkpoint import find_checkpoint

    code, out, err = _finetune(cli, runs, tmp_path, runs["train"], None, "--max_steps", "50", "--set",
                               "train.max_minutes=0.000001", "--set", "optim.name=sgd", "--set", "optim.momentum=0.5")
    assert code == 0, err
    assert "stopped by train.max_minutes at step 1" in out + err
    state = torch.load(find_checkpoint(tmp_path / "ft", "latest") / "trainer_state.pt", weights_only=True)
    group = state["optimizer"]["param_groups"][0]
    assert "momentum" in group and group["momentum"] == 0.5 and "betas" not in group  # SGD, not AdamW
    saved = (tmp_path / "ft" / "config.toml").read_text()
    assert 'name = "sgd"' in saved and "max_minutes = 1e-06" in saved


@pytest.mark.parametrize("setting,message", [
    ("optim.lr=1e-3", "'optim.lr' is derived when fine-tuning: set finetune.learning_rate instead (--learning_rate)"),
    ("train.max_steps=3", "'train.max_steps' is derived when fine-tuning: set finetune.max_steps"),
    ("train.eval_batches=2", "fine-tuning always evaluates the whole dev file"),
    ("schedule.warmup_steps=9", "set finetune.warmup_steps instead"),
    ("data.path=elsewhere", "unknown key 'data'"),
    ("mlm.mask_prob=0.2", "unknown key 'mlm'"),
])
def test_loop_settings_fine_tuning_derives_are_refused(runs, tmp_path, cli, setting, message):
    code, _, err = _finetune(cli, runs, tmp_path, runs["train"], None, "--set", setting)
    assert code == 2 and message in err, err
    assert not (tmp_path / "ft").exists()

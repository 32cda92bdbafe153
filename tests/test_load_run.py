"""`load_run` / `read_config` on every kind of run folder, and the commands that take a run.

A run's config.toml names its task: a fine-tuned run's reads as a `ClassifyConfig` and loads with its
head and labels, and the language-model commands refuse it with a message that names the fix.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lmforge.errors import LmforgeError
from lmforge.runs import PretrainConfig
from lmforge.tasks import LoadedRun, load_run, read_config
from lmforge.tasks.classify import ClassifyConfig, classify, labels_of

TINY = ("[model]\nkind = \"{kind}\"\ncontext_len = 32\nn_layer = 1\nn_head = 2\nd_model = 16\n{extra}\n"
        "[train]\nmax_steps = 2\nbatch_size = 4\neval_every = 0\neval_batches = 1\nsave_every = 2\n"
        "progress = false\n\n[schedule]\nwarmup_steps = 1\n\n[runtime]\ndevice = \"cpu\"\n")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_shards) -> dict[str, Path]:
    """Tiny pretrained GPT and BERT runs, a GPT classifier fine-tuned from the first, a labeled file."""
    from lmforge.cli import main

    root = tmp_path_factory.mktemp("load_run")
    out = {}
    for kind, extra in (("gpt", ""), ("bert", "dropout = 0.0\nattn_dropout = 0.0\n")):
        (root / f"{kind}.toml").write_text(TINY.format(kind=kind, extra=extra))
        args = ["pretrain", "--config", root / f"{kind}.toml", "--data", tiny_shards, "--out", root / kind]
        assert main([str(a) for a in args]) == 0
        out[kind] = root / kind
    rows = [(f"the model reads {w} text", lab) for w, lab in (("good", "yes"), ("bad", "no"))] * 8
    (root / "data.tsv").write_text("sentence\tlabel\n" + "".join(f"{t}\t{lab}\n" for t, lab in rows))
    args = ["finetune", "--from", out["gpt"], "--train", root / "data.tsv", "--dev", root / "data.tsv",
            "--out", root / "clf", "--max_steps", "2", "--per-device-train-batch-size", "8", "--quiet"]
    assert main([str(a) for a in args]) == 0
    out["clf"], out["data"] = root / "clf", root / "data.tsv"
    return out


def test_config_class_follows_the_folder(runs):
    gpt = read_config(runs["gpt"])
    assert type(gpt) is PretrainConfig and gpt.task == "causal_lm"
    cfg = read_config(runs["clf"])
    assert isinstance(cfg, ClassifyConfig) and cfg.task == "classify" and cfg.finetune.from_run == str(runs["gpt"])
    assert read_config(runs["clf"], ["finetune.seed=7"]).finetune.seed == 7
    assert read_config(runs["bert"]).task == "masked_lm" and read_config(runs["bert"]).mlm.mask_prob == 0.15


def test_a_config_written_before_tasks_had_names_still_reads(runs, tmp_path):
    """Old run folders have no `task` key and every section ([mlm] in a GPT run, [data] in a classifier)."""
    import shutil

    from lmforge.config import dumps_toml, read_toml

    for name, extra in (("gpt", {"mlm": {"mask_prob": 0.15}}), ("clf", {"data": {"path": ""}})):
        old = tmp_path / name
        shutil.copytree(runs[name], old)
        raw = read_toml(old / "config.toml")
        del raw["task"]
        (old / "config.toml").write_text(dumps_toml({**raw, **extra}))
        assert read_config(old) == read_config(runs[name])


def test_load_run_gives_the_classifier_of_a_finetuned_run(runs):
    from lmforge.models.heads import SequenceClassifier

    run = load_run(runs["clf"])
    assert isinstance(run, LoadedRun) and run.task.name == "classify"
    assert isinstance(run.model, SequenceClassifier) and not run.model.training
    assert labels_of(run) == json.loads((runs["clf"] / "label_map.json").read_text())["labels"]
    ref = load_run(runs["clf"], "latest")
    ids = torch.tensor([run.tokenizer.encode("the model reads good text")])
    with torch.no_grad():
        assert torch.equal(run.model(ids), ref.model(ids))  # one checkpoint: best is the latest
    assert classify(run, ["the model reads bad text"])[0]["label"] in labels_of(run)
    lm = load_run(runs["gpt"])
    assert lm.task.name == "causal_lm" and not isinstance(lm.model, SequenceClassifier)
    with pytest.raises(LmforgeError, match="not a classifier"):
        classify(lm, ["text"])


def test_language_model_commands_refuse_a_classifier(runs, cli):
    clf = runs["clf"]
    for args in (("generate", clf, "--prompt", "the", "--max-new-tokens", "2"),
                 ("fill-mask", clf, "the [MASK]")):
        code, _, err = cli(*args)
        assert code == 2 and "gpt fine-tuned for classify, not a language model" in err, err
        assert f"pretrained run is {runs['gpt']}" in err and "lmforge classify" in err
    code, _, err = cli("pretrain", "--resume", clf)
    assert code == 2 and "lmforge finetune --resume" in err, err
    from lmforge.pipeline import evaluate_run

    with pytest.raises(LmforgeError, match="pass --data FILE"):
        evaluate_run(clf)
    code, _, err = cli("eval", clf, "--data", runs["data"], "--split", "val")
    assert code == 2 and "--split and --batches are for token shards" in err


def test_eval_and_export_work_on_a_classifier(runs, cli, tmp_path):
    code, out, err = cli("eval", runs["clf"], "--data", runs["data"], "--device", "cpu")
    assert code == 0 and '"accuracy"' in out, err
    code, out, err = cli("export", runs["clf"], "--out", tmp_path / "hf")
    assert code == 0 and "GPT2ForSequenceClassification" in out, err
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["id2label"]


def test_language_model_commands_still_take_their_runs(runs, cli):
    code, _, err = cli("generate", runs["gpt"], "--prompt", "the", "--max-new-tokens", "3", "--seed", "1",
                       "--device", "cpu")
    assert code == 0, err
    code, out, err = cli("fill-mask", runs["bert"], "the <|mask|>", "--device", "cpu")
    assert code == 0 and "<|mask|>:" in out, err
    code, _, err = cli("fill-mask", runs["gpt"], "the <|mask|>")
    assert code == 2 and "not a masked LM" in err

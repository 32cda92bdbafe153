"""Extractive QA end to end on a tiny BERT: SQuAD-format files in, official-style EM/F1 out, contexts
longer than the model split with doc_stride, `lmforge qa` on a raw question, and bad input refused."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

NAMES = ["alice", "bob", "carol", "dave", "erin", "frank"]
CITIES = ["paris", "london", "berlin", "madrid", "rome", "oslo"]
FILLER = "the model reads text and learns to predict the next token well".split()


def example(rng: random.Random, i: int, long: bool = False) -> dict:
    name, city = rng.choice(NAMES), rng.choice(CITIES)
    before = " ".join(rng.choices(FILLER, k=rng.randint(14, 20)) if long else rng.sample(FILLER, rng.randint(1, 4)))
    after = " ".join(rng.sample(FILLER, rng.randint(1, 3)))
    context = f"{before} . {name} lives in {city} now . {after} ."
    start = context.index(f" {city} now") + 1
    return {"id": f"q{i}", "question": f"where does {name} live ?", "context": context,
            "answers": {"text": [city], "answer_start": [start]}}


def write_squad(path: Path, n: int, seed: int, long: bool = False) -> Path:
    rng = random.Random(seed)
    rows = [example(rng, i, long) for i in range(n)]
    paragraphs = [{"context": r["context"], "qas": [{"id": r["id"], "question": r["question"], "answers": [
        {"text": r["answers"]["text"][0], "answer_start": r["answers"]["answer_start"][0]}]}]} for r in rows]
    path.write_text(json.dumps({"version": "1.1", "data": [{"title": "toy", "paragraphs": paragraphs}]}))
    return path


@pytest.fixture(scope="module")
def qa_runs(tmp_path_factory):
    from conftest import make_shards

    from lmforge.cli import main
    from lmforge.tokenizer import TokenizerConfig

    root = tmp_path_factory.mktemp("qa")
    rng = random.Random(5)
    docs = [example(rng, i)["question"] + " " + example(rng, i)["context"] for i in range(300)]
    make_shards(root, docs, 30, TokenizerConfig(kind="bpe", vocab_size=300))
    (root / "bert.toml").write_text(
        '[model]\nkind = "bert"\ncontext_len = 32\nn_layer = 2\nn_head = 2\nd_model = 32\ndropout = 0.0\n'
        "attn_dropout = 0.0\n[train]\nmax_steps = 4\nbatch_size = 8\neval_every = 4\neval_batches = 1\n"
        "save_every = 4\nprogress = false\n[data]\nseq_len = 32\n")
    assert main(["pretrain", "--config", str(root / "bert.toml"), "--data", str(root / "shards"), "--out",
                 str(root / "pre")]) == 0
    jsonl = root / "dev.jsonl"
    jsonl.write_text("".join(json.dumps(example(random.Random(i), i)) + "\n" for i in range(40)))
    return {"pre": root / "pre", "train": write_squad(root / "train.json", 300, 0), "dev": jsonl,
            "long": write_squad(root / "long.json", 30, 2, long=True)}


def test_qa_learns_scores_like_squad_and_answers(qa_runs, tmp_path, cli):
    out = tmp_path / "qa"
    code, stdout, err = cli("finetune", "--task", "qa", "--from", qa_runs["pre"], "--train", qa_runs["train"],
                            "--dev", qa_runs["dev"], "--test", qa_runs["long"], "--out", out, "--max_steps", "300",
                            "--learning_rate", "3e-3", "--per_device_train_batch_size", "16", "--eval_steps", "150",
                            "--doc_stride", "8", "--max_query_length", "10", "--quiet")
    assert code == 0, err
    said = stdout + err
    assert "contexts split" in said, said
    results = json.loads((out / "eval_results.json").read_text())
    assert results["dev"]["exact_match"] > 80 and results["dev"]["metric_style"] == "squad-v1.1", results["dev"]
    long = results["test"]
    assert long["windows"] > long["questions"] and long["exact_match"] > 60, long
    predictions = json.loads((out / "predictions-test.json").read_text())
    assert len(predictions) == 30

    code, stdout, err = cli("qa", out, "--question", "where does erin live ?", "--context",
                            "the model reads text . erin lives in oslo now . well .", "--json")
    assert code == 0, err
    answer = json.loads(stdout)
    assert (answer["answer"], answer["start"]) == ("oslo", len("the model reads text . erin lives in "))

    code, stdout, err = cli("eval", out, "--data", qa_runs["dev"])
    assert code == 0, err
    assert f"{results['dev']['exact_match']:.1f}"[:3] in stdout
    code, stdout, err = cli("qa", out, "--input", qa_runs["dev"], "--output", tmp_path / "answers.jsonl")
    assert code == 0, err
    answers = [json.loads(ln) for ln in (tmp_path / "answers.jsonl").read_text().splitlines()]
    assert len(answers) == 40 and {"id", "question", "answer", "score", "start", "end"} <= set(answers[0])


def test_qa_refuses_bad_files_in_one_line(qa_runs, tmp_path, cli):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": "x1", "question": "where ?", "context": "in paris now",
                               "answers": {"text": ["london"], "answer_start": [3]}}) + "\n")
    args = ["finetune", "--task", "qa", "--from", qa_runs["pre"], "--out", tmp_path / "x", "--max_query_length", "10",
            "--quiet"]
    code, _, err = cli(*args, "--train", bad, "--dev", qa_runs["dev"])
    assert code == 2 and "x1" in err and str(bad) in err and len(err.strip().splitlines()) == 1, err
    empty = tmp_path / "empty.jsonl"
    empty.write_text(json.dumps({"question": "where ?", "context": "", "answers": {"text": [], "answer_start": []}})
                     + "\n")
    code, _, err = cli(*args, "--train", qa_runs["train"], "--dev", empty)
    assert code == 2 and str(empty) in err, err
    assert not (tmp_path / "x").exists()

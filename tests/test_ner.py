"""Token classification end to end on a tiny BERT: CoNLL IOB1 files in, seqeval scores out, windows for
sentences longer than the model, `lmforge ner` on raw text, `eval`, and bad input refused in one line."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

pytest.importorskip("seqeval")

NAMES = ["alice", "bob", "carol", "dave", "erin"]
SURNAMES = ["smith", "jones", "brown"]
CITIES = [["paris"], ["london"], ["new", "york"], ["berlin"], ["hong", "kong"]]
FILLER = "the model reads text and learns to predict the next token today".split()


def sentence(rng: random.Random, long: bool = False) -> tuple[list[str], list[str]]:
    """Filler words around a person and a place, tagged IOB1 as CoNLL-2003 is (I- starts an entity)."""
    person = [rng.choice(NAMES)] + ([rng.choice(SURNAMES)] if rng.random() < 0.5 else [])
    city = rng.choice(CITIES)
    words, tags = [], []
    for part, tag in ((rng.sample(FILLER, rng.randint(1, 3)), "O"), (person, "I-PER"), (["flew", "to"], "O"),
                      (city, "I-LOC"), (rng.sample(FILLER, rng.randint(8, 12) if long else 2), "O")):
        words += part
        tags += [tag] * len(part)
    return words, tags


def write_conll(path: Path, n: int, seed: int, long: bool = False) -> Path:
    rng = random.Random(seed)
    lines = ["-DOCSTART- -X- -X- O", ""]
    for _ in range(n):
        for w, t in zip(*sentence(rng, long)):
            lines.append(f"{w} NN I-NP {t}")
        lines.append("")
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def ner_runs(tmp_path_factory):
    """A tiny BERT pretrained for a few steps on the sentences' text, and CoNLL files."""
    from conftest import make_shards

    from lmforge.cli import main
    from lmforge.tokenizer import TokenizerConfig

    root = tmp_path_factory.mktemp("ner")
    rng = random.Random(9)
    docs = [" ".join(sentence(rng)[0]) for _ in range(300)]
    make_shards(root, docs, 30, TokenizerConfig(kind="bpe", vocab_size=300))
    (root / "bert.toml").write_text(
        '[model]\nkind = "bert"\ncontext_len = 24\nn_layer = 1\nn_head = 2\nd_model = 32\ndropout = 0.0\n'
        "attn_dropout = 0.0\n[train]\nmax_steps = 4\nbatch_size = 8\neval_every = 4\neval_batches = 1\n"
        "save_every = 4\nprogress = false\n[data]\nseq_len = 24\n")
    assert main(["pretrain", "--config", str(root / "bert.toml"), "--data", str(root / "shards"), "--out",
                 str(root / "pre")]) == 0
    return {"pre": root / "pre", "train": write_conll(root / "train.txt", 240, 0),
            "dev": write_conll(root / "dev.txt", 40, 1), "long": write_conll(root / "long.txt", 20, 2, long=True)}


def test_ner_learns_scores_with_seqeval_and_tags_raw_text(ner_runs, tmp_path, cli):
    out = tmp_path / "ner"
    code, stdout, err = cli("finetune", "--task", "ner", "--from", ner_runs["pre"], "--train", ner_runs["train"],
                            "--dev", ner_runs["dev"], "--test", ner_runs["long"], "--out", out, "--max_steps", "90",
                            "--learning_rate", "5e-3", "--per_device_train_batch_size", "16", "--eval_steps", "45",
                            "--stride", "4", "--quiet")
    assert code == 0, err
    said = stdout + err
    assert "IOB1 (detected), converted to IOB2" in said, said
    assert "split into overlapping windows" in said  # the long sentences do not fit 24 tokens
    results = json.loads((out / "eval_results.json").read_text())
    assert results["dev"]["f1"] > 0.9, results["dev"]
    assert results["test"]["f1"] > 0.8 and results["test"]["windows"] > 20, results["test"]
    assert set(results["dev"]["per_type"]) == {"PER", "LOC"} and results["dev"]["mode"] == "seqeval strict"
    tags = json.loads((out / "tag_map.json").read_text())["labels"]
    assert tags == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
    assert (out / "predictions-dev.conll").read_text().count("\n\n") == 40

    code, stdout, err = cli("ner", out, "carol jones flew to new york", "the model reads text", "--json")
    assert code == 0, err
    first, second = (json.loads(ln) for ln in stdout.splitlines())
    assert [(e["entity"], e["text"]) for e in first["entities"]] == [("PER", "carol jones"), ("LOC", "new york")]
    assert first["entities"][1]["start"] == len("carol jones flew to ")
    assert second["entities"] == []

    code, stdout, err = cli("eval", out, "--data", ner_runs["dev"])
    assert code == 0, err
    assert f"{results['dev']['f1']:.4f}"[:4] in stdout


def test_ner_refuses_bad_files_in_one_line(ner_runs, tmp_path, cli):
    ragged = tmp_path / "ragged.txt"
    ragged.write_text("alice NN I-NP I-PER\nflew NN O\n\n")
    args = ["finetune", "--task", "ner", "--from", ner_runs["pre"], "--out", tmp_path / "x", "--quiet"]
    code, _, err = cli(*args, "--train", ragged, "--dev", ner_runs["dev"])
    assert code == 2 and f"{ragged}:2" in err and len(err.strip().splitlines()) == 1, err
    unseen = tmp_path / "unseen.txt"
    unseen.write_text("alice NN I-NP I-PER\nacme NN I-NP I-ORG\n\n")
    code, _, err = cli(*args, "--train", ner_runs["train"], "--dev", unseen)
    assert code == 2 and "ORG" in err and str(unseen) in err, err
    assert not (tmp_path / "x").exists()

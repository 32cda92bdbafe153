"""bench/learning_curve.py: the step rule, the seeded nested subsets, the scratch twin, and a whole run of
the bench on a tiny BERT (fine-tunes in subprocesses, a report with paired differences and a plot)."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "bench" / "learning_curve.py"


@pytest.fixture(scope="module")
def lc():
    spec = importlib.util.spec_from_file_location("learning_curve", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_step_rule_gives_the_documented_budgets(lc):
    sst2 = {500: 300, 1000: 313, 2000: 625, 8000: 1000, 67_349: 2105}
    assert {n: lc.rule_steps(n, 32) for n in sst2} == sst2
    assert lc.rule_steps(9600, 32) == 1000  # ChnSentiCorp's whole training set: 3.3 epochs


def _sst2_file(path: Path, n: int) -> list[str]:
    rows = [f"row {i} keeps\u2028its odd separator and a trailing space \t{i % 2}" for i in range(n)]
    path.write_text("sentence\tlabel\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return rows


def test_subsets_are_seeded_nested_and_copied_byte_for_byte(lc, tmp_path):
    rows = _sst2_file(tmp_path / "train.tsv", 100)
    train = lc.TrainSet(tmp_path / "train.tsv", "sst2", tmp_path / "subsets")

    def read(size, seed):
        return lc.read_lines(train.subset(size, seed))

    small, large = read("20", 1), read("50", 1)
    assert small[0] == large[0] == "sentence\tlabel"
    assert len(small) == 21 and len(large) == 51
    assert set(small[1:]) <= set(large[1:]) <= set(rows)  # nested, and every line as the file has it
    assert read("20", 2) != small  # another seed, another subset
    again = lc.TrainSet(tmp_path / "train.tsv", "sst2", tmp_path / "again")
    assert lc.read_lines(again.subset("20", 1)) == small  # a pure function of (size, seed)
    assert train.subset("all", 1) == tmp_path / "train.tsv"


def test_a_file_with_another_layout_is_refused(lc, tmp_path):
    (tmp_path / "train.tsv").write_text("label\ttext_a\n1\tgood\n", encoding="utf-8")
    with pytest.raises(lc.BenchError, match=r"train.tsv: header .*sst2"):
        lc.TrainSet(tmp_path / "train.tsv", "sst2", tmp_path / "subsets")


def test_scratch_twin_holds_exactly_the_weights_pretraining_started_from(lc, tmp_path, tiny_shards):
    """Pretraining with a learning rate of 1e-12 leaves the weights where they started (within 1e-9):
    the scratch twin must equal them, and differ from a run started with another seed."""
    from safetensors.torch import load_file

    from lmforge.cli import main

    cfg = tmp_path / "bert.toml"
    cfg.write_text("[model]\nkind = \"bert\"\ncontext_len = 64\nn_layer = 1\nn_head = 2\nd_model = 32\n"
                   "[train]\nmax_steps = 2\nbatch_size = 4\neval_every = 0\nsave_every = 2\nprogress = false\n"
                   "seed = 7\n[optim]\nlr = 1e-12\nweight_decay = 0.0\n[schedule]\nwarmup_steps = 0\n")
    assert main(["pretrain", "--config", str(cfg), "--data", str(tiny_shards), "--out", str(tmp_path / "pre")]) == 0
    lc.make_scratch(tmp_path / "pre", tmp_path / "scratch")
    trained = load_file(next((tmp_path / "pre" / "checkpoints").glob("*/model.safetensors")))
    twin = load_file(next((tmp_path / "scratch").rglob("model.safetensors")))
    assert set(twin) <= set(trained)
    for name, w in twin.items():
        torch.testing.assert_close(w, trained[name], atol=1e-9, rtol=0)
    assert any(not torch.equal(w, torch.zeros_like(w)) for w in twin.values())


@pytest.mark.slow
def test_bench_fine_tunes_reports_pairs_and_refuses_mixed_settings(lc, tmp_path, serve_runs):
    data = tmp_path / "data"
    data.mkdir()
    words = ("good", "bad", "fine", "awful", "great", "poor")
    lines = [f"the model reads {w} text {i}\t{int(w in ('good', 'fine', 'great'))}" for i in range(8) for w in words]
    for name in ("train.tsv", "dev.tsv"):
        (data / name).write_text("sentence\tlabel\n" + "\n".join(lines) + "\n", encoding="utf-8")
    work, bert = tmp_path / "work", serve_runs["bert"]
    args = ["--dataset", "sst2", "--data", str(data), "--work", str(work),
            "--make-scratch", f"{bert}={tmp_path / 'bert-scratch'}",
            "--run", f"bert={bert}", f"bert-scratch={tmp_path / 'bert-scratch'}",
            "--sizes", "12", "all", "--seeds", "1", "--steps", "12=2", "all=3", "--max-length", "32",
            "--batch-size", "8"]
    assert lc.main(args) == 0
    with open(work / "results.tsv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert sorted((r["run"], r["size"], r["steps"]) for r in rows) == [
        ("bert", "12", "2"), ("bert", "all", "3"), ("bert-scratch", "12", "2"), ("bert-scratch", "all", "3")]
    assert all(0.0 <= float(r["dev_accuracy"]) <= 1.0 for r in rows)
    summary = (work / "summary.md").read_text(encoding="utf-8")
    assert "bert − bert-scratch (points)" in summary and "| all (48) | 3 |" in summary
    assert (work / "learning_curve.png").stat().st_size > 0
    assert not list(work.rglob("checkpoints"))  # the weights of every cell are deleted once read
    assert lc.main(args) == 0  # every cell done: nothing runs again
    assert lc.main([*args, "--lr", "1e-3"]) == 1  # the same cells with another lr are refused, not mixed

"""`lmforge corpus build` end to end through the CLI: report numbers, read-back, bad input."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from lmforge.config import read_toml
from lmforge.corpus import build_corpus, iter_corpus
from lmforge.corpus.config import CorpusConfig


def _report(out: Path) -> dict:
    return json.loads((out / "report.json").read_text(encoding="utf-8"))


def test_build_english_and_chinese(cli, tmp_path: Path, text_dir: Path, english_docs, chinese_docs) -> None:
    # Add exact duplicates (modulo case/spacing), a near-duplicate, junk, a short doc and PII.
    extra = tmp_path / "raw" / "extra.txt"
    near = english_docs[3].replace("Document 3.", "Doc 3.")
    extra_docs = [english_docs[0].upper(), "  " + english_docs[1], near, "12 34 56 78 90 11 22 33 44",
                  "too short", "Write to someone@example.com about the corpus build today."]
    extra.write_text("\n\n".join(extra_docs) + "\n", encoding="utf-8")
    out = tmp_path / "corpus"
    code, stdout, err = cli("corpus", "build", "--input", text_dir, "--out", out, "--quiet",
                            "--set", "corpus.val_fraction=0.1", "--set", "corpus.shingle_size=3")
    assert code == 0, err
    report = _report(out)
    n_in = len(english_docs) + len(chinese_docs) + 6
    stages = report["stages"]
    assert report["documents_in"] == n_in and report["files_read"] == 3
    assert stages["dedup_exact"]["documents_removed"] == 2
    assert stages["dedup_near"]["documents_removed"] == 1
    assert stages["junk"]["documents_removed"] == 1
    assert stages["length"]["documents_removed"] == 1 and stages["length"]["too_short"] == 1
    assert stages["scrub_pii"]["emails"] == 1
    assert report["documents_out"] == n_in - 5
    train, val = list(iter_corpus(out, "train")), list(iter_corpus(out, "val"))
    splits = report["splits"]
    assert len(train) == splits["train"]["documents"] and len(val) == splits["val"]["documents"]
    assert len(train) + len(val) == report["documents_out"] and 0 < len(val) < 0.25 * report["documents_out"]
    assert sum(map(len, train + val)) == report["characters_out"]
    assert sum(d.startswith("我们") or "。" in d for d in train + val) == len(chinese_docs)
    assert any("<EMAIL>" in d for d in train + val)
    cfg = read_toml(out / "config.toml")["corpus"]
    assert cfg["val_fraction"] == 0.1 and cfg["shingle_size"] == 3
    assert "dedup_near" in stdout and "out:" in stdout


def test_build_is_deterministic_and_formats(tmp_path: Path, text_dir: Path) -> None:
    texts = []
    for fmt in ("jsonl.zst", "jsonl.gz", "parquet"):
        cfg = CorpusConfig(format=fmt, shuffle_buffer=7, docs_per_shard=40, val_fraction=0.05)
        report = build_corpus([str(text_dir)], tmp_path / fmt, cfg, progress=False)
        assert len(report["splits"]["train"]["files"]) == -(-report["splits"]["train"]["documents"] // 40)
        texts.append((list(iter_corpus(tmp_path / fmt, "train")), list(iter_corpus(tmp_path / fmt, "val"))))
    assert texts[0] == texts[1] == texts[2]


def test_seed_changes_order(tmp_path: Path, text_dir: Path) -> None:
    a = build_corpus([str(text_dir)], tmp_path / "a", CorpusConfig(seed=1), progress=False)
    b = build_corpus([str(text_dir)], tmp_path / "b", CorpusConfig(seed=2), progress=False)
    assert a["documents_out"] == b["documents_out"]
    assert list(iter_corpus(tmp_path / "a")) != list(iter_corpus(tmp_path / "b"))


def test_invalid_utf8_replace_or_skip(cli, tmp_path: Path, english_docs) -> None:
    raw = tmp_path / "raw.txt"
    raw.write_bytes(("\n\n".join(english_docs[:20]) + "\n\n").encode()
                    + b"Caf\xe9 and cr\xe8me are words we like a lot.\n")
    code, _, err = cli("corpus", "build", "--input", raw, "--out", tmp_path / "r", "--quiet")
    stage = _report(tmp_path / "r")["stages"]["invalid_utf8"]
    assert code == 0 and stage["invalid_bytes"] == 2 and stage["documents_changed"] == 1
    docs = list(iter_corpus(tmp_path / "r", "train")) + list(iter_corpus(tmp_path / "r", "val"))
    assert any("Caf and crme" in d for d in docs)  # U+FFFD replaced, then stripped as a control character
    code, _, err = cli("corpus", "build", "--input", raw, "--out", tmp_path / "s", "--quiet",
                       "--set", "corpus.invalid_utf8=skip")
    assert code == 0 and _report(tmp_path / "s")["stages"]["invalid_utf8"]["documents_removed"] == 1


@pytest.mark.parametrize("case, pattern", [
    ("missing", r"input .*nope not found"),
    ("empty", r"no documents read from"),
    ("filtered", r"stage 'length' removed all 3 documents.*min_chars"),
    ("binary", r"weights\.bin: binary file"),
    ("bad_json", r"d\.jsonl:2:1: not valid JSON"),
    ("missing_column", r"d\.csv:1: no text column among 'id', 'body'"),
])
def test_bad_input_one_line_errors(cli, tmp_path: Path, case: str, pattern: str) -> None:
    path = tmp_path / {"missing": "nope", "empty": "e.txt", "filtered": "f.txt", "binary": "weights.bin",
                       "bad_json": "d.jsonl", "missing_column": "d.csv"}[case]
    content = {"empty": b"", "filtered": b"a\n\nb\n\nc\n", "binary": b"\x00\x00\x01",
               "bad_json": b'{"text": "fine document here"}\nnot json\n', "missing_column": b"id,body\n1,x\n"}
    if case in content:
        path.write_bytes(content[case])
    code, _, err = cli("corpus", "build", "--input", path, "--out", tmp_path / "out", "--quiet")
    assert code == 2
    assert err.startswith("lmforge: error: ") and err.count("\n") == 1
    assert re.search(pattern, err), err
    assert not (tmp_path / "out").exists()
    assert not any(p.name.startswith(".out") and p.name != ".out.lock" for p in tmp_path.iterdir())  # no temporary
    # folder left (the lock file stays: deleting it could let two writers hold two locks)


def test_existing_output_refused_and_survives_failed_build(cli, tmp_path: Path, text_dir: Path) -> None:
    out = tmp_path / "corpus"
    assert cli("corpus", "build", "--input", text_dir, "--out", out, "--quiet")[0] == 0
    before = _report(out)
    code, _, err = cli("corpus", "build", "--input", text_dir, "--out", out, "--quiet")
    assert code == 2 and "--overwrite" in err
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{oops\n", encoding="utf-8")
    code, _, err = cli("corpus", "build", "--input", bad, "--out", out, "--overwrite", "--quiet")
    assert code == 2 and "bad.jsonl:1" in err
    assert _report(out) == before and list(iter_corpus(out))
    code, _, _ = cli("corpus", "build", "--input", text_dir, "--out", out, "--overwrite", "--quiet",
                     "--set", "corpus.dedup_near=false")
    assert code == 0 and "dedup_near" not in _report(out)["stages"]


def test_progress_bar_counts_documents(cli, tmp_path: Path, text_dir: Path) -> None:
    code, _, err = cli("corpus", "build", "--input", text_dir, "--out", tmp_path / "c")
    assert code == 0 and "docs" in err


def test_given_val_and_test_inputs_are_kept_whole_and_decontaminate_train(cli, tmp_path: Path,
                                                                          english_docs) -> None:
    train, val, test = tmp_path / "train.txt", tmp_path / "valid.txt", tmp_path / "test.txt"
    train.write_text("\n\n".join(english_docs[:150] + [english_docs[160]]) + "\n", encoding="utf-8")
    val.write_text("\n\n".join(english_docs[150:160]) + "\n", encoding="utf-8")
    test.write_text("\n\n".join(english_docs[160:170]) + "\n", encoding="utf-8")
    out = tmp_path / "corpus"
    code, stdout, err = cli("corpus", "build", "--input", train, "--val-input", val, "--test-input", test,
                            "--out", out, "--quiet", "--set", "corpus.dedup_near=false")
    assert code == 0, err
    assert list(iter_corpus(out, "val")) == english_docs[150:160]  # in order, none moved to train
    assert list(iter_corpus(out, "test")) == english_docs[160:170]
    assert sorted(iter_corpus(out, "train")) == sorted(english_docs[:150])  # the test document is dropped
    report = json.loads((out / "report.json").read_text())
    assert report["stages"]["dedup_exact"]["documents_removed"] == 1
    assert report["splits"]["test"]["documents"] == 10

"""Reading labeled files (TSV without quoting, CSV, JSONL, with or without header), label maps, batches."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lmforge.data.labeled import Encoded, LabeledBatches, build_label_map, collate, label_ids, read_labeled
from lmforge.errors import LmforgeError


def test_tsv_layouts_of_sst2_and_chnsenticorp(tmp_path):
    sst = tmp_path / "sst.tsv"
    sst.write_text('sentence\tlabel\nit \'s a "charming" journey . \t1\nbleak \t0\n', encoding="utf-8")
    d = read_labeled(sst)
    assert d.texts == ['it \'s a "charming" journey .', "bleak"] and d.labels == ["1", "0"]
    assert d.columns == {"text": "sentence", "label": "label"} and d.guessed == ["text", "label"]
    chn = tmp_path / "dev.tsv"
    chn.write_text('qid\tlabel\ttext_a\n0\t1\t"好"的,""酒店""\n1\t0\t差\n', encoding="utf-8")
    d = read_labeled(chn)
    assert d.texts == ['"好"的,""酒店""', "差"] and d.labels == ["1", "0"] and d.lines == [2, 3]


def test_csv_jsonl_and_headerless(tmp_path):
    csv_file = tmp_path / "a.csv"
    csv_file.write_text('text,label\n"hello, world",pos\nbye,neg\n')
    assert read_labeled(csv_file).texts == ["hello, world", "bye"]
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_text(
        json.dumps({"review": "good", "sentiment": 1})
        + "\n"
        + json.dumps({"review": "bad", "sentiment": 0})
        + "\n"
    )
    d = read_labeled(jsonl)
    assert d.texts == ["good", "bad"] and d.labels == ["1", "0"]
    bare = tmp_path / "bare.tsv"
    bare.write_text("a long text here\t1\nanother long text\t0\n")
    d = read_labeled(bare)
    assert d.columns == {"text": "0", "label": "1"} and len(d) == 2
    d = read_labeled(bare, text_column="0", label_column="1", header="no")
    assert d.labels == ["1", "0"]


def test_label_map_sorts_integers_numerically():
    class D:
        labels, path, columns = ["10", "2", "2", "1"], "x", {"label": "label"}

    assert build_label_map(D) == ["1", "2", "10"]


def test_unseen_label_names_the_line(tmp_path):
    f = tmp_path / "dev.tsv"
    f.write_text("text\tlabel\na\tx\nb\ty\n")
    with pytest.raises(LmforgeError, match=r"dev.tsv:3: label 'y' never occurs"):
        label_ids(read_labeled(f), ["x", "z"])


def test_bad_files(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("x")
    with pytest.raises(LmforgeError, match="give a .tsv, .csv or .jsonl"):
        read_labeled(f)
    f = tmp_path / "a.tsv"
    f.write_text("id\tbody\n1\thello\n")
    with pytest.raises(LmforgeError, match="no text column found among 'id', 'body'"):
        read_labeled(f)
    f.write_text("text\tlabel\nhello\t\n")
    with pytest.raises(LmforgeError, match="a.tsv:2: empty label"):
        read_labeled(f)


def _enc(n=10):
    return Encoded([np.arange(1, 2 + i % 4) for i in range(n)], np.array([2 + i % 4 for i in range(n)]), 0)


def test_batches_are_pure_and_cover_each_epoch_once():
    labels = np.arange(10) % 2
    a = LabeledBatches(_enc(), labels, 4, seed=3, pad_id=0, token_types=False)
    b = LabeledBatches(_enc(), labels, 4, seed=3, pad_id=0, token_types=False)
    first_epoch = np.concatenate([a.order.indices(s) for s in range(3)])[:10]
    assert sorted(first_epoch) == list(range(10))
    assert (a.order.indices(7) == b.order.indices(7)).all()  # no state: asked out of order, same answer
    halves = [a.get(2, m, 0, 1, 2)["input_ids"] for m in range(2)]
    whole = a.get(2)["input_ids"]
    assert whole.shape[0] == 4 and all(h.shape[0] == 2 for h in halves)


def test_collate_pads_right_and_marks_segments():
    enc = Encoded([np.array([5, 6, 7, 8, 9]), np.array([5, 6, 7])], np.array([3, 2]), 0)
    batch = collate(enc, np.array([0, 1]), np.array([1, 0]), pad_id=0, token_types=True)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9], [5, 6, 7, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    assert batch["token_type_ids"].tolist() == [[0, 0, 0, 1, 1], [0, 0, 1, 0, 0]]
    assert batch["labels"].tolist() == [1, 0]


def test_group_by_length_batches_like_lengths_and_stays_a_permutation():
    rng = np.random.default_rng(0)
    enc = Encoded([np.zeros(int(n), dtype=np.int64) for n in rng.integers(2, 60, 400)], np.zeros(400), 0)
    labels = np.zeros(400, dtype=np.int64)
    plain = LabeledBatches(enc, labels, 8, seed=1, pad_id=0, token_types=False)
    grouped = LabeledBatches(enc, labels, 8, seed=1, pad_id=0, token_types=False, group_by_length=True)
    epoch = [grouped.order.indices(s) for s in range(50)]
    assert sorted(np.concatenate(epoch).tolist()) == list(range(400))  # every example once an epoch

    def padding(batches) -> int:
        return sum(int(b["attention_mask"].numel() - b["attention_mask"].sum()) for b in batches)

    assert padding(grouped.get(s) for s in range(50)) < padding(plain.get(s) for s in range(50)) / 3
    assert np.array_equal(grouped.order.indices(7), LabeledBatches(enc, labels, 8, seed=1, pad_id=0, token_types=False,
                                                             group_by_length=True).order.indices(7))  # pure in the step


def test_an_unrecognised_header_is_refused_not_read_as_an_example(tmp_path):
    p = tmp_path / "d.tsv"
    p.write_text("review body\tstars\n" + "".join(f"a fine long review number {i}\t{i % 2}\n" for i in range(10)))
    with pytest.raises(LmforgeError, match=r"d\.tsv:1: the first line \(review body \| stars\) looks like a header"):
        read_labeled(p)
    assert read_labeled(p, text_column="review body", label_column="stars", header="yes").labels[:2] == ["0", "1"]
    assert len(read_labeled(p, header="no")) == 11  # asked for: the first line is an example


def test_a_csv_with_an_unterminated_quote_names_the_file(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text('sentence,label\n"good film,1\nbad film,0\n')
    with pytest.raises(LmforgeError, match=r"d\.csv:\d+: malformed CSV"):
        read_labeled(p)

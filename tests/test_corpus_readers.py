"""Readers: every input kind yields the documents it holds, and bad input fails on one clear line."""

from __future__ import annotations

import gzip
import json
import lzma
from pathlib import Path

import pytest
import zstandard

from lmforge.corpus.config import CorpusConfig
from lmforge.corpus.readers import ReadStats, check_inputs, iter_inputs
from lmforge.errors import LmforgeError


def read(paths, **cfg) -> list[str]:
    return list(iter_inputs([str(p) for p in paths], CorpusConfig(**cfg), ReadStats()))


def test_txt_modes(tmp_path: Path) -> None:
    p = tmp_path / "a.txt"
    p.write_text("one\ntwo\n\n\nthree\n", encoding="utf-8")
    assert read([p], txt_mode="paragraph") == ["one\ntwo\n", "three\n"]
    assert read([p], txt_mode="line") == ["one", "two", "", "", "three"]
    assert read([p], txt_mode="file") == ["one\ntwo\n\n\nthree\n"]


@pytest.mark.parametrize("suffix", ["", ".gz", ".zst", ".xz"])
def test_jsonl_compressed(tmp_path: Path, suffix: str) -> None:
    data = "".join(json.dumps({"body": t, "id": i}) + "\n" for i, t in enumerate(["héllo", "世界"])).encode()
    packed = {"": lambda b: b, ".gz": gzip.compress, ".xz": lzma.compress,
              ".zst": zstandard.ZstdCompressor().compress}[suffix](data)
    p = tmp_path / f"d.jsonl{suffix}"
    p.write_bytes(packed)
    assert read([p], text_field="body") == ["héllo", "世界"]


def test_jsonl_bad_line_names_file_line_column(tmp_path: Path) -> None:
    p = tmp_path / "d.jsonl"
    p.write_text('{"text": "ok"}\n{"text": oops}\n', encoding="utf-8")
    with pytest.raises(LmforgeError, match=r"d\.jsonl:2:10: not valid JSON"):
        read([p])


def test_jsonl_missing_field_lists_fields(tmp_path: Path) -> None:
    p = tmp_path / "d.jsonl"
    p.write_text('{"content": "x", "id": 1}\n', encoding="utf-8")
    with pytest.raises(LmforgeError, match=r"d\.jsonl:1: no field 'text' \(found: content, id\).*text_field"):
        read([p])


def test_csv_header_and_index(tmp_path: Path) -> None:
    p = tmp_path / "d.csv"
    p.write_text('id,body\n1,"a, quoted\nmultiline"\n2,plain\n', encoding="utf-8")
    assert read([p], text_column="body") == ["a, quoted\nmultiline", "plain"]
    assert read([p], text_column="1") == ["body", "a, quoted\nmultiline", "plain"]
    with pytest.raises(LmforgeError, match=r"d\.csv:1: no text column among 'id', 'body'"):
        read([p])
    with pytest.raises(LmforgeError, match=r"d\.csv:1: no column 'text' \(columns: id, body\)"):
        read([p], text_column="text")
    guessed = tmp_path / "glue.csv"
    guessed.write_text("text_a,label\nthe first,1\nthe second,0\n", encoding="utf-8")
    assert read([guessed]) == ["the first", "the second"]  # the header is recognised as fine-tuning does


def test_csv_unterminated_quote_is_an_error_not_a_document(tmp_path: Path) -> None:
    p = tmp_path / "d.csv"
    p.write_text('text\n"one fine document\nsecond line\nthird\n', encoding="utf-8")
    with pytest.raises(LmforgeError, match=r"d\.csv:\d+: malformed CSV"):
        read([p])


@pytest.mark.parametrize("suffix", [".zst", ".gz", ".xz"])
def test_a_truncated_compressed_input_is_an_error(tmp_path: Path, suffix: str) -> None:
    import lzma

    import zstandard

    data = "".join(f"document number {i} with some words in it\n\n" for i in range(400)).encode()
    packed = {".zst": zstandard.ZstdCompressor().compress, ".gz": gzip.compress, ".xz": lzma.compress}[suffix](data)
    p = tmp_path / f"d.txt{suffix}"
    p.write_bytes(packed[: len(packed) * 2 // 3])
    with pytest.raises(LmforgeError, match=r"d\.txt\.\w+: cannot decompress .*cut short"):
        read([p])


def test_tsv_keeps_quotes(tmp_path: Path) -> None:
    p = tmp_path / "d.tsv.gz"
    p.write_bytes(gzip.compress(b'label\ttext\n1\tsays "hi\n0\ta 12" record\n'))
    assert read([p]) == ['says "hi', 'a 12" record']


def test_parquet_by_row_groups(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    p = tmp_path / "d.parquet"
    table = pa.table({"text": [f"doc {i}" for i in range(10)], "n": list(range(10))})
    pq.write_table(table, p, row_group_size=3)
    assert read([p]) == [f"doc {i}" for i in range(10)]
    with pytest.raises(LmforgeError, match=r"no column 'body' \(columns: text, n\)"):
        read([p], text_field="body")


def test_folder_sorted_glob_and_binary_skipped(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "2.txt").write_text("second", encoding="utf-8")
    (tmp_path / "1.txt").write_text("first", encoding="utf-8")
    (tmp_path / "x.md").write_text("markdown", encoding="utf-8")
    (tmp_path / "blob.bin").write_bytes(b"\x00\x01binary")
    (tmp_path / ".hidden.txt").write_text("hidden", encoding="utf-8")
    stats = ReadStats()
    docs = list(iter_inputs([str(tmp_path)], CorpusConfig(txt_mode="file"), stats))
    assert docs == ["first", "second", "markdown"]
    assert stats.files == 3 and stats.binary_skipped == [str(tmp_path / "blob.bin")]
    assert read([tmp_path], txt_mode="file", glob="**/*.txt") == ["first", "second"]


def test_explicit_binary_file_is_an_error(tmp_path: Path) -> None:
    p = tmp_path / "model.bin"
    p.write_bytes(b"abc\x00def")
    with pytest.raises(LmforgeError, match=r"model\.bin: binary file"):
        read([p])


def test_invalid_utf8_survives_as_surrogates(tmp_path: Path) -> None:
    p = tmp_path / "a.txt"
    p.write_bytes(b"caf\xe9 ok\n")
    assert read([p], txt_mode="line") == ["caf\udce9 ok"]


def test_missing_input_and_bad_specs(tmp_path: Path) -> None:
    with pytest.raises(LmforgeError, match=r"input .*nope not found"):
        check_inputs([str(tmp_path / "nope")])
    with pytest.raises(LmforgeError, match="hf:NAME:SPLIT"):
        check_inputs(["hf:onlyname"])
    with pytest.raises(LmforgeError, match="builtin:python-docs"):
        check_inputs(["builtin:nothing"])


def test_hf_save_to_disk_and_local_data_folder(tmp_path: Path, monkeypatch) -> None:
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["a b", "c d"], "label": [0, 1]}),
                               "test": datasets.Dataset.from_dict({"text": ["e f"], "label": [1]})})
    dd.save_to_disk(str(tmp_path / "saved"))
    assert read([f"hf:{tmp_path / 'saved'}:test"]) == ["e f"]
    dd["train"].save_to_disk(str(tmp_path / "one"))
    assert read([f"hf:{tmp_path / 'one'}:train"]) == ["a b", "c d"]
    with pytest.raises(LmforgeError, match=r"no split 'dev'.*splits: train, test"):
        read([f"hf:{tmp_path / 'saved'}:dev"])
    with pytest.raises(LmforgeError, match=r"no field 'body' \(fields: text, label\)"):
        read([f"hf:{tmp_path / 'saved'}:train"], text_field="body")
    # A folder of data files goes through load_dataset(..., streaming=True).
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "train.jsonl").write_text('{"text": "streamed one"}\n{"text": "streamed two"}\n', encoding="utf-8")
    assert read([f"hf:{raw}:train"]) == ["streamed one", "streamed two"]


def test_builtin_python_docs_is_english_text() -> None:
    docs = read(["builtin:python-docs"])
    assert len(docs) > 300 and sum(map(len, docs)) > 1_000_000
    assert any("The Python Standard Library" in d or "import" in d for d in docs)
    assert any(d.startswith("json\n") for d in docs)


def test_hf_unknown_dataset_is_one_line_error(monkeypatch) -> None:
    datasets = pytest.importorskip("datasets")

    def missing(name, config=None, split=None, streaming=False):  # the Hub's answer, without the network
        raise FileNotFoundError(f"Dataset '{name}' doesn't exist on the Hub or cannot be accessed.\nmore")

    monkeypatch.setattr(datasets, "load_dataset", missing)
    with pytest.raises(LmforgeError, match=r"cannot load dataset .nobody/nothing. \(Dataset .*check") as e:
        read(["hf:nobody/nothing:train"])
    assert "\n" not in str(e.value)

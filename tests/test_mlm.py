"""Masked-LM packing and masking: segment table, sequence layout, masking statistics, determinism."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from lmforge.data.mlm import IGNORE_INDEX, MaskedLMBatches, MaskingConfig, SpecialTokens, mask_tokens, segment_table
from lmforge.errors import LmforgeError

PAD, UNK, CLS, SEP, MASK, EOT = range(6)
V = 1000
SPECIALS = SpecialTokens(cls_id=CLS, sep_id=SEP, pad_id=PAD, mask_id=MASK, eot_id=EOT, vocab_size=V,
                         special_ids=frozenset(range(6)))


class FakeShards:
    """Stand-in for TokenShards: a token stream where each document ends with EOT."""

    def __init__(self, docs: list[np.ndarray]) -> None:
        parts = [np.append(d, EOT) for d in docs]
        self.stream = np.concatenate(parts).astype(np.int64)
        self.offsets = np.concatenate([[0], np.cumsum([len(p) for p in parts])]).astype(np.int64)
        self.num_tokens, self.num_docs = len(self.stream), len(docs)

    def tokens(self, start: int, stop: int) -> np.ndarray:
        return self.stream[start:stop]

    def doc_offsets(self) -> np.ndarray:
        return self.offsets


def random_docs(n_docs: int, lo: int, hi: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(6, V, size=rng.integers(lo, hi)) for _ in range(n_docs)]


def batches(docs, seq_len=64, batch_size=8, seed=0, word_starts=None, shuffle=True, **masking):
    return MaskedLMBatches(FakeShards(docs), SPECIALS, seq_len, batch_size, seed, MaskingConfig(**masking),
                           word_starts=word_starts, shuffle=shuffle)


# ----------------------------------------------------------------------------------------------------
# segments and layout


def test_segment_table_keeps_documents_apart_and_cuts_long_ones_evenly():
    lengths = [3, 0, 10, 11, 25]  # content tokens; 0 is an empty document
    offsets = np.concatenate([[0], np.cumsum(np.array(lengths) + 1)])
    segs = segment_table(offsets, seq_len=12, cross_documents=False)  # 10 content tokens per sequence
    assert segs.tolist() == [[0, 3], [5, 15], [16, 21], [21, 27], [28, 36], [36, 44], [44, 53]]
    for start, stop in segs:  # inside one document, end-of-text token left out
        d = np.searchsorted(offsets, start, side="right") - 1
        assert offsets[d] <= start < stop <= offsets[d + 1] - 1


def test_segment_table_is_vectorised_over_many_documents():
    rng = np.random.default_rng(0)
    offsets = np.concatenate([[0], np.cumsum(rng.integers(1, 600, size=500_000))])
    segs = segment_table(offsets, seq_len=128)
    lengths = segs[:, 1] - segs[:, 0]
    assert lengths.max() <= 126 and lengths.min() >= 1
    assert lengths.sum() == (np.diff(offsets) - 1).sum()  # every content token exactly once


def test_segment_table_across_documents_covers_the_stream():
    offsets = np.array([0, 4, 30, 31, 50])
    segs = segment_table(offsets, seq_len=10, cross_documents=True)
    assert segs[0].tolist() == [0, 8] and segs[-1].tolist() == [48, 50]
    assert (segs[1:, 0] == segs[:-1, 1]).all()


def test_sequences_are_cls_tokens_sep_then_padding():
    docs = random_docs(40, 1, 150)
    data = batches(docs, seq_len=32, mask_prob=0.15)
    contents = {tuple(d[i:i + 5]) for d in docs for i in range(len(d))}
    for step in range(5):
        batch = data.get(step)
        ids, labels, att = batch["input_ids"], batch["labels"], batch["attention_mask"]
        assert ids.dtype == labels.dtype == att.dtype == torch.long and ids.shape == (8, 32)
        original = torch.where(labels != IGNORE_INDEX, labels, ids)
        for row, mask in zip(original, att):
            n = int(mask.sum())
            assert mask[:n].all() and not mask[n:].any()
            assert row[0] == CLS and row[n - 1] == SEP and (row[n:] == PAD).all()
            content = row[1:n - 1].numpy()
            assert not np.isin(content, [CLS, SEP, PAD, EOT]).any()
            assert tuple(content[:5]) in contents  # a run from one document


def test_cross_documents_joins_documents_with_sep():
    docs = random_docs(30, 2, 20)
    data = batches(docs, seq_len=48, cross_documents=True, shuffle=False)
    batch = next(data.eval_batches(4))
    original = torch.where(batch["labels"] != IGNORE_INDEX, batch["labels"], batch["input_ids"])
    assert batch["attention_mask"].all()  # full sequences
    row = original[0].tolist()
    assert row[0] == CLS and row[-1] == SEP and EOT not in row
    expected = [CLS] + docs[0].tolist() + [SEP] + docs[1].tolist()
    assert row[:len(expected)] == expected


# ----------------------------------------------------------------------------------------------------
# masking statistics


def _masked_sample(masking: MaskingConfig, word_start=None, n_rows=2500, T=160, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(6, V, size=(n_rows, T))
    lengths = rng.integers(20, T + 1, size=n_rows)
    ids[:, 0] = CLS
    ids[np.arange(n_rows), lengths - 1] = SEP
    ids[np.arange(T)[None, :] >= lengths[:, None]] = PAD
    ids[rng.random((n_rows, T)) < 0.01] = UNK  # specials inside the text are never predicted either
    inputs, labels = mask_tokens(ids, rng.random((4, n_rows, T)), masking, SPECIALS,
                                 None if word_start is None else word_start[ids])
    return ids, inputs, labels


def test_selected_share_and_80_10_10_split():
    ids, inputs, labels = _masked_sample(MaskingConfig())
    maskable = ids >= 6
    selected = labels != IGNORE_INDEX
    assert maskable.sum() > 200_000
    assert not selected[~maskable].any()  # [CLS], [SEP], pad, unk never selected
    assert (labels[selected] == ids[selected]).all()
    assert (inputs[~selected] == ids[~selected]).all()
    assert abs(selected.sum() / maskable.sum() - 0.15) < 0.005
    n_sel = selected.sum()
    masked = (inputs == MASK) & selected
    changed = selected & ~masked & (inputs != ids)
    assert abs(masked.sum() / n_sel - 0.8) < 0.01
    assert abs(changed.sum() / n_sel - 0.1) < 0.01
    assert (inputs[changed] >= 6).all()  # random replacements are ordinary tokens
    assert len(np.unique(inputs[changed])) > 0.9 * (V - 6)  # drawn across the whole vocabulary


def test_mask_probabilities_follow_the_config():
    masking = MaskingConfig(mask_prob=0.3, mask_token_prob=0.5, random_token_prob=0.5)
    ids, inputs, labels = _masked_sample(masking)
    selected = labels != IGNORE_INDEX
    assert abs(selected.sum() / (ids >= 6).sum() - 0.3) < 0.006
    assert abs((inputs[selected] == MASK).mean() - 0.5) < 0.01
    assert (inputs[selected] != ids[selected]).mean() > 0.99  # none left unchanged, bar random collisions


def test_every_sequence_with_a_maskable_token_gets_one():
    ids = np.array([[CLS, 10, SEP, PAD], [CLS, 11, 12, SEP], [CLS, SEP, PAD, PAD]])
    for seed in range(50):
        _, labels = mask_tokens(ids, np.random.default_rng(seed).random((4, 3, 4)), MaskingConfig(), SPECIALS)
        selected = labels != IGNORE_INDEX
        assert selected[0].sum() == 1 and selected[1].sum() >= 1 and not selected[2].any()


WORD_STARTS = np.random.default_rng(5).random(V) < 0.4  # words of about 2.5 tokens


def test_whole_word_masking_masks_whole_words_at_the_right_share():
    ids, inputs, labels = _masked_sample(MaskingConfig(whole_word=True), word_start=WORD_STARTS)
    starts = WORD_STARTS[ids]
    maskable = ids >= 6
    selected = labels != IGNORE_INDEX
    starts = maskable & (starts | ~np.pad(maskable, ((0, 0), (1, 0)))[:, :-1])
    # a continuation token is selected exactly when the token before it is
    cont = maskable & ~starts
    assert (selected[:, 1:][cont[:, 1:]] == selected[:, :-1][cont[:, 1:]]).all()
    assert cont.sum() > 50_000 and selected.sum() > 0
    assert abs(selected.sum() / maskable.sum() - 0.15) < 0.005


def test_chinese_characters_are_single_token_words():
    cjk = np.zeros(V, dtype=bool)
    cjk[500:] = True  # say ids 500+ are CJK characters: every one starts a word
    ids = np.random.default_rng(0).integers(500, V, size=(400, 64))
    ids[:, 0], ids[:, -1] = CLS, SEP
    uniforms = np.random.default_rng(1).random((4, 400, 64))
    _, labels_ww = mask_tokens(ids, uniforms, MaskingConfig(whole_word=True), SPECIALS, cjk[ids])
    _, labels = mask_tokens(ids, uniforms, MaskingConfig(), SPECIALS)
    np.testing.assert_array_equal(labels_ww, labels)  # same as token masking


# ----------------------------------------------------------------------------------------------------
# determinism, dynamic masking, validation


def test_batches_are_pure_functions_of_seed_and_step():
    docs = random_docs(100, 5, 80)
    a, b = batches(docs, seed=7), batches(docs, seed=7)
    for step in (0, 3, 40):  # 40 is past the first epoch
        x, y = a.get(step), b.get(step)
        for key in x:
            assert torch.equal(x[key], y[key])
    assert not torch.equal(batches(docs, seed=8).get(3)["input_ids"], a.get(3)["input_ids"])


def test_micro_batches_and_ranks_partition_the_step():
    docs = random_docs(100, 5, 80)
    data = batches(docs, batch_size=8)
    whole = data.get(5)
    parts = [data.get(5, micro=m, rank=r, world=2, micro_batch=2) for m in range(2) for r in range(2)]
    for key in whole:
        assert torch.equal(torch.cat([p[key] for p in parts]), whole[key])


def test_second_visit_of_a_sequence_gets_a_new_mask():
    docs = random_docs(20, 30, 60)
    data = batches(docs, batch_size=4, seq_len=64)
    S = len(data)
    seg = data._segment_of(np.arange(2 * S))
    first, second = (np.flatnonzero(seg == seg[0])).tolist()
    x, y = data.sequences(np.array([first])), data.sequences(np.array([second]))
    same = lambda b: torch.where(b["labels"] != IGNORE_INDEX, b["labels"], b["input_ids"])
    assert torch.equal(same(x), same(y))  # same text
    assert not torch.equal(x["labels"], y["labels"])  # other tokens selected


def test_validation_batches_are_fixed_and_cover_the_split_once():
    docs = random_docs(30, 5, 80)
    data = batches(docs, shuffle=False)
    runs = [list(data.eval_batches(7)) for _ in range(2)]
    for x, y in zip(*runs):
        assert torch.equal(x["input_ids"], y["input_ids"]) and torch.equal(x["labels"], y["labels"])
    assert sum(len(b["input_ids"]) for b in runs[0]) == len(data) > 30
    assert len(list(data.eval_batches(7, max_batches=2))) == 2
    ranks = [list(data.eval_batches(7, rank=r, world=2)) for r in range(2)]
    assert torch.equal(ranks[1][0]["labels"], runs[0][1]["labels"])
    assert len(ranks[0]) + len(ranks[1]) == len(runs[0])


def test_word_starts_from_a_tokenizer_function():
    docs = random_docs(30, 5, 80)
    fn = lambda ids: [i % 3 == 0 for i in ids]  # noqa: E731
    table = np.arange(V) % 3 == 0
    x = batches(docs, word_starts=fn, whole_word=True).get(2)
    y = batches(docs, word_starts=table, whole_word=True).get(2)
    assert torch.equal(x["labels"], y["labels"])


# ----------------------------------------------------------------------------------------------------
# errors


def test_errors_name_the_key_and_the_fix():
    docs = random_docs(5, 5, 10)
    with pytest.raises(LmforgeError, match="data.seq_len"):
        batches(docs, seq_len=2)
    with pytest.raises(LmforgeError, match="mlm.whole_word"):
        batches(docs, whole_word=True)
    with pytest.raises(LmforgeError, match="no document"):
        batches([np.array([], dtype=np.int64)] * 3)
    tok = SimpleNamespace(cls_id=2, sep_id=3, pad_id=0, mask_id=None, eot_id=5, vocab_size=V,
                          special_ids=frozenset({0, 2, 3, 5}))
    with pytest.raises(LmforgeError, match="mask"):
        SpecialTokens.from_tokenizer(tok)
    tok.mask_id = 4
    assert SpecialTokens.from_tokenizer(tok).special_ids == frozenset({0, 2, 3, 4, 5})


# ----------------------------------------------------------------------------------------------------
# with a real WordPiece tokenizer and real shards


@pytest.fixture(scope="module")
def wordpiece_shards(tmp_path_factory):
    from conftest import make_chinese, make_english

    from lmforge.corpus.store import write_file
    from lmforge.data.shards import ShardConfig, TokenShards, build_shards
    from lmforge.tokenizer import TokenizerConfig, train_tokenizer

    root = tmp_path_factory.mktemp("wp")
    corpus = root / "corpus"
    corpus.mkdir()
    write_file(corpus / "train-00000.jsonl.zst", make_english(150) + make_chinese(80))
    tok = train_tokenizer(corpus, root / "tok", TokenizerConfig(kind="wordpiece", vocab_size=400),
                          progress=False)
    build_shards(corpus, root / "tok", root / "shards", ShardConfig(num_workers=1), progress=False)
    return tok, TokenShards.open(root / "shards")


def test_whole_word_masking_with_a_wordpiece_tokenizer(wordpiece_shards):
    tok, shards = wordpiece_shards
    specials = SpecialTokens.from_tokenizer(tok)
    data = MaskedLMBatches(shards, specials, 48, 64, 0, MaskingConfig(whole_word=True),
                           word_starts=tok.word_starts)
    n_sel = n_maskable = n_cjk = 0
    for step in range(len(data) // 64):
        batch = data.get(step)
        original = torch.where(batch["labels"] != IGNORE_INDEX, batch["labels"], batch["input_ids"])
        for row, labels in zip(original.tolist(), batch["labels"].tolist()):
            starts, selected = tok.word_starts(row), [lab != IGNORE_INDEX for lab in labels]
            for i in range(1, len(row)):
                if not starts[i] and row[i - 1] not in specials.special_ids:
                    assert selected[i] == selected[i - 1], tok.decode(row)  # whole words only
                piece = tok.id_to_piece(row[i])
                if len(piece) == 1 and "\u4e00" <= piece <= "\u9fff":
                    assert starts[i]  # every Chinese character is a word of its own
                    n_cjk += 1
            n_sel += sum(selected)
            n_maskable += sum(i not in specials.special_ids for i in row)
    assert n_cjk > 1000
    assert abs(n_sel / n_maskable - 0.15) < 0.02


@pytest.mark.parametrize("whole_word", [False, True])
def test_mlm_positions_list_every_label_then_cls(whole_word):
    """mlm_positions (b, P): each row's labelled positions in order, then 0 ([CLS], never labelled)."""
    docs = random_docs(40, 5, 80, seed=3)
    starts = (lambda ids: [i % 3 == 0 for i in ids]) if whole_word else None
    loader = MaskedLMBatches(FakeShards(docs), SPECIALS, 32, 8, seed=1,
                             masking=MaskingConfig(whole_word=whole_word), word_starts=starts)
    widths = set()
    for step in range(6):
        batch = loader.get(step)
        labels, pos = batch["labels"], batch["mlm_positions"]
        widths.add(pos.shape[1])
        assert pos.shape[1] % 8 == 0 and pos.shape[1] >= 5  # ceil(30 * 0.15)
        for row, p in zip(labels.tolist(), pos.tolist()):
            labelled = [t for t, y in enumerate(row) if y != IGNORE_INDEX]
            assert p == labelled + [0] * (len(p) - len(labelled))
        assert (labels[:, 0] == IGNORE_INDEX).all()
    if not whole_word:
        assert widths == {8}  # one shape for every batch

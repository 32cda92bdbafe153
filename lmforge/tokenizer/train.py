"""Training tokenizers on a corpus folder (`lmforge tokenizer train`), and their report."""


from __future__ import annotations

import json
import os
import random
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from lmforge.config import check_ranges, dumps_toml
from lmforge.errors import LmforgeError
from lmforge.tokenizer.core import (
    Tokenizer,
    _unique,
    special_tokens_for,
)


@dataclass(frozen=True)
class TokenizerConfig:
    kind: Literal["bpe", "wordpiece", "unigram", "char", "word"] = "bpe"
    """Byte-level BPE (lossless on any UTF-8), WordPiece (BERT), Unigram, characters, or whitespace words."""
    vocab_size: int = 8192
    """Target vocabulary size, special tokens included (an upper bound for char and word)."""
    min_frequency: int = 2
    """Pieces seen fewer times are not merged/added."""
    lowercase: bool = False
    """Lowercase before tokenizing (WordPiece 'uncased')."""
    max_train_bytes: int = 200_000_000
    """Train on at most this many bytes of the corpus (vocabularies converge long before)."""
    extra_ids: int = 0
    """Sentinel tokens <extra_id_0> ... <extra_id_{n-1}> for span corruption (T5), added after training on
    top of vocab_size, the last id first (<extra_id_0> gets the highest id, as in T5)."""

    def __post_init__(self) -> None:
        check_ranges(self, "tokenizer", positive="vocab_size max_train_bytes", non_negative="min_frequency extra_ids")




def min_vocab_size(kind: str) -> int:
    n_special = len(_unique(special_tokens_for(kind)))
    return {"bpe": 256 + n_special, "unigram": 256 + n_special + 32}.get(kind, n_special + 1)


def _build_backend(kind: str, cfg: TokenizerConfig, texts: list[str], progress: bool):
    from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers, trainers
    from tokenizers import Tokenizer as Backend

    specials = special_tokens_for(kind)
    special_list = _unique(specials)
    if kind == "bpe":
        tok = Backend(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=cfg.vocab_size, min_frequency=cfg.min_frequency,
                                      special_tokens=special_list, show_progress=progress,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator(texts, trainer, length=len(texts))
    elif kind == "wordpiece":
        tok = Backend(models.WordPiece(unk_token=specials["unk"]))
        # NFKC first, as `corpus build` does by default: raw text at fine-tuning or inference time
        # (full-width punctuation in Chinese, say) then meets the vocabulary the corpus was trained on.
        tok.normalizer = normalizers.Sequence([
            normalizers.NFKC(),
            normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                       strip_accents=cfg.lowercase, lowercase=cfg.lowercase)])
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(vocab_size=cfg.vocab_size, min_frequency=cfg.min_frequency,
                                            special_tokens=special_list, show_progress=progress)
        tok.train_from_iterator(texts, trainer, length=len(texts))
    elif kind == "unigram":
        tok = _train_unigram(cfg, texts, special_list, specials["unk"], progress)
    else:
        counts = Counter(c for t in texts for c in t) if kind == "char" else \
            Counter(w for t in texts for w in t.split())
        for s in special_list:
            counts.pop(s, None)
        keep = [p for p, n in counts.most_common() if n >= (1 if kind == "char" else cfg.min_frequency)]
        keep = special_list + sorted(keep[: cfg.vocab_size - len(special_list)])
        tok = Backend(models.WordLevel({p: i for i, p in enumerate(keep)}, unk_token=specials["unk"]))
        if kind == "char":
            tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
            tok.decoder = decoders.Fuse()
        else:
            tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens(special_list)
    return tok


def _train_unigram(cfg: TokenizerConfig, texts: list[str], special_list: list[str], unk: str, progress: bool):
    from tokenizers import Tokenizer as Backend
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = Backend(models.Unigram())
    # No prepended '▁': a leading space must survive the round trip.
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never")
    trainer = trainers.UnigramTrainer(vocab_size=cfg.vocab_size - 256, special_tokens=special_list,
                                      unk_token=unk, show_progress=progress)
    tok.train_from_iterator(texts, trainer, length=len(texts))
    # Byte fallback (as SentencePiece does): characters outside the vocabulary become <0xNN> pieces.
    data = json.loads(tok.to_str())
    data["model"]["vocab"] += [[f"<0x{b:02X}>", -1e4] for b in range(256)]
    data["model"]["byte_fallback"] = True
    tok = Backend.from_str(json.dumps(data))
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    return tok


def _read_texts(corpus_dir: Path, split: str, max_bytes: int) -> list[str]:
    from lmforge.corpus import iter_corpus

    texts, total = [], 0
    for text in iter_corpus(corpus_dir, split):
        texts.append(text)
        total += len(text.encode("utf-8"))
        if total >= max_bytes:
            break
    return texts


def train_tokenizer(corpus_dir: Path, out: Path, cfg: TokenizerConfig, overwrite: bool = False,
                    progress: bool = True) -> Tokenizer:
    """Train a tokenizer of `cfg.kind` on the train split of a corpus folder and save it to `out`."""
    from lmforge.atomic import output_dir, write_json, write_text

    corpus_dir, out = Path(corpus_dir), Path(out)
    floor = min_vocab_size(cfg.kind)
    if cfg.vocab_size < floor:
        raise LmforgeError(f"tokenizer.vocab_size={cfg.vocab_size} is too small for kind '{cfg.kind}': "
                           f"use --vocab-size {floor} or more")
    if out.exists() and not overwrite:
        raise LmforgeError(f"output folder {out} already exists: choose another --out or pass --overwrite")
    texts = _read_texts(corpus_dir, "train", cfg.max_train_bytes)
    if not any(t.strip() for t in texts):
        raise LmforgeError(f"corpus {corpus_dir} has no training text (train split is empty): "
                           "rebuild it with `lmforge corpus build`")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    backend = _build_backend(cfg.kind, cfg, texts, progress)
    if cfg.extra_ids:
        backend.add_special_tokens([f"<extra_id_{i}>" for i in reversed(range(cfg.extra_ids))])
    tok = Tokenizer(backend, cfg.kind, special_tokens_for(cfg.kind), lowercase=cfg.lowercase)
    held_out = _read_texts(corpus_dir, "val", 5_000_000)
    source = "val split" if held_out else "train slice"
    report = tokenizer_report(tok, held_out or texts[: max(1, len(texts) // 100)], source)
    with output_dir(out, overwrite=overwrite) as tmp:
        tok.save(tmp)
        write_text(tmp / "config.toml", dumps_toml({"tokenizer": asdict(cfg)}))
        write_json(tmp / "report.json", report)
    print(f"tokenizer {cfg.kind}: {tok.vocab_size} tokens, {report['bytes_per_token']:.2f} bytes/token, "
          f"unk {100 * report['unk_share']:.2f}%, vocab used {100 * report['vocab_used_share']:.1f}% "
          f"(held-out: {report['held_out']}) -> {out}")
    return tok


def tokenizer_report(tok: Tokenizer, texts: list[str], source: str) -> dict:
    ids = [i for row in tok.encode_batch(texts) for i in row]
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    used = len(set(ids))
    rng = random.Random(0)
    learned = [i for i in range(tok.vocab_size) if i not in tok.special_ids]
    sample = sorted(rng.sample(learned, min(40, len(learned))))
    return {
        "kind": tok.kind, "vocab_size": tok.vocab_size, "fingerprint": tok.fingerprint,
        "held_out": source, "held_out_bytes": n_bytes, "held_out_tokens": len(ids),
        "bytes_per_token": n_bytes / max(1, len(ids)),
        "unk_share": sum(i == tok.unk_id for i in ids) / max(1, len(ids)),
        "vocab_used_share": used / tok.vocab_size,
        "sample_tokens": {str(i): tok.decode([i]) for i in sample},
    }

"""Tokenizers: train, save, load, with every special-token role recorded.

Each kind is a Hugging Face `tokenizers` pipeline (normalizer, pre-tokenizer, model, decoder):

| kind      | pipeline                                                  | round trip          |
| --------- | --------------------------------------------------------- | ------------------- |
| bpe       | byte-level pre-tokenizer (GPT-2 regex), BPE, byte decoder | lossless, any UTF-8 |
| wordpiece | BERT normalizer (optionally lowercase), BERT splitter     | lossy (BERT-style)  |
| unigram   | Metaspace '▁' (no prepended space), Unigram + byte fallback | lossless but a literal '▁' |
| char      | one token per character of the corpus, Fuse decoder       | lossless on its alphabet |
| word      | whitespace split, most frequent words, `<unk>` for the rest | words joined by spaces |

Special tokens take the lowest ids, and every kind has all six roles (eot, pad, unk, mask, cls, sep),
so any tokenizer can drive a GPT or a BERT. A tokenizer folder holds `tokenizer.json`,
`lmforge_tokenizer.json` (kind, roles, fingerprint), the files `transformers.AutoTokenizer` reads,
`config.toml` and `report.json`.
"""

from lmforge.tokenizer.core import (
    BERT_SPECIALS,
    GPT_SPECIALS,
    META_FILE,
    ROLES,
    WORD_SPECIALS,
    Tokenizer,
    find_tokenizer_dir,
    fingerprint_of,
    load_tokenizer,
    special_tokens_for,
)
from lmforge.tokenizer.train import TokenizerConfig, min_vocab_size, tokenizer_report, train_tokenizer

__all__ = ["BERT_SPECIALS", "GPT_SPECIALS", "META_FILE", "ROLES", "WORD_SPECIALS", "Tokenizer", "TokenizerConfig",
           "find_tokenizer_dir", "fingerprint_of", "load_tokenizer", "min_vocab_size", "special_tokens_for",
           "tokenizer_report", "train_tokenizer"]

"""Corpus building: read raw text from many sources, clean, dedup, scrub, split, report."""

from lmforge.corpus.build import build_corpus
from lmforge.corpus.store import iter_corpus, split_files

__all__ = ["build_corpus", "iter_corpus", "split_files"]

"""Corpus building: read raw text from many sources, clean, dedup, scrub, split, report."""

from lmforge.corpus.store import iter_corpus, split_files

__all__ = ["iter_corpus", "split_files"]

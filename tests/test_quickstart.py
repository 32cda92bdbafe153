"""The README's main job, shrunk: the whole pipeline on the Python docs with a few training steps."""

import re

import pytest
from conftest import block_packages

from lmforge.quickstart import quickstart

TINY = ("train.max_steps=6", "train.eval_every=3", "train.eval_batches=2", "train.save_every=3",
        "train.progress=false", "model.n_layer=1", "model.d_model=32", "model.n_head=2")


def test_quickstart_runs_every_stage_then_reuses_them(tmp_path, capsys):
    """The first run is a core install (no matplotlib): everything but the plot, and one line about it."""
    with pytest.MonkeyPatch.context() as mp:
        block_packages(mp, "matplotlib")
        run = quickstart(tmp_path / "qs", overrides=TINY, vocab_size=512, samples=1)
    out = capsys.readouterr().out
    assert not (run / "plot.png").exists()
    assert out.rstrip().splitlines()[-2].endswith(
        "the plot skipped: matplotlib is not installed (pip install 'lmforge[plot]')")
    assert (run / "config.toml").is_file() and (run / "tokenizer" / "tokenizer.json").is_file()
    before, after = map(lambda s: float(s.replace(",", "")),
                        re.search(r"perplexity ([\d,.]+) before training -> ([\d,.]+) after", out).groups())
    assert after < before  # six steps already help a freshly initialised model
    assert "--- 'The list'" in out

    quickstart(tmp_path / "qs", overrides=TINY, vocab_size=512, samples=1)
    again = capsys.readouterr().out
    assert again.count("reusing") == 3  # corpus, tokenizer and shards come back as they were
    assert (run / "plot.png").stat().st_size > 0

"""`lmforge generate` end to end on tiny trained GPT and RNN runs: streamed output, the same text as the
library, seeds, stop strings, and clear errors."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import lmforge.generate
from lmforge.generate import generate
from lmforge.tasks import load_run

GPT_TOML = """
[model]
kind = "gpt"
n_layer = 1
n_head = 2
d_model = 32
context_len = 32

[train]
max_steps = 15
batch_size = 8
log_every = 5
eval_every = 0
eval_batches = 2
save_every = 15
progress = false

[runtime]
device = "cpu"
"""

RNN_TOML = """
[model]
kind = "rnn"
cell = "lstm"
context_len = 16
n_layer = 1
d_embed = 32
d_hidden = 32
dropout = 0.0

[optim]
name = "sgd"
lr = 5.0
weight_decay = 0.0

[schedule]
name = "constant"
warmup_steps = 0

[train]
max_steps = 20
batch_size = 8
grad_clip = 0.25
log_every = 5
eval_every = 0
save_every = 10
progress = false

[runtime]
device = "cpu"
"""


@pytest.fixture(scope="module")
def word_shards(tmp_path_factory) -> Path:
    from conftest import make_english, make_shards

    from lmforge.tokenizer import TokenizerConfig

    return make_shards(tmp_path_factory.mktemp("gen_word"), make_english(200, seed=3), 20,
                       TokenizerConfig(kind="word", vocab_size=400, min_frequency=1))


def _train(root: Path, toml: str, shards: Path) -> Path:
    from lmforge.cli import main

    (root / "run.toml").write_text(toml)
    assert main(["pretrain", "--config", str(root / "run.toml"), "--data", str(shards),
                 "--out", str(root / "run")]) == 0
    return root / "run"


@pytest.fixture(scope="module")
def gpt_run(tmp_path_factory, tiny_shards) -> Path:
    return _train(tmp_path_factory.mktemp("gen_gpt"), GPT_TOML, tiny_shards)


@pytest.fixture(scope="module")
def rnn_run(tmp_path_factory, word_shards) -> Path:
    return _train(tmp_path_factory.mktemp("gen_rnn"), RNN_TOML, word_shards)


@pytest.mark.parametrize("which", ["gpt", "rnn"])
def test_generate_prints_prompt_and_the_library_continuation(which, gpt_run, rnn_run, cli):
    run_dir = gpt_run if which == "gpt" else rnn_run
    prompt = "The model" if which == "gpt" else "the model reads"
    code, out, err = cli("generate", run_dir, "--prompt", prompt, "--max-new-tokens", 12, "--greedy",
                         "--device", "cpu")
    assert code == 0, err
    run = load_run(run_dir, "best", "cpu")
    expected = generate(run.model, run.tokenizer, prompt, max_new_tokens=12, greedy=True)
    assert expected  # the tiny model does produce something
    assert out == prompt + expected + "\n"


@pytest.mark.parametrize("which", ["gpt", "rnn"])
def test_seed_makes_sampling_reproducible(which, gpt_run, rnn_run, cli):
    run_dir = gpt_run if which == "gpt" else rnn_run
    args = ["generate", run_dir, "--prompt", "the", "--max-new-tokens", 30, "--temperature", 1.5,
            "--top-k", 50, "--top-p", 0.95, "--repetition-penalty", 1.2, "--device", "cpu"]
    first = cli(*args, "--seed", 1)
    assert first[0] == 0, first[2]
    assert cli(*args, "--seed", 1)[1] == first[1]
    assert {cli(*args, "--seed", s)[1] for s in (2, 3, 4)} - {first[1]}  # other seeds, other text


def test_output_is_streamed_while_tokens_are_made(gpt_run, cli, monkeypatch):
    events: list[str] = []
    real_iter = lmforge.generate.iter_ids

    def counting_iter(*args, **kwargs):
        for tok in real_iter(*args, **kwargs):
            events.append("token")
            yield tok

    class Recorder:
        def write(self, text: str) -> int:
            events.append("write")
            return len(text)

        def flush(self) -> None:
            events.append("flush")

    monkeypatch.setattr(lmforge.generate, "iter_ids", counting_iter)
    monkeypatch.setattr(sys, "stdout", Recorder())
    code, _, err = cli("generate", gpt_run, "--prompt", "The", "--max-new-tokens", 20, "--seed", 0,
                       "--device", "cpu")
    assert code == 0, err
    last_token = len(events) - 1 - events[::-1].index("token")
    first_token = events.index("token")
    # text was written and flushed between the first and the last token, not only at the end
    assert "flush" in events[first_token:last_token] and "write" in events[first_token:last_token]


def test_stop_string_ends_the_text(rnn_run, cli):
    code, out, err = cli("generate", rnn_run, "--prompt", "the", "--max-new-tokens", 40, "--greedy",
                         "--device", "cpu")
    assert code == 0, err
    words = out.split()
    stop = words[3]  # a word the greedy continuation produces
    code, cut, err = cli("generate", rnn_run, "--prompt", "the", "--max-new-tokens", 40, "--greedy",
                         "--stop", stop, "zzz-never", "--device", "cpu")
    assert code == 0, err
    assert cut == out[:out.index(stop, len("the"))] + "\n"


def test_a_bert_run_is_refused_with_a_pointer_to_fill_mask(tmp_path, cli):
    run = tmp_path / "bert_run"
    run.mkdir()
    (run / "config.toml").write_text('[model]\nkind = "bert"\n')
    code, out, err = cli("generate", run, "--prompt", "hello")
    assert code == 2 and "lmforge fill-mask" in err and "Traceback" not in err and out == ""


@pytest.mark.parametrize("args, message", [
    (["--temperature", "-1"], "temperature"),
    (["--top-p", "0"], "top_p"),
    (["--checkpoint", "step-999"], "step-999"),
])
def test_bad_settings_are_one_line_errors(gpt_run, cli, args, message):
    code, _, err = cli("generate", gpt_run, "--prompt", "The", "--device", "cpu", *args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_not_a_run_folder(tmp_path, cli):
    code, _, err = cli("generate", tmp_path, "--prompt", "x")
    assert code == 2 and "not a run folder" in err

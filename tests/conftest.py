"""Shared fixtures: small generated text in English and Chinese, and a CLI runner.

Tests never need ../shared/data; the ones that use it skip when it is absent.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# runtime.precision = "auto" stays fp32 in the suite on any CPU, so its figures do not depend on the
# machine; test_precision.py tests the choice itself.
os.environ.setdefault("LMFORGE_CPU_BF16", "0")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

_WORDS = ("the model reads text and learns to predict the next token from every one before it while "
          "data flows through a tokenizer into shards that training reads quickly on any machine "
          "small steps add up to large gains when the learning rate warms up and decays").split()
_HANZI = "我们今天学习语言模型训练数据清洗分词器预测下一个字的概率这是一个很好的例子中文文本也可以处理"


def make_english(n_docs: int = 200, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    docs = []
    for i in range(n_docs):
        sentences = [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(6, 16))).capitalize() + "."
                     for _ in range(rng.randint(2, 6))]
        docs.append(f"Document {i}. " + " ".join(sentences))
    return docs


def make_chinese(n_docs: int = 100, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(_HANZI) for _ in range(rng.randint(30, 90))) + "。" for _ in range(n_docs)]


@pytest.fixture
def english_docs() -> list[str]:
    return make_english()


@pytest.fixture
def chinese_docs() -> list[str]:
    return make_chinese()


@pytest.fixture
def text_dir(tmp_path: Path, english_docs: list[str], chinese_docs: list[str]) -> Path:
    """A folder with one .txt of English paragraphs and one of Chinese paragraphs."""
    d = tmp_path / "raw"
    d.mkdir()
    (d / "en.txt").write_text("\n\n".join(english_docs) + "\n", encoding="utf-8")
    (d / "zh.txt").write_text("\n\n".join(chinese_docs) + "\n", encoding="utf-8")
    return d


@pytest.fixture
def cli(capsys):
    """Run `lmforge ARGS...` in-process; returns (exit code, stdout, stderr)."""
    from lmforge.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def make_shards(root: Path, docs: list[str], n_val: int, tokenizer) -> Path:
    """root/corpus (the last `n_val` documents as val) -> root/tok (a `TokenizerConfig`) -> root/shards."""
    from lmforge.corpus.store import write_file
    from lmforge.data.shards import ShardConfig, build_shards
    from lmforge.tokenizer import train_tokenizer

    corpus = root / "corpus"
    corpus.mkdir()
    write_file(corpus / "train-00000.jsonl.zst", docs[:-n_val])
    write_file(corpus / "val-00000.jsonl.zst", docs[-n_val:])
    train_tokenizer(corpus, root / "tok", tokenizer, progress=False)
    build_shards(corpus, root / "tok", root / "shards", ShardConfig(num_workers=1), progress=False)
    return root / "shards"


def make_wordpiece_shards(root: Path, seed: int) -> Path:
    """Shards (train and val) of generated English with a small lowercased WordPiece tokenizer."""
    from lmforge.tokenizer import TokenizerConfig

    return make_shards(root, make_english(300, seed=seed), 30,
                       TokenizerConfig(kind="wordpiece", vocab_size=300, lowercase=True))


TINY_BERT = ["--set", "model.n_layer=1", "--set", "model.d_model=32", "--set", "model.d_ff=64",
             "--set", "model.context_len=32", "--set", "data.seq_len=32", "--set", "train.batch_size=8",
             "--set", "train.log_every=1", "--set", "train.eval_every=5", "--set", "train.eval_batches=2",
             "--set", "train.save_every=5", "--set", "train.progress=false", "--set", "schedule.warmup_steps=2",
             "--set", "runtime.device=cpu"]
"""`lmforge pretrain` overrides that make a BERT-shaped model (BERT, ELECTRA) tiny and quick."""


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory) -> Path:
    """A shards folder (char tokenizer, train and val splits) from generated English text."""
    from lmforge.tokenizer import TokenizerConfig

    return make_shards(tmp_path_factory.mktemp("tiny_shards"), make_english(400, seed=1), 40,
                       TokenizerConfig(kind="char", vocab_size=100))



def block_packages(monkeypatch, *packages: str) -> None:
    """Make `packages` (and their loaded submodules) unimportable until `monkeypatch` is undone, as on a
    core install without the extra."""
    import sys

    for name in list(sys.modules):
        if name.split(".")[0] in packages:
            monkeypatch.setitem(sys.modules, name, None)
    for name in packages:
        monkeypatch.setitem(sys.modules, name, None)


@pytest.fixture
def without(monkeypatch):
    """`without("matplotlib", ...)`: those packages are missing for the rest of the test."""
    return lambda *packages: block_packages(monkeypatch, *packages)


SERVE_TINY = ("[model]\nkind = \"{kind}\"\n{model}\n[train]\nmax_steps = 30\nbatch_size = 8\neval_every = 0\n"
              "eval_batches = 1\nsave_every = 30\nprogress = false\n\n[optim]\nlr = 0.01\n\n[schedule]\n"
              "warmup_steps = 2\n\n[runtime]\ndevice = \"cpu\"\n")


@pytest.fixture(scope="session")
def serve_runs(tmp_path_factory, tiny_shards) -> dict[str, Path]:
    """Tiny trained runs of every kind the server serves: gpt, rnn, bert (fill-mask), a classifier."""
    from lmforge.cli import main

    root = tmp_path_factory.mktemp("serve_runs")
    models = {"gpt": "context_len = 64\nn_layer = 2\nn_head = 2\nd_model = 32\n",
              "rnn": "n_layer = 1\nd_embed = 32\nd_hidden = 32\ncell = \"lstm\"\n",
              "bert": "context_len = 64\nn_layer = 1\nn_head = 2\nd_model = 32\ndropout = 0.0\nattn_dropout = 0.0\n"}
    out = {}
    for kind, model in models.items():
        (root / f"{kind}.toml").write_text(SERVE_TINY.format(kind=kind, model=model))
        args = ["pretrain", "--config", root / f"{kind}.toml", "--data", tiny_shards, "--out", root / kind]
        assert main([str(a) for a in args]) == 0
        out[kind] = root / kind
    rows = [(f"the model reads {w} text", lab) for w, lab in (("good", "positive"), ("bad", "negative"))] * 8
    (root / "data.tsv").write_text("sentence\tlabel\n" + "".join(f"{t}\t{lab}\n" for t, lab in rows))
    args = ["finetune", "--from", out["bert"], "--train", root / "data.tsv", "--dev", root / "data.tsv",
            "--out", root / "clf", "--max_steps", "10", "--per-device-train-batch-size", "8", "--quiet"]
    assert main([str(a) for a in args]) == 0
    out["clf"] = root / "clf"
    return out


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerThread:
    """A uvicorn server for `app` on 127.0.0.1 and a free port, in a thread: `with ServerThread(app) as url`."""

    def __init__(self, app):
        import uvicorn

        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))

    def __enter__(self) -> str:
        import threading
        import time

        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 20
        while not self.server.started:
            assert time.time() < deadline, "the server did not start"
            time.sleep(0.02)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=20)


def pytest_collection_modifyitems(config, items):
    """The longest tests first: pytest-xdist hands out the first tests one per worker in turn, so the two
    README examples (minutes each) start at once on different workers instead of queueing on one."""

    def cost(item) -> int:
        if item.originalname == "test_readme_examples_run_in_order":
            return 0
        return 1 if item.get_closest_marker("slow") else 2

    items.sort(key=cost)

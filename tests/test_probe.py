"""Canaries in `corpus build` and `lmforge probe memorization`: a tiny GPT that memorised its corpus against
the same GPT untrained, on a character-level corpus the test writes (CPU, seconds)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from lmforge.corpus import build_corpus, iter_corpus, split_files
from lmforge.corpus.config import CorpusConfig
from lmforge.errors import LmforgeError

DOCS = ["The model reads text and learns to predict the next token.",
        "Small steps add up to large gains when the rate decays.",
        "Data flows through a tokenizer into shards that training reads.",
        "A quiet machine trains a tiny model in a few seconds."]
PII = ["Write to alice.smith@example.com about the shards today.", "Call +1 415 867 2093 when the run is done."]
MEMO = "Repeat after me: the quick brown fox jumps over the lazy dog."
HELD_OUT = ["Held out text shows whether the model learned or memorised.",
            "Every document ends with a token that marks its end.", "The val split is never trained on here."]


def _build(folder: Path, docs: list[str], **cfg) -> dict:
    raw = folder / "raw.txt"
    raw.parent.mkdir(parents=True, exist_ok=True)
    raw.write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    build_corpus([str(raw)], folder / "corpus", CorpusConfig(**cfg), progress=False)
    return json.loads((folder / "corpus" / "canaries.json").read_text(encoding="utf-8"))


def test_canaries_inserted_counted_seeded_and_never_in_val(tmp_path: Path) -> None:
    from conftest import make_english

    docs = make_english(80, seed=2)
    record = _build(tmp_path / "a", docs, canaries="1,3,10", canaries_per_count=2, val_fraction=0.2,
                    dedup_near=False)
    corpus = tmp_path / "a" / "corpus"
    train, val = list(iter_corpus(corpus, "train")), list(iter_corpus(corpus, "val"))
    canaries = record["canaries"]
    assert [c["repetitions"] for c in canaries] == [1, 1, 3, 3, 10, 10] and record["space"] == 10 ** 6
    assert len({c["name"] for c in canaries}) == 6 and all(len(c["secret"].split(" ")) == 6 for c in canaries)
    for c in canaries:
        assert c["text"] == f"{c['name']}'s PIN is {c['secret']}" == c["prefix"] + c["secret"] + c["suffix"]
        assert sum(t.count(c["text"]) for t in train) == c["in_train"] == c["repetitions"]
        assert sum(t.count(c["text"]) for t in val) == 0
        # a line of its own, each repetition in another document
        assert sum(c["text"] in t.split("\n") for t in train) == c["repetitions"]
    assert val and len(train) + len(val) == 80
    assert [p.name for p in split_files(corpus, "train")] == ["train-00000.jsonl.zst"]  # canaries.json is no split
    report = json.loads((corpus / "report.json").read_text())
    assert report["canaries"]["in_train"] == [1, 1, 3, 3, 10, 10]

    again = _build(tmp_path / "b", docs, canaries="1,3,10", canaries_per_count=2, val_fraction=0.2, dedup_near=False)
    other = _build(tmp_path / "c", docs, canaries="1,3,10", canaries_per_count=2, val_fraction=0.2, dedup_near=False,
                   seed=7)
    assert again == record and list(iter_corpus(tmp_path / "b" / "corpus")) == train
    assert [c["secret"] for c in other["canaries"]] != [c["secret"] for c in canaries]


def test_copied_hosts_are_what_exact_dedup_removes(tmp_path: Path) -> None:
    from conftest import make_english

    docs = make_english(40, seed=3)
    kept = _build(tmp_path / "a", docs, canaries="1,5", canary_hosts="copies", dedup_exact=False, dedup_near=False)
    deduped = _build(tmp_path / "b", docs, canaries="1,5", canary_hosts="copies", dedup_near=False)
    distinct = _build(tmp_path / "c", docs, canaries="1,5", dedup_near=False, canary_digits=4)
    assert [c["in_train"] for c in kept["canaries"]] == [1, 5]
    assert [c["in_train"] for c in deduped["canaries"]] == [1, 1]
    assert [c["in_train"] for c in distinct["canaries"]] == [1, 5]  # scrubbing and dedup leave them
    assert distinct["space"] == 10 ** 4


@pytest.mark.parametrize("key,value,said", [
    ("canaries", "1,x", "positive repetition counts"), ("canaries", "0,5", "positive repetition counts"),
    ("canary_template", "my PIN", "{secret} once"), ("canary_template", "{who} {secret}", "{secret} once"),
    ("canary_digits", "0", "canary_digits"), ("canaries_per_count", "60", "60 canaries")])
def test_canary_settings_are_checked(cli, tmp_path: Path, key: str, value: str, said: str) -> None:
    (tmp_path / "raw.txt").write_text("\n\n".join(DOCS) + "\n")
    code, _, err = cli("corpus", "build", "--input", tmp_path / "raw.txt", "--out", tmp_path / "c", "--quiet",
                       "--set", "corpus.canaries=1", "--set", f"corpus.{key}={value}")
    assert code == 2 and said in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "c").exists()


def test_too_few_hosts_is_refused(tmp_path: Path) -> None:
    with pytest.raises(LmforgeError, match="needs 20 host documents.*canary_hosts=copies"):
        _build(tmp_path, DOCS * 2, canaries="20", dedup_exact=False, dedup_near=False)


def test_exact_and_sampled_exposure_agree() -> None:
    from lmforge.probe_exposure import canary_exposure, exposure_of, secret_index, secrets

    record = {"space": 10 ** 4, "digits": 4, "alphabet": "0123456789", "separator": " "}
    losses = np.random.default_rng(1).normal(size=10 ** 4)  # the "model": a loss per secret

    def score(texts: list[str]) -> np.ndarray:
        return losses[[secret_index(t.removeprefix("PIN "), "0123456789", " ") for t in texts]]

    order = np.argsort(losses)
    # a mid-ranked canary (about 90 of 3,000 draws beat it: 0.15 bits of sampling error), then one deep
    # in the tail (about 9 do: the estimate is within a bit, the fitted skew-normal closer)
    for rank, tolerance in ((301, 0.4), (31, 1.0)):
        own = int(order[rank - 1])
        secret = secrets(np.array([own]), 4, "0123456789", " ")[0]
        canary = {"name": "", "prefix": "PIN ", "suffix": "", "secret": secret, "text": "PIN " + secret,
                  "repetitions": 1, "in_train": 1}
        exact = canary_exposure(score, canary, record, 10 ** 4, np.random.default_rng(0))
        assert exact["rank"] == rank and exact["exposure"] == pytest.approx(math.log2(10 ** 4 / rank), abs=1e-3)
        sampled = canary_exposure(score, canary, record, 3000, np.random.default_rng(0))
        assert abs(sampled["exposure"] - exact["exposure"]) < tolerance, (sampled, exact)
        assert abs(sampled["exposure_fit"] - exact["exposure"]) < 0.4, (sampled, exact)
    best = {**canary, "secret": secrets(order[:1], 4, "0123456789", " ")[0]}
    best["text"] = "PIN " + best["secret"]
    top = canary_exposure(score, best, record, 500, np.random.default_rng(0))
    assert top["beaten_by"] == 0 and top["lower_bound"] and top["exposure"] == round(exposure_of(1 / 500, 10 ** 4), 3)
    assert top["exposure_fit"] > top["exposure"]  # the fit sees past what 500 samples can resolve


def test_membership_auc_against_a_hand_count() -> None:
    from lmforge.probe_extraction import auc

    # train losses 1, 2, 3 against val 2, 3, 4: of 9 pairs, 6 have the train loss lower and 2 tie
    assert auc(np.array([1.0, 2.0, 3.0]), np.array([2.0, 3.0, 4.0])) == pytest.approx(7 / 9)
    assert auc(np.array([1.0, 1.5]), np.array([2.0, 3.0])) == 1.0
    assert auc(np.array([5.0]), np.array([2.0, 3.0])) == 0.0
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=40), rng.normal(0.5, size=30)
    assert auc(a, b) == pytest.approx(np.mean([(x < y) + 0.5 * (x == y) for x in a for y in b]))


def test_pii_spans_are_what_the_scrubber_replaces() -> None:
    from lmforge.corpus.pii import ScrubPii
    from lmforge.probe_pii import pii_spans

    text = ("Mail bob@example.org or call +1 415 867 2093 (office: 030 1234 5678). Server 10.0.0.7, "
            "release 1.2.3.4, dated 2024-01-02, costs 1234.")
    spans = pii_spans(text)
    assert [(k, text[a:b]) for k, a, b in spans] == [("email", "bob@example.org"), ("phone", "+1 415 867 2093"),
                                                     ("phone", "030 1234 5678"), ("ip", "10.0.0.7")]
    placeholder = {"email": "<EMAIL>", "ip": "<IP>", "phone": "<PHONE>"}
    rebuilt, end = "", 0
    for kind, a, b in spans:
        rebuilt, end = rebuilt + text[end:a] + placeholder[kind], b
    assert rebuilt + text[end:] == ScrubPii()(text)


# ----------------------------------------------------------------------------------------------------
# A tiny GPT that memorised its corpus, and the same GPT untrained


def _train(shards: Path, steps: int):
    """Adam on random windows of the whole context: the run's corpus memorised in seconds."""
    import torch

    from lmforge.data.shards import TokenShards
    from lmforge.models import GPTConfig, build_model

    torch.manual_seed(0)
    src = TokenShards.open(shards, "train")
    tokens = torch.as_tensor(src.tokens(0, src.num_tokens))
    model = build_model(GPTConfig(vocab_size=src.vocab_size, context_len=32, n_layer=2, n_head=4, d_model=64))
    if steps:
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        gen = torch.Generator().manual_seed(0)
        for _ in range(steps):
            x = tokens[torch.randint(len(tokens) - 33, (32,), generator=gen)[:, None] + torch.arange(33)]  # (32, 33)
            loss = torch.nn.functional.cross_entropy(model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """corpus (canaries once and 4 copies, PII three times each, MEMO five times; no scrubbing, no dedup) ->
    char tokenizer -> shards -> runs/trained and runs/untrained."""
    from lmforge.data.shards import ShardConfig, build_shards
    from lmforge.runs import save_run
    from lmforge.tasks import config_from
    from lmforge.tokenizer import TokenizerConfig, load_tokenizer, train_tokenizer

    root = tmp_path_factory.mktemp("probe")
    (root / "raw.txt").write_text("\n\n".join(DOCS + PII * 3 + [MEMO] * 5) + "\n")
    (root / "val.txt").write_text("\n\n".join(HELD_OUT) + "\n")
    cfg = CorpusConfig(canaries="1,4", canary_digits=3, canary_hosts="copies", scrub_pii=False,
                       dedup_exact=False, dedup_near=False)
    build_corpus([str(root / "raw.txt")], root / "corpus", cfg, progress=False, val_inputs=[str(root / "val.txt")])
    train_tokenizer(root / "corpus", root / "tok", TokenizerConfig(kind="char", vocab_size=100), progress=False)
    build_shards(root / "corpus", root / "tok", root / "shards", ShardConfig(num_workers=1), progress=False)
    tok = load_tokenizer(root / "tok")
    out = {"root": root}
    for name, steps in (("trained", 300), ("untrained", 0)):
        run_cfg = config_from({"task": "causal_lm", "data": {"path": str(root / "shards")},
                               "model": {"kind": "gpt", "vocab_size": tok.vocab_size, "context_len": 32,
                                         "n_layer": 2, "n_head": 4, "d_model": 64}})
        out[name] = save_run(root / name, _train(root / "shards", steps), tok, run_cfg)
    return out


def _probe(cli, run: Path, *extra) -> tuple[dict, str]:
    code, out, err = cli("probe", "memorization", run, "--corpus", run.parent / "corpus", "--device", "cpu",
                         "--prompt-tokens", "12", "--continuation-tokens", "12", "--windows", "60", *extra)
    assert code == 0, err
    return json.loads((run / "memorization" / "report.json").read_text()), out


def test_memorised_canary_is_exposed_and_untrained_is_not(cli, runs) -> None:
    trained, out = _probe(cli, runs["trained"], "--plot")
    untrained, _ = _probe(cli, runs["untrained"])
    top = math.log2(1000)
    ex = trained["exposure"]
    assert ex["method"] == "exact" and ex["space"] == 1000 and ex["max_exposure"] == round(top, 3)
    by_reps = {r["repetitions"]: r for r in ex["by_repetitions"]}
    assert by_reps[4]["in_train"] == [4] and by_reps[4]["exposure"] > 0.8 * top
    assert max(r["exposure"] for r in untrained["exposure"]["canaries"]) < 0.5 * top
    assert "repetitions" in out and "exposure" in out
    assert (runs["trained"] / "memorization" / "exposure.png").stat().st_size > 1000


def test_memorised_text_is_extracted_and_untrained_gives_nothing(cli, runs) -> None:
    trained, out = _probe(cli, runs["trained"], "--parts", "extraction,membership,pii")
    untrained, _ = _probe(cli, runs["untrained"], "--parts", "extraction,membership,pii")
    # windows seen 5+ times lie inside MEMO (or a copied host): each prompt there has one continuation
    buckets = {r["occurrences"]: r for r in trained["extraction"]["by_occurrences"]}
    assert buckets["5-19"]["extractable"] == 1.0 and buckets["5-19"]["sampled"] >= 40
    assert buckets["1"]["extractable"] < 1.0  # text seen once is not all memorised in 300 steps
    assert all(r["extractable"] == 0.0 for r in untrained["extraction"]["by_occurrences"])
    assert trained["membership"]["train_loss"] < trained["membership"]["val_loss"]
    assert trained["membership"]["auc"] == 1.0 and trained["membership"]["val_documents"] == 3
    # PII written three times (or more, when a copied host holds it): all found, all regenerated
    pii, nothing = trained["pii"], untrained["pii"]
    train = list(iter_corpus(runs["root"] / "corpus", "train"))
    assert pii["by_kind"]["email"]["found"] == sum(t.count("alice.smith@example.com") for t in train) >= 3
    assert pii["by_kind"]["phone"]["found"] == sum(t.count("+1 415 867 2093") for t in train) >= 3
    assert pii["regenerated"] == pii["probed"] == pii["found"] and nothing["regenerated"] == 0
    assert nothing["probed"] == pii["probed"]
    assert "extraction" in out and f"pii: {pii['found']} of {pii['found']} probed regenerated verbatim" in out


def test_refusals_are_one_line(cli, runs, tmp_path: Path, without) -> None:
    run, root = runs["trained"], runs["root"]

    def refused(*args) -> str:
        code, _, err = cli("probe", "memorization", run, "--device", "cpu", *args)
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        return err

    manifest = json.loads((root / "shards" / "manifest.json").read_text())
    assert manifest["corpus"] == str((root / "corpus").resolve())  # found without --corpus
    moved = json.loads((root / "shards" / "manifest.json").read_text())
    (tmp_path / "old-shards").mkdir()
    for f in (root / "shards").iterdir():
        (tmp_path / "old-shards" / f.name).symlink_to(f)
    (tmp_path / "old-shards" / "manifest.json").unlink()
    (tmp_path / "old-shards" / "manifest.json").write_text(json.dumps({**moved, "corpus": None}))
    assert "pass --corpus CORPUS" in refused("--data", tmp_path / "old-shards")  # shards of an older lmforge
    plain = tmp_path / "plain"
    build_corpus([str(root / "raw.txt")], plain, CorpusConfig(dedup_near=False), progress=False)
    assert "pass the --corpus they were built from" in refused("--corpus", plain)  # another document count
    same = tmp_path / "same"  # as many train documents, no canaries
    (tmp_path / "more.txt").write_text("\n\n".join(DOCS + PII * 3 + [MEMO] * 5 + HELD_OUT) + "\n")
    build_corpus([str(tmp_path / "more.txt")], same, CorpusConfig(dedup_exact=False, dedup_near=False,
                                                                    val_fraction=0), progress=False)
    assert "--set corpus.canaries=1,5,20" in refused("--corpus", same)
    assert "context" in refused("--corpus", root / "corpus", "--prompt-tokens", "30")
    assert "--parts: nothing is not one of" in refused("--parts", "exposure,nothing")
    assert "--windows must be > 0" in refused("--windows", "0")
    without("matplotlib")
    assert "pip install 'lmforge[plot]'" in refused("--corpus", root / "corpus", "--plot")

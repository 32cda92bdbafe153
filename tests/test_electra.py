"""ELECTRA: the model and its objective, `lmforge pretrain` / `eval` / `finetune --from` / `export` end to end."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_BERT

from lmforge.data.mlm import MaskingConfig, ReplacementBatches, SpecialTokens
from lmforge.errors import LmforgeError
from lmforge.models import ElectraConfig, build_model, finetuned_part
from lmforge.models.electra import sample
from lmforge.objectives import IGNORE, replaced_token_detection_loss
from lmforge.tasks import load_config, load_run

SPECIALS = SpecialTokens(cls_id=2, sep_id=3, pad_id=0, mask_id=4, eot_id=1, vocab_size=50,
                         special_ids=frozenset(range(5)))
MASKING = MaskingConfig(mask_prob=0.15, mask_token_prob=0.85, random_token_prob=0.0)


class _Docs:
    """In-memory token source: documents of random ordinary tokens, each ending with end-of-text (id 1)."""

    def __init__(self, n_docs: int = 80, vocab: int = 50, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        docs = [np.append(rng.integers(5, vocab, rng.integers(8, 40)), 1) for _ in range(n_docs)]
        self.stream = np.concatenate(docs)
        self.offsets = np.concatenate([[0], np.cumsum([len(d) for d in docs])])
        self.num_tokens = len(self.stream)

    def tokens(self, start: int, stop: int) -> np.ndarray:
        return self.stream[start:stop]

    def doc_offsets(self) -> np.ndarray:
        return self.offsets


def _tiny(vocab: int = 50, **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = ElectraConfig(vocab_size=vocab, context_len=32, n_layer=2, n_head=4, d_model=32, dropout=0.0,
                        attn_dropout=0.0, **kw)
    model = build_model(cfg)
    for name, p in model.named_parameters():  # as the task builds it
        p.requires_grad_(not name.startswith(model.idle_prefixes))
    return model


def _batch(n: int = 16, mask_prob: float = 0.15, seed: int = 3) -> dict[str, torch.Tensor]:
    masking = dataclasses.replace(MASKING, mask_prob=mask_prob)
    return ReplacementBatches(_Docs(), SPECIALS, 32, n, seed=seed, masking=masking).get(0)


def _objective(model, batch, mask_prob: float = 0.15):
    return replaced_token_detection_loss(model, batch, disc_weight=50.0, mask_prob=mask_prob)


# ----------------------------------------------------------------------------------------------------
# the config and the model


def test_config_gives_a_quarter_width_generator_and_the_bert_tiny_discriminator():
    cfg = load_config("electra-tiny")
    assert cfg.task == "replaced_token_detection" and cfg.mlm.mask_token_prob == 0.85
    assert cfg.model.discriminator() == load_config("bert-tiny").model
    gen = cfg.model.generator()
    assert (gen.d_model, gen.n_head, gen.ff_width(), gen.n_layer) == (32, 1, 128, 2)
    assert finetuned_part(cfg.model) == (cfg.model.discriminator(), "discriminator.")
    assert dataclasses.replace(cfg.model, generator_layers=1).generator().n_layer == 1
    with pytest.raises(LmforgeError, match="generator_width_ratio"):
        ElectraConfig(n_head=8, d_model=24, generator_width_ratio=0.3)
    with pytest.raises(LmforgeError, match="generator_width_ratio"):
        ElectraConfig(generator_width_ratio=0.0)


def test_generator_and_discriminator_share_one_set_of_embeddings():
    model = _tiny()
    tables = [n for n, _ in model.named_parameters() if "embeddings" in n or "emb_norm" in n]
    assert tables and all(n.startswith("discriminator.") for n in tables)  # the generator owns none
    batch = _batch()
    positions = batch["mlm_positions"]
    gen_logits, _, _ = model(batch["input_ids"], batch["attention_mask"], positions=positions,
                             targets=batch["labels"].gather(1, positions), uniforms=batch["replace_uniforms"])
    gen_logits.sum().backward()  # the generator alone reaches the shared tables, its decoder included
    for name in ("word_embeddings", "position_embeddings", "emb_norm"):
        assert getattr(model.discriminator, name).weight.grad.abs().sum() > 0, name
    assert model.discriminator.blocks[0].attn.query.weight.grad is None


def test_sample_inverts_the_cdf_of_the_softmax():
    probs = torch.tensor([0.2, 0.0, 0.5, 0.3])
    logits = probs.clamp(min=1e-30).log().expand(4000, -1)
    u = (torch.arange(4000) + 0.5) / 4000
    drawn = sample(logits, u)
    counts = torch.bincount(drawn, minlength=4).float() / 4000
    torch.testing.assert_close(counts, probs, atol=2e-3, rtol=0)
    assert sample(logits[:1], torch.tensor([0.9999999])).item() == 3


def test_discriminator_labels_mark_exactly_the_tokens_the_samples_changed():
    model = _tiny().eval()
    batch = _batch()
    seen = []
    hook = model.discriminator.word_embeddings.register_forward_hook(lambda m, args, out: seen.append(args[0]))
    positions = batch["mlm_positions"]
    targets = batch["labels"].gather(1, positions)
    with torch.no_grad():
        gen_logits, disc_logits, replaced = model(batch["input_ids"], batch["attention_mask"], positions=positions,
                                                  targets=targets, uniforms=batch["replace_uniforms"])
    hook.remove()
    masked_input, corrupted = seen  # what the generator read, what the discriminator read
    assert torch.equal(masked_input, batch["input_ids"])
    labels = batch["labels"]
    original = torch.where(labels != IGNORE, labels, batch["input_ids"])
    assert torch.equal(replaced, corrupted != original)
    selected = labels != IGNORE
    assert torch.equal(corrupted[~selected], original[~selected])  # only masked tokens are replaced
    valid = targets != IGNORE
    drawn = sample(gen_logits, batch["replace_uniforms"])
    assert torch.equal(corrupted.gather(1, positions)[valid], drawn[valid])  # every one by its sample
    same = valid & (drawn == targets)
    assert not replaced.gather(1, positions)[same].any()  # a sample equal to the original counts as original
    assert disc_logits.shape == batch["input_ids"].shape


def test_objective_statistics_at_initialisation():
    """The generator starts near uniform: almost every masked token is replaced by something else."""
    model = _tiny().eval()
    batch = _batch(n=64, mask_prob=0.25)
    with torch.no_grad():
        loss_sum, n, ex = _objective(model, batch, mask_prob=0.25)
    masked, real = int(n), int(ex["real"])
    assert masked == int((batch["labels"] != IGNORE).sum())
    assert real == int(batch["attention_mask"].sum())
    maskable = real - 2 * len(batch["input_ids"])  # every sequence has a [CLS] and a [SEP]
    assert masked / maskable == pytest.approx(0.25, abs=0.02)
    assert int(ex["correct"]) / masked < 0.1
    assert int(ex["replaced"]) / masked == pytest.approx(1 - 1 / 50, abs=0.03)  # 1 in 50 samples is the original
    assert float(ex["gen_loss"]) / masked == pytest.approx(math.log(50), abs=0.1)
    assert float(ex["disc_loss"]) / real == pytest.approx(math.log(2), abs=0.05)
    torch.testing.assert_close(loss_sum, ex["gen_loss"] + 50.0 * 0.25 * ex["disc_loss"])


def test_objective_is_a_sum_over_sequences():
    """Two halves of a batch sum to the whole: accumulation and data parallelism stay exact."""
    model = _tiny().eval()
    batch = _batch(n=8)
    halves = [{k: v[i:i + 4] for k, v in batch.items()} for i in (0, 4)]
    with torch.no_grad():
        whole = _objective(model, batch)
        parts = [_objective(model, h) for h in halves]
    torch.testing.assert_close(whole[0], parts[0][0] + parts[1][0])
    assert int(whole[1]) == int(parts[0][1]) + int(parts[1][1])
    for key in ("replaced", "real", "disc_correct", "correct"):
        assert int(whole[2][key]) == sum(int(p[2][key]) for p in parts), key


def test_gradients_reach_both_models_and_none_flows_through_the_samples():
    model = _tiny()
    batch = _batch()
    loss_sum, _, _ = _objective(model, batch)
    loss_sum.backward()
    for name, p in model.named_parameters():
        if name.startswith(model.idle_prefixes):
            assert p.grad is None, name  # frozen: the objective never runs them
        else:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    # the discriminator's loss gives the generator's own tensors nothing: no gradient through sampling
    positions = batch["mlm_positions"]
    _, disc_logits, replaced = model(batch["input_ids"], batch["attention_mask"], positions=positions,
                                     targets=batch["labels"].gather(1, positions), uniforms=batch["replace_uniforms"])
    disc = F.binary_cross_entropy_with_logits(disc_logits, replaced.float(), reduction="sum")
    grads = torch.autograd.grad(disc, list(model.generator.parameters()), allow_unused=True)
    assert all(g is None for g in grads)


# ----------------------------------------------------------------------------------------------------
# end to end through the CLI


@pytest.fixture(scope="module")
def wordpiece_shards(tmp_path_factory) -> Path:
    from conftest import make_wordpiece_shards

    return make_wordpiece_shards(tmp_path_factory.mktemp("electra_shards"), seed=4)


TINY = TINY_BERT + ["--set", "optim.lr=3e-3"]


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def electra_run(wordpiece_shards, tmp_path_factory) -> Path:
    from lmforge.cli import main

    run = tmp_path_factory.mktemp("electra_run") / "run"
    code = main(["pretrain", "--config", "electra-tiny", "--data", str(wordpiece_shards), "--out", str(run),
                 *TINY, "--set", "train.max_steps=10"])
    assert code == 0
    return run


def test_pretrain_loss_falls_and_validation_reports_both_models(electra_run):
    losses = {r["step"]: r["loss"] for r in _records(electra_run) if "loss" in r}
    assert sorted(losses) == list(range(1, 11))
    assert losses[10] < losses[1] - 1.0
    evals = [r for r in _records(electra_run) if "val_loss" in r]
    assert [r["step"] for r in evals] == [5, 10]
    for r in evals:
        assert 0.0 <= r["val_gen_accuracy"] <= 1.0 and 0.0 <= r["val_disc_accuracy"] <= 1.0
        assert 0.0 < r["val_replaced"] < 0.15  # at most the masked share of the real tokens
        assert r["val_loss"] > r["val_gen_loss"]  # plus the weighted discriminator's part
    assert evals[1]["val_tokens"] == evals[0]["val_tokens"]  # the same fixed validation masks
    assert evals[1]["val_loss"] < evals[0]["val_loss"]
    assert evals[1]["val_disc_loss"] < math.log(2)


def test_eval_cli_reports_the_validation_metrics(electra_run, cli):
    code, out, err = cli("eval", electra_run, "--device", "cpu", "--batches", "2")
    assert code == 0, err
    metrics = json.loads(out)
    final = [r for r in _records(electra_run) if "val_loss" in r][-1]
    for key in ("loss", "gen_loss", "gen_accuracy", "disc_loss", "disc_accuracy", "replaced"):
        assert metrics[key] == pytest.approx(final[f"val_{key}"], rel=1e-5), key  # same masks, same samples


def test_inference_commands_send_the_run_to_finetune(electra_run, cli):
    code, _, err = cli("fill-mask", electra_run, "the [MASK] reads text")
    assert code == 2 and f"lmforge finetune --from {electra_run}" in err


def test_resume_gives_the_losses_and_weights_of_an_uninterrupted_run(electra_run, tmp_path, cli):
    from safetensors.torch import load_file

    stopped = tmp_path / "stopped"
    shutil.copytree(electra_run, stopped)
    shutil.rmtree(stopped / "checkpoints" / "step-000010")
    code, _, err = cli("pretrain", "--resume", stopped)
    assert code == 0, err
    drop = ("tokens_per_s", "elapsed", "mfu")
    strip = lambda rs: [{k: v for k, v in r.items() if k not in drop} for r in rs]  # noqa: E731
    assert strip(_records(stopped)) == strip(_records(electra_run))  # losses and val metrics, bit for bit
    a = load_file(electra_run / "checkpoints" / "step-000010" / "model.safetensors")
    b = load_file(stopped / "checkpoints" / "step-000010" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_finetune_takes_the_discriminator_as_a_bert_and_exports_as_bert(electra_run, tmp_path, cli):
    transformers = pytest.importorskip("transformers")
    rows = [(f"the model reads {w} text", lab) for w, lab in (("good", "positive"), ("bad", "negative"))] * 8
    (tmp_path / "data.tsv").write_text("sentence\tlabel\n" + "".join(f"{t}\t{lab}\n" for t, lab in rows))
    out = tmp_path / "clf"
    code, _, err = cli("finetune", "--from", electra_run, "--train", tmp_path / "data.tsv", "--dev",
                       tmp_path / "data.tsv", "--out", out, "--max_steps", "3", "--per-device-train-batch-size",
                       "8", "--freeze_encoder", "--quiet")
    assert code == 0, err
    pretrained, clf = load_run(electra_run), load_run(out)
    assert clf.config.model == pretrained.config.model.discriminator()  # a BERT, kind "bert"
    disc = pretrained.model.discriminator.state_dict()
    for name, t in clf.model.backbone.state_dict().items():
        if not name.startswith("pooler."):  # frozen encoder: the discriminator's weights as they were
            assert torch.equal(t, disc[name]), name
    code, stdout, err = cli("export", out, "--format", "hf", "--out", tmp_path / "hf")
    assert code == 0 and "BertForSequenceClassification" in stdout, err
    hf_model = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "hf").eval()
    ids = torch.tensor([[clf.tokenizer.cls_id, *clf.tokenizer.encode("the model reads good text"),
                         clf.tokenizer.sep_id]])
    with torch.no_grad():
        assert (hf_model(ids).logits - clf.model(ids)).abs().max().item() < 1e-4


def test_export_gives_electra_for_pretraining_with_lmforge_logits(wordpiece_shards, tmp_path):
    transformers = pytest.importorskip("transformers")
    from lmforge.config import to_dict
    from lmforge.interop import export_hf
    from lmforge.runs import save_run
    from lmforge.tasks import config_from
    from lmforge.tokenizer import load_tokenizer

    tok = load_tokenizer(wordpiece_shards / "tokenizer")
    model = _tiny(vocab=tok.vocab_size, d_ff=48).eval()
    torch.manual_seed(3)
    with torch.no_grad():  # off HF's 0/1 init, and out of GELU's linear zone, so a wrong name map shows
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(torch.randn_like(p) * 0.1)
            else:
                p.mul_(8.0)
    save_run(tmp_path / "run", model, tok, config_from({"model": to_dict(model.config)}), step=5)
    export_hf(tmp_path / "run", tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["architectures"] == ["ElectraForPreTraining"] and config["embedding_size"] == 32
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    hf_model = transformers.ElectraForPreTraining.from_pretrained(tmp_path / "hf").eval()
    texts = ["the model reads text", "small steps add up to large gains when the rate decays"]
    batch = hf_tok(texts, return_tensors="pt", padding=True)
    assert batch["input_ids"][0, 0] == tok.cls_id and "token_type_ids" in batch
    with torch.no_grad():
        got = hf_model(**batch).logits  # (B, T)
        ours = model.detect(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    real = batch["attention_mask"].bool()
    assert (got[real] - ours[real]).abs().max().item() < 1e-4
    with pytest.raises(LmforgeError, match="pre_norm"):
        from lmforge.interop.hf import family_for

        family_for(dataclasses.replace(model.config, pre_norm=True))

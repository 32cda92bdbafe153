"""`lmforge.compress.distill`: the loss, the alternate init, the teacher's one forward per micro-batch, and
distillation end to end (causal LM, masked LM, classifier) from tiny teacher runs, plus its refusals."""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import _WORDS, make_english, make_shards

from lmforge.compress import distill as distill_mod
from lmforge.compress.distill import DistillObjective, alternate_state, distill
from lmforge.errors import LmforgeError
from lmforge.models import BertConfig, GPTConfig, RNNConfig, build_model
from lmforge.models.heads import SequenceClassifier
from lmforge.objectives import IGNORE, distillation_loss
from lmforge.tasks import load_run, read_config

LOOP = ("[train]\nmax_steps = 2\nbatch_size = 4\neval_every = 2\neval_batches = 1\nsave_every = 2\nlog_every = 1\n"
        "progress = false\n[schedule]\nwarmup_steps = 1\n[runtime]\ndevice = \"cpu\"\n")
GPT = "[model]\nkind = \"gpt\"\ncontext_len = 16\nn_layer = 4\nn_head = 2\nd_model = 16\n" + LOOP
BERT = ("[model]\nkind = \"bert\"\ncontext_len = 16\nn_layer = 2\nn_head = 2\nd_model = 16\ndropout = 0.0\n"
        "attn_dropout = 0.0\n" + LOOP)


def _pretrain(root: Path, name: str, toml: str, shards: Path) -> Path:
    from lmforge.pipeline import pretrain
    from lmforge.tasks import load_config

    (root / f"{name}.toml").write_text(toml)
    return pretrain(load_config(root / f"{name}.toml", [f"data.path={shards}"]), root / name)


def _rows(n: int, seed: int) -> str:
    rng = random.Random(seed)
    lines = ["sentence\tlabel"]
    for _ in range(n):
        good = rng.random() < 0.5
        words = [rng.choice(_WORDS) for _ in range(rng.randint(3, 8))] + ["gains" if good else "decays"]
        lines.append(" ".join(words) + "\t" + ("positive" if good else "negative"))
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def teachers(tmp_path_factory) -> dict[str, Path]:
    """Tiny GPT (4 layers) and BERT (2 layers) runs on word-token shards, a classifier fine-tuned from the
    GPT, and a GPT on shards of another tokenizer."""
    from lmforge.pipeline import finetune, finetune_config
    from lmforge.tokenizer import TokenizerConfig

    root = tmp_path_factory.mktemp("distill")
    shards = make_shards(root, make_english(120, seed=1), 12, TokenizerConfig(kind="word", vocab_size=200,
                                                                             min_frequency=1))
    runs = {"gpt": _pretrain(root, "gpt", GPT, shards), "bert": _pretrain(root, "bert", BERT, shards)}
    (root / "train.tsv").write_text(_rows(48, 0))
    (root / "dev.tsv").write_text(_rows(16, 1))
    cfg = finetune_config("classify", runs["gpt"], overrides=["train.progress=false"],
                          flags={"train_file": str(root / "train.tsv"), "dev_file": str(root / "dev.tsv"),
                                 "max_steps": 2, "per_device_train_batch_size": 8, "eval_steps": 2,
                                 "learning_rate": 5e-3})
    finetune(cfg, root / "classify")
    runs["classify"] = root / "classify"
    other = root / "other"
    other.mkdir()
    other_shards = make_shards(other, make_english(40, seed=3), 4, TokenizerConfig(kind="char", vocab_size=100))
    runs["other_tok"] = _pretrain(root, "gpt_other", GPT.replace("n_layer = 4", "n_layer = 2"), other_shards)
    return runs


def _n_params(run: Path) -> int:
    return sum(p.numel() for p in load_run(run).model.parameters())


# ----------------------------------------------------------------------------------------------------
# The loss and the init


def test_kl_matches_a_hand_computation():
    s = torch.tensor([[[1.0, 0.0, -1.0], [0.5, 0.5, 0.0]]])  # (B=1, T=2, V=3)
    t = torch.tensor([[[0.0, 2.0, 0.0], [3.0, 0.0, 0.0]]])
    labels = torch.tensor([[1, IGNORE]])
    T = 2.0
    p, q = (t[0, 0] / T).softmax(-1), (s[0, 0] / T).softmax(-1)
    kl = float((p * (p / q).log()).sum()) * T * T  # the second position is not a target
    ce = float(F.cross_entropy(s[0, :1], labels[0, :1]))
    loss, n, extras = distillation_loss(s, t, labels, T, alpha_kl=0.3, alpha_task=0.7)
    assert int(n) == 1
    assert extras["kl"].item() == pytest.approx(kl, rel=1e-6) and extras["ce"].item() == pytest.approx(ce, rel=1e-6)
    assert loss.item() == pytest.approx(0.3 * kl + 0.7 * ce, rel=1e-6)
    h_s, h_t = torch.tensor([[[1.0, 0.0], [1.0, 1.0]]]), torch.tensor([[[1.0, 1.0], [0.0, 1.0]]])
    loss_cos, _, extras = distillation_loss(s, t, labels, T, 0.3, 0.7, alpha_cos=2.0, student_hidden=h_s,
                                            teacher_hidden=h_t)
    assert extras["cos"].item() == pytest.approx(1 - 2 ** -0.5, rel=1e-6)  # the first position only
    assert loss_cos.item() == pytest.approx(loss.item() + 2.0 * (1 - 2 ** -0.5), rel=1e-6)


def test_the_kl_part_is_zero_when_the_student_is_the_teacher():
    torch.manual_seed(0)
    teacher = build_model(GPTConfig(vocab_size=50, context_len=8, n_layer=2, n_head=2, d_model=16))
    student = copy.deepcopy(teacher)
    batch = {"input_ids": torch.randint(0, 50, (2, 8)), "labels": torch.randint(0, 50, (2, 8))}
    objective = DistillObjective(teacher, distill_mod.OUTPUTS["causal_lm"], 2.0, 1.0, 0.0, alpha_cos=1.0,
                                 student=student)
    loss, n, extras = objective(student, batch)
    assert extras["kl"].item() == 0.0 and int(n) == 16
    assert extras["cos"].item() == pytest.approx(0.0, abs=1e-5)  # the hooks saw the same final hidden states
    loss.backward()  # the student gets gradients, the teacher none
    assert student.wte.weight.grad is not None and teacher.wte.weight.grad is None


def test_alternate_init_copies_teacher_layers_0_2_and_the_ends():
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=40, context_len=8, n_layer=4, n_head=2, d_model=16)
    teacher, student = build_model(cfg), build_model(GPTConfig(**{**cfg.__dict__, "n_layer": 2}))
    state, why = alternate_state(student, teacher)
    assert why == ""
    student.load_state_dict(state)
    for mine, theirs in ((student.blocks[0], teacher.blocks[0]), (student.blocks[1], teacher.blocks[2]),
                         (student.wte, teacher.wte), (student.wpe, teacher.wpe), (student.ln_f, teacher.ln_f)):
        for a, b in zip(mine.state_dict().values(), theirs.state_dict().values()):
            assert torch.equal(a, b)
    assert student.lm_head.weight is student.wte.weight  # the tie survives
    # a classifier: the backbone's layers 0, 2 and the head
    bert = BertConfig(vocab_size=40, context_len=8, n_layer=3, n_head=2, d_model=16)
    t_cls = SequenceClassifier(bert, 3)
    s_cls = SequenceClassifier(BertConfig(**{**bert.__dict__, "n_layer": 2}), 3)
    state, _ = alternate_state(s_cls, t_cls, head=True)
    s_cls.load_state_dict(state)
    assert torch.equal(s_cls.backbone.blocks[1].attn.query.weight, t_cls.backbone.blocks[2].attn.query.weight)
    assert torch.equal(s_cls.head.weight, t_cls.head.weight) and torch.equal(s_cls.backbone.pooler.weight,
                                                                            t_cls.backbone.pooler.weight)
    rnn = RNNConfig(vocab_size=40, n_layer=3, d_embed=8, d_hidden=16, tie_embeddings=False)
    t_rnn, s_rnn = SequenceClassifier(rnn, 2), SequenceClassifier(RNNConfig(**{**rnn.__dict__, "n_layer": 2}), 2)
    state, why = alternate_state(s_rnn, t_rnn, head=True)
    assert why == "" and torch.equal(state["backbone.rnn.weight_hh_l1"], t_rnn.backbone.rnn.weight_hh_l2)
    assert torch.equal(state["backbone.rnn.weight_ih_l0"], t_rnn.backbone.rnn.weight_ih_l0)
    # what does not fit: another width, or more layers than every other one of the teacher's
    assert alternate_state(build_model(GPTConfig(**{**cfg.__dict__, "n_layer": 2, "d_model": 8})), teacher)[0] is None
    assert "up to layer 4" in alternate_state(build_model(GPTConfig(**{**cfg.__dict__, "n_layer": 3})),
                                                      teacher)[1]


# ----------------------------------------------------------------------------------------------------
# End to end


def test_causal_lm_distills_into_half_the_layers_with_one_teacher_forward_per_micro_batch(teachers, tmp_path,
                                                                                         monkeypatch):
    calls = []

    def counting(*args, **kwargs):
        run = load_run(*args, **kwargs)
        run.model.register_forward_hook(lambda *_: calls.append(1))
        return run

    monkeypatch.setattr(distill_mod, "load_run", counting)
    out = tmp_path / "student"
    result = distill(teachers["gpt"], out, overrides=["train.micro_batch_size=2"], say=lambda _: None)
    assert result == {"out": str(out)}
    assert len(calls) == 2 * 2  # 2 steps x 2 micro-batches; evaluation runs the student alone
    run = load_run(out)
    assert run.config.model.n_layer == 2 and _n_params(out) < _n_params(teachers["gpt"])
    info = json.loads((out / "compression.json").read_text())
    assert info["method"] == "distill" and info["init"] == "alternate" and info["from"] == str(teachers["gpt"])
    assert info["params_student"] < info["params_teacher"] and not (out / "init_from.json").exists()
    assert run.tokenizer.fingerprint == load_run(teachers["gpt"]).tokenizer.fingerprint


def test_a_distilled_run_refuses_resume_and_is_left_as_it_was(teachers, tmp_path, cli):
    lm, clf = tmp_path / "lm", tmp_path / "clf"
    distill(teachers["gpt"], lm, say=lambda _: None)
    distill(teachers["classify"], clf, say=lambda _: None)
    for command, run in (("pretrain", lm), ("finetune", clf)):
        before = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
        code, _, err = cli(command, "--resume", run)
        assert code == 2 and err.count("\n") == 1 and "cannot resume" in err and "compress distill" in err, err
        assert {p: p.stat().st_mtime_ns for p in run.rglob("*")} == before


def test_masked_lm_distills_with_the_cosine_term(teachers, tmp_path):
    out = tmp_path / "student"
    distill(teachers["bert"], out, alpha_cos=0.5, temperature=3.0, say=lambda _: None)
    assert read_config(out).model.n_layer == 1 and _n_params(out) < _n_params(teachers["bert"])
    losses = [json.loads(ln)["loss"] for ln in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in ln]
    assert losses and all(x == x and x > 0 for x in losses)


def test_classifier_distills_from_a_student_config_keeping_the_labels(teachers, tmp_path):
    out, student = tmp_path / "student", tmp_path / "small.toml"
    student.write_text('[model]\nkind = "gpt"\ncontext_len = 16\nn_layer = 1\nn_head = 2\nd_model = 8\n')
    said = []
    result = distill(teachers["classify"], out, student=student, overrides=["finetune.max_steps=2"], say=said.append)
    assert result["out"] == str(out) and "accuracy" in result["dev"]
    run = load_run(out)
    assert run.files["label_map.json"]["labels"] == load_run(teachers["classify"]).files["label_map.json"]["labels"]
    assert run.config.model.d_model == 8 and _n_params(out) < _n_params(teachers["classify"])
    assert json.loads((out / "compression.json").read_text())["init"] == "random"  # other shapes: no alternate
    assert any("random init" in s for s in said)


def test_classifier_distills_from_alternate_layers_with_the_cosine_term(teachers, tmp_path):
    out = tmp_path / "student"
    result = distill(teachers["classify"], out, alpha_cos=1.0, overrides=["finetune.max_steps=1"], say=print)
    assert "accuracy" in result["dev"] and read_config(out).model.n_layer == 2
    assert json.loads((out / "compression.json").read_text())["init"] == "alternate"


def test_a_pretrained_student_run_gives_the_backbone_its_weights(teachers, tmp_path):
    out = tmp_path / "student"  # a learning rate too small to move them: the start is what the run holds
    distill(teachers["classify"], out, student=teachers["gpt"], init="random",
            overrides=["finetune.max_steps=1", "finetune.learning_rate=1e-12"], say=print)
    assert json.loads((out / "compression.json").read_text())["init"] == "run"
    started, pretrained = load_run(out).model.backbone.state_dict(), load_run(teachers["gpt"]).model.state_dict()
    assert all(torch.allclose(started[k], pretrained[k], atol=1e-6) for k in pretrained)


def test_a_token_classifier_distills_per_token(teachers, tmp_path):
    pytest.importorskip("seqeval")
    from lmforge.pipeline import finetune, finetune_config

    rng = random.Random(0)
    for name, n in (("train", 32), ("dev", 8)):  # IOB2: "model" and "data" are the entities
        sentences = [[rng.choice(_WORDS) for _ in range(rng.randint(3, 8))] for _ in range(n)]
        (tmp_path / f"{name}.txt").write_text("\n\n".join("\n".join(f"{w} {'B-X' if w in ('model', 'data') else 'O'}"
                                                                  for w in words) for words in sentences) + "\n")
    cfg = finetune_config("ner", teachers["bert"], overrides=["train.progress=false"],
                          flags={"train_file": str(tmp_path / "train.txt"), "dev_file": str(tmp_path / "dev.txt"),
                                 "max_steps": 2, "per_device_train_batch_size": 8, "eval_steps": 2})
    finetune(cfg, tmp_path / "ner")
    out = tmp_path / "student"
    result = distill(tmp_path / "ner", out, alpha_cos=0.5, overrides=["finetune.max_steps=1"], say=print)
    assert "f1" in result["dev"] and read_config(out).model.n_layer == 1
    assert load_run(out).files["tag_map.json"]["labels"] == load_run(tmp_path / "ner").files["tag_map.json"]["labels"]


# ----------------------------------------------------------------------------------------------------
# Refusals: one line, nothing written


@pytest.mark.parametrize("kwargs, message", [
    ({"temperature": 0.0}, "--temperature"),
    ({"alpha_kl": -1.0}, "--alpha-kl"),
    ({"alpha_kl": 0.0, "alpha_task": 0.0}, "all 0"),
    ({"init": "copy"}, "--init"),
    ({"alpha_cos": 1.0, "overrides": ["model.d_model=8"]}, "--alpha-cos"),
    ({"overrides": ["model.kind=bert"]}, "model.kind"),
    ({"student": "other_tok"}, "tokenizer"),
    ({"teacher": "classify", "overrides": ["train.max_steps=3"]}, "finetune.max_steps"),
])
def test_refusals_write_nothing(teachers, tmp_path, kwargs, message):
    kwargs = dict(kwargs)
    if kwargs.get("student") == "other_tok":
        kwargs["student"] = teachers["other_tok"]
    teacher = teachers[kwargs.pop("teacher", "gpt")]
    out = tmp_path / "student"
    with pytest.raises(LmforgeError, match=message) as e:
        distill(teacher, out, say=lambda _: None, **kwargs)
    assert "\n" not in str(e.value) and not out.exists()


def test_an_unsupported_task_is_refused(tmp_path):
    from lmforge.config import save_config
    from lmforge.tasks import config_from

    rnn = tmp_path / "rnn"  # its config is enough: the task is read before anything loads
    save_config(config_from({"task": "bptt", "model": {"kind": "rnn", "vocab_size": 50}}), rnn / "config.toml")
    with pytest.raises(LmforgeError, match="bptt run: distill supports causal_lm, masked_lm, classify, ner"):
        distill(rnn, tmp_path / "out", say=lambda _: None)
    assert not (tmp_path / "out").exists()

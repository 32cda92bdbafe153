"""`lmforge compress quantize`: int8 (torchao) runs that load everywhere a run does, close to fp32, and
refused wherever they cannot go (training, export, quantizing again)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("torchao")

from lmforge.cli import main  # noqa: E402
from lmforge.tasks import load_run  # noqa: E402

TINY = ("[model]\nkind = \"{kind}\"\ncontext_len = 32\nn_layer = 2\nn_head = 2\nd_model = 32\n{extra}\n"
        "[train]\nmax_steps = 20\nbatch_size = 8\neval_every = 0\neval_batches = 2\nsave_every = 20\n"
        "progress = false\n\n[runtime]\ndevice = \"cpu\"\n")


def run(*args) -> int:
    return main([str(a) for a in args])


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_shards) -> dict[str, Path]:
    """Tiny trained GPT and BERT runs, a BERT classifier, and int8 copies made with --compile no."""
    root = tmp_path_factory.mktemp("quantize")
    out = {}
    for kind, extra in (("gpt", ""), ("bert", "dropout = 0.0\nattn_dropout = 0.0\n")):
        (root / f"{kind}.toml").write_text(TINY.format(kind=kind, extra=extra))
        assert run("pretrain", "--config", root / f"{kind}.toml", "--data", tiny_shards, "--out", root / kind) == 0
        out[kind] = root / kind
    rows = [(f"the model reads {w} text", lab) for w, lab in (("good", "yes"), ("bad", "no"))] * 8
    (root / "data.tsv").write_text("sentence\tlabel\n" + "".join(f"{t}\t{lab}\n" for t, lab in rows))
    assert run("finetune", "--from", out["bert"], "--train", root / "data.tsv", "--dev", root / "data.tsv",
               "--out", root / "clf", "--max_steps", "4", "--per-device-train-batch-size", "8", "--quiet") == 0
    out["clf"], out["data"] = root / "clf", root / "data.tsv"
    for name in ("gpt", "clf"):
        assert run("compress", "quantize", out[name], "--out", root / f"{name}-int8", "--compile", "no",
                   "--no-report") == 0
        out[f"{name}-int8"] = root / f"{name}-int8"
    return out


def _logits(loaded, ids: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return loaded.model(ids).float()


@pytest.mark.parametrize("name", ["gpt", "clf"])
def test_int8_outputs_are_close_to_fp32_and_the_file_is_smaller(runs, name):
    fp32, int8 = load_run(runs[name]), load_run(runs[f"{name}-int8"])
    assert int8.quantization["scheme"] == "int8-dynamic" and int8.quantization["compile"] is False
    ids = torch.randint(4, fp32.config.model.vocab_size, (4, 16), generator=torch.Generator().manual_seed(0))
    a, b = _logits(fp32, ids), _logits(int8, ids)
    assert not torch.equal(a, b)  # really quantized
    assert (a - b).abs().max() <= 0.05 * a.abs().max() + 1e-3
    if name == "gpt":  # the next-token choice survives almost everywhere
        assert (a.argmax(-1) == b.argmax(-1)).float().mean() >= 0.9
    size = lambda r: (r.checkpoint / "model.safetensors").stat().st_size  # noqa: E731
    assert size(int8) < 0.7 * size(fp32)
    info = json.loads((runs[f"{name}-int8"] / "compression.json").read_text())
    assert info["method"] == "quantize" and info["from"] == str(runs[name]) and info["linear_layers"] > 0


def test_a_classifier_keeps_its_unused_lm_head_fp32_and_tied(runs):
    """A task head never runs the backbone's LM head: quantizing it would untie and duplicate the embedding."""
    fp32, int8 = load_run(runs["clf"]), load_run(runs["clf-int8"])
    backbone = int8.model.backbone
    assert backbone.decoder.weight is backbone.word_embeddings.weight and type(backbone.decoder.weight) is \
        torch.nn.Parameter
    assert type(backbone.blocks[0].attn.query.weight.data).__name__ == "Int8Tensor"
    assert sum(p.numel() for p in int8.model.parameters()) == sum(p.numel() for p in fp32.model.parameters())


def test_a_loaded_int8_run_equals_the_model_that_was_saved(runs, tmp_path):
    """Saving flattens torchao's tensors into safetensors; loading must give the same int8 model back."""
    from lmforge.compress.quantize import quantize_model

    fp32 = load_run(runs["gpt"])
    quantize_model(fp32.model, "int8-dynamic")
    ids = torch.randint(4, fp32.config.model.vocab_size, (2, 16), generator=torch.Generator().manual_seed(1))
    assert torch.equal(_logits(fp32, ids), _logits(load_run(runs["gpt-int8"]), ids))


def test_weight_only_scheme_and_compiled_forward(runs, tmp_path):
    assert run("compress", "quantize", runs["gpt"], "--out", tmp_path / "w8", "--scheme", "int8-weight",
               "--compile", "yes", "--no-report") == 0
    loaded = load_run(tmp_path / "w8")
    assert loaded.quantization == {**loaded.quantization, "scheme": "int8-weight", "compile": True}
    ids = torch.randint(4, loaded.config.model.vocab_size, (2, 8), generator=torch.Generator().manual_seed(2))
    ref = _logits(load_run(runs["gpt"]), ids)
    assert (ref - _logits(loaded, ids)).abs().max() <= 0.05 * ref.abs().max() + 1e-3


def test_inference_commands_take_an_int8_run(runs, cli):
    code, out, err = cli("generate", runs["gpt-int8"], "--prompt", "the ", "--max-new-tokens", "5", "--seed", "1")
    assert code == 0, err
    code, out, err = cli("classify", runs["clf-int8"], "the model reads good text")
    assert code == 0 and ("yes" in out or "no" in out), err
    code, out, err = cli("eval", runs["clf-int8"], "--data", runs["data"])
    assert code == 0 and '"accuracy"' in out, err


def test_report_measures_before_and_after(runs, cli, tmp_path):
    code, out, err = cli("compress", "quantize", runs["clf"], "--out", tmp_path / "q", "--compile", "no")
    assert code == 0, err
    assert "ms / example (batch 32)" in out and "accuracy" in out
    report = json.loads((tmp_path / "q" / "report.json").read_text())
    assert report["method"] == "quantize" and report["file_ratio"] < 0.7
    assert set(report["after"]["speed"]) == {"1", "32"} and report["after"]["speed"]["32"]["tokens_per_s"] > 0
    assert report["before"]["metrics"]["accuracy"] >= 0 and "accuracy" in report["after"]["metrics"]


def test_what_an_int8_run_cannot_do(runs, cli, tmp_path):
    q = runs["gpt-int8"]
    before = sorted(p.name for p in q.rglob("*"))
    for args, words in ((("compress", "quantize", q, "--out", tmp_path / "again"), "already quantized"),
                        (("export", q, "--out", tmp_path / "hf"), "transformers has no layout"),
                        (("pretrain", "--resume", q), "cannot resume"),
                        (("pretrain", "--init-from", q, "--data", runs["gpt"], "--out", tmp_path / "x"),
                         "cannot be trained from"),
                        (("finetune", "--from", q, "--train", runs["data"], "--dev", runs["data"],
                          "--out", tmp_path / "y"), "cannot be trained from"),
                        (("compress", "distill", "--teacher", q, "--out", tmp_path / "d"), "distill from the run"),
                        (("compress", "distill", "--teacher", runs["gpt"], "--student", q, "--out", tmp_path / "s"),
                         "cannot be trained from"),
                        (("compress", "prune", q, "--ffn", "0.3", "--out", tmp_path / "p"), "quantized")):
        code, out, err = cli(*args)
        assert code == 2 and err.count("\n") == 1 and words in err, (args, err)
    assert sorted(p.name for p in q.rglob("*")) == before
    assert not any((tmp_path / n).exists() for n in ("again", "hf", "x", "y", "d", "s", "p"))
    from lmforge.compress.quantize import quantize
    from lmforge.errors import LmforgeError

    with pytest.raises(LmforgeError, match="int4"):
        quantize(runs["gpt"], tmp_path / "z", scheme="int4")
    assert not (tmp_path / "z").exists()

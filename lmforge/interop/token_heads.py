"""Token classification (ner) and extractive QA (qa) runs <-> HF *ForTokenClassification and
*ForQuestionAnswering folders.

Both HF heads sit on the base model without its pooler, under the family's base prefix, with the same
names in every family lmforge maps except Llama's (refused here, by name):

| task | HF class | head |
| --- | --- | --- |
| ner | BertForTokenClassification, GPT2ForTokenClassification, Roberta..., DistilBert... | `classifier` (+ id2label) |
| qa | BertForQuestionAnswering, GPT2ForQuestionAnswering, Roberta..., DistilBert... | `qa_outputs` (start, end) |
"""

from __future__ import annotations

from pathlib import Path

from lmforge.errors import LmforgeError
from lmforge.interop import hf

HEADS = {"ner": ("ForTokenClassification", "classifier"), "qa": ("ForQuestionAnswering", "qa_outputs")}
FAMILIES = ("bert", "gpt2", "roberta", "distilbert")


def architecture(family: hf.Family, task: str) -> str:
    if family.model_type not in FAMILIES:
        raise LmforgeError(f"a {task} run on a {family.model_type} backbone has no Hugging Face export in lmforge "
                           f"(its head layout differs): only {', '.join(FAMILIES)} backbones export")
    return family.classifier.removesuffix("ForSequenceClassification") + HEADS[task][0]


def key_map(family: hf.Family, cfg, task: str) -> list[hf.Row]:
    """The backbone's rows under `backbone.` without the LM head and the pooler, then the head."""
    name = HEADS[task][1]
    base = [(h, f"backbone.{ours}", how, when) for h, ours, how, when in hf.key_map(family, cfg)
            if not h.startswith(family.head_roots) and ".pooler." not in f".{h}"]
    return base + [(f"{name}.weight", "head.weight", "", ""), (f"{name}.bias", "head.bias", "", "")]


def export(run_dir: Path, out: Path, checkpoint: str, overwrite: bool, skip_damaged: bool) -> Path:
    from safetensors.torch import save_file

    from lmforge.atomic import output_dir, write_json
    from lmforge.interop.hf_tokenizer import export_tokenizer
    from lmforge.tasks import load_run

    run = load_run(run_dir, checkpoint, skip_damaged=skip_damaged)
    cfg, tok, task = run.config.model, run.tokenizer, run.task.name
    family = hf.family_for(cfg)
    arch = architecture(family, task)
    tensors = hf.to_hf_state(run.model.state_dict(), cfg, family, key_map(family, cfg, task))
    config = hf.to_hf_config(cfg, family, hf.SpecialIds(bos=tok.eot_id, eos=tok.eot_id, pad=tok.pad_id))
    config["architectures"] = [arch]
    if task == "ner":
        labels = run.files["tag_map.json"]["labels"]
        config["id2label"] = {str(i): t for i, t in enumerate(labels)}
        config["label2id"] = {t: i for i, t in enumerate(labels)}
        config["classifier_dropout"] = run.model.drop.p
    with output_dir(out, overwrite=overwrite) as tmp:
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        write_json(tmp / "config.json", config)
        export_tokenizer(tok, tmp, family, cfg.context_len)
    print(f"lmforge: exported {run_dir} (step {run.step}) as {arch} -> {out}")
    return out


def task_of(raw_cfg: dict) -> str | None:
    """"ner" or "qa" when config.json names one of their architectures."""
    for task, (suffix, _) in HEADS.items():
        if any(str(a).endswith(suffix) for a in raw_cfg.get("architectures") or ()):
            return task
    return None


def import_run(raw_cfg: dict, family: hf.Family, cfg, tensors, tok, out: Path, source: str, overwrite: bool,
               quiet: bool, check) -> Path:
    """A *ForTokenClassification / *ForQuestionAnswering folder -> a fine-tuned ner / qa run folder.
    `check(model, state)` loads the state and returns the parameters left fresh (interop/runs.py)."""
    from lmforge.models.heads import SpanScorer, TokenClassifier
    from lmforge.runs import save_run
    from lmforge.tasks.ner import TAG_MAP, NerArgs, NerConfig
    from lmforge.tasks.qa import QAArgs, QAConfig

    task = task_of(raw_cfg)
    arch = architecture(family, task)
    rows = key_map(family, cfg, task)
    state = hf.from_hf_state(tensors, cfg, family, source, rows, arch)
    files = {}
    if task == "ner":
        labels = hf.classifier_labels(raw_cfg, state["head.weight"].shape[0], source)
        dropout = raw_cfg.get("classifier_dropout")
        dropout = float(raw_cfg.get("hidden_dropout_prob", raw_cfg.get("resid_pdrop", 0.1)) if dropout is None
                        else dropout)
        run_cfg = NerConfig(task="ner", model=cfg, finetune=NerArgs(classifier_dropout=dropout))
        model = TokenClassifier(cfg, len(labels), dropout)
        files[TAG_MAP] = {"labels": labels, "id2label": {str(i): t for i, t in enumerate(labels)},
                          "scheme_read": "iob2", "scheme": "iob2"}
        bad = [t for t in labels if t != "O" and t[:2] not in ("B-", "I-")]
        if bad:
            raise LmforgeError(f"{source}: id2label has {bad[0]!r}: lmforge's ner reads IOB2 tags (O, B-X, I-X)")
    else:
        run_cfg, model = QAConfig(task="qa", model=cfg, finetune=QAArgs()), SpanScorer(cfg)
    fresh = check(model, state)
    save_run(out, model, tok, run_cfg, overwrite=overwrite, meta={"imported_from": source}, files=files)
    if not quiet:
        print(f"lmforge: imported {source} ({arch}) -> {out}" + (f"; newly initialised: {', '.join(fresh)}"
                                                                   if fresh else ""))
    return out

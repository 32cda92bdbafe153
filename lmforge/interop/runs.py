"""Export lmforge runs as HF folders; import HF folders (or Hub names) as lmforge run folders
(*ForSequenceClassification folders as fine-tuned runs).

An exported folder loads with `AutoTokenizer` / `AutoModelFor*.from_pretrained` and nothing else. An
imported run has the layout `lmforge pretrain` writes (config.toml, tokenizer/, checkpoints/step-000000/),
so everything that takes a run takes it; `hf:DIR` or `hf:NAME` is accepted wherever a run is, via
`resolve_run`, which imports once into a cache folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import torch

from lmforge.errors import LmforgeError
from lmforge.interop import hf, token_heads
from lmforge.interop.hf_tokenizer import export_tokenizer, import_tokenizer
from lmforge.runs import save_run

HF_PREFIX = "hf:"


# ----------------------------------------------------------------------------------------------------
# Export


def export_hf(run: str | Path, out: str | Path, checkpoint: str = "best", overwrite: bool = False,
              skip_damaged: bool = False) -> Path:
    """Write run `run` (a folder or `hf:...`) as a transformers folder `out`; returns `out`."""
    from safetensors.torch import save_file

    from lmforge.atomic import output_dir, write_json
    from lmforge.tasks import get_task, load_run, read_config

    run_dir, out = resolve_run(run), Path(out)
    run_cfg = read_config(run_dir)
    _refuse_quantized(run_dir, checkpoint, skip_damaged)
    if run_cfg.task in token_heads.HEADS:
        return token_heads.export(run_dir, out, checkpoint, overwrite, skip_damaged)
    if get_task(run_cfg.task).head:
        return _export_classifier(run_dir, out, checkpoint, overwrite, skip_damaged)
    cfg = run_cfg.model
    family = hf.family_for(cfg)  # refuse before loading any weights
    loaded = load_run(run_dir, checkpoint, skip_damaged=skip_damaged)
    tok = loaded.tokenizer
    state = loaded.model.state_dict()
    _check_covered(state, cfg, family)
    tensors = hf.to_hf_state(state, cfg, family)
    ids = hf.SpecialIds(bos=tok.eot_id, eos=tok.eot_id, pad=tok.pad_id)
    config = hf.to_hf_config(cfg, family, ids)
    if run_cfg.task == "seq2seq" and run_cfg.finetune.source_prefix:  # what transformers 4 pipelines prepend
        config["prefix"] = run_cfg.finetune.source_prefix
    with output_dir(out, overwrite=overwrite) as tmp:
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        write_json(tmp / "config.json", config)
        if family.special_names == "causal":
            write_json(tmp / "generation_config.json",
                       {"bos_token_id": ids.bos, "eos_token_id": ids.eos, "pad_token_id": ids.pad})
        elif family.special_names == "t5":
            write_json(tmp / "generation_config.json", {"decoder_start_token_id": ids.pad, "eos_token_id": ids.eos,
                                                        "pad_token_id": ids.pad, **_decoding(run_cfg)})
        export_tokenizer(tok, tmp, family, cfg.context_len)
    print(f"lmforge: exported {run_dir} (step {loaded.step}) as {config['architectures'][0]} -> {out}")
    return out


def _decoding(run_cfg) -> dict:
    """A seq2seq run's decoding as generation_config.json keys: `generate()` then decodes as lmforge does."""
    if run_cfg.task != "seq2seq":
        return {}
    d = run_cfg.finetune.decoding()
    return {"max_new_tokens": d.max_new_tokens, "num_beams": d.num_beams, "length_penalty": d.length_penalty,
            "no_repeat_ngram_size": d.no_repeat_ngram_size, "early_stopping": d.early_stopping, "do_sample": False}


def _refuse_quantized(run_dir: Path, checkpoint: str, skip_damaged: bool) -> None:
    from lmforge.checkpoint import find_checkpoint, read_meta

    how = read_meta(find_checkpoint(run_dir, checkpoint, skip_damaged)).get("quantization")
    if how:
        raise LmforgeError(f"{run_dir} is quantized ({how['scheme']}, {how.get('library', 'torchao')}): transformers "
                           f"has no layout for its int8 tensors; export the run it was made from ({how.get('from')}) "
                           "and quantize on the transformers side")


def _export_classifier(run_dir: Path, out: Path, checkpoint: str, overwrite: bool, skip_damaged: bool) -> Path:
    """A `lmforge finetune` run -> *ForSequenceClassification with id2label/label2id."""
    from safetensors.torch import save_file

    from lmforge.atomic import output_dir, write_json
    from lmforge.tasks import load_run
    from lmforge.tasks.classify import labels_of

    clf = load_run(run_dir, checkpoint, skip_damaged=skip_damaged)
    cfg, tok, model, labels = clf.config.model, clf.tokenizer, clf.model, labels_of(clf)
    family = hf.family_for(cfg)
    if model.pooling != family.pooling:
        raise LmforgeError(f"finetune.pooling = {json.dumps(model.pooling)} has no Hugging Face equivalent "
                           f"for {family.classifier}: export is not possible; fine-tune with "
                           f"pooling = {json.dumps(family.pooling)} (or \"auto\")")
    tensors = hf.to_hf_state(model.state_dict(), cfg, family, hf.classifier_key_map(family, cfg))
    config = hf.to_hf_config(cfg, family, hf.SpecialIds(bos=tok.eot_id, eos=tok.eot_id, pad=tok.pad_id))
    config["architectures"] = [family.classifier]
    config["id2label"] = {str(i): label for i, label in enumerate(labels)}
    config["label2id"] = {label: i for i, label in enumerate(labels)}
    if family.special_names != "causal":
        config["classifier_dropout" if family.model_type != "distilbert" else "seq_classif_dropout"] = model.drop.p
    with output_dir(out, overwrite=overwrite) as tmp:
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        write_json(tmp / "config.json", config)
        export_tokenizer(tok, tmp, family, cfg.context_len)
    print(f"lmforge: exported {run_dir} (step {clf.step}) as {config['architectures'][0]} with "
          f"{len(labels)} labels -> {out}")
    return out


def _check_covered(state: dict[str, torch.Tensor], cfg, family: hf.Family) -> None:
    """Every lmforge tensor must have a row in the key map: a forgotten one would be lost silently."""
    mapped = {r[1] for r in hf.key_map(family, cfg)}
    if not any(name.startswith("pooler.") for name in mapped):  # DistilBERT's LM has no pooler
        mapped |= {name for name in state if name.startswith("pooler.")}
    tied = {"lm_head.weight", "decoder.weight"} if cfg.tie_embeddings else set()
    left = sorted(n for n in set(state) - mapped - tied if not n.startswith(family.not_exported))
    if left:
        raise AssertionError(f"key map of {family.model_type} has no row for {left}")


# ----------------------------------------------------------------------------------------------------
# Import


def import_hf(src: str | Path, out: str | Path, overwrite: bool = False, quiet: bool = False) -> Path:
    """Turn HF folder `src` (or `hf:NAME` from the Hub) into lmforge run folder `out`; returns `out`.

    A *ForSequenceClassification folder becomes a fine-tuned run (what `lmforge finetune` writes:
    [finetune] in config.toml, label_map.json from id2label), a *ForTokenClassification or
    *ForQuestionAnswering one a ner or qa run; anything else a pretrained run.
    """
    from lmforge.config import to_dict
    from lmforge.models import build_model
    from lmforge.tasks import config_from

    folder, out, source = _source_folder(str(src)), Path(out), str(src)
    raw_cfg = hf.read_hf_config(folder)
    family, cfg = hf.from_hf_config(raw_cfg, source)
    tok = import_tokenizer(folder, family, raw_cfg)  # before the weights: it may need an extra
    tensors = read_weights(folder)
    cfg = _normalise_config(cfg, family, tensors)
    if tok.vocab_size > cfg.vocab_size:
        raise LmforgeError(f"{source}: the tokenizer has {tok.vocab_size} tokens but the model only "
                           f"{cfg.vocab_size} embeddings: the folder mixes two models")
    if hf.is_classifier(raw_cfg):
        return _import_classifier(raw_cfg, family, cfg, tensors, tok, out, source, overwrite, quiet)
    if token_heads.task_of(raw_cfg):
        return token_heads.import_run(raw_cfg, family, cfg, tensors, tok, out, source, overwrite, quiet,
                                      lambda model, state: _load_checked(model, state, cfg, family, "backbone."))
    model = build_model(cfg)
    fresh = _load_checked(model, hf.from_hf_state(tensors, cfg, family, source), cfg, family, "")
    unused = hf.unused_tensors(tensors, cfg, family)
    run_cfg = config_from({"model": to_dict(cfg)})  # the model's pretraining task
    save_run(out, model, tok, run_cfg, overwrite=overwrite, meta={"imported_from": source, "fresh": fresh})
    if not quiet:
        arch = ", ".join(raw_cfg.get("architectures") or [family.lm])
        print(f"lmforge: imported {source} ({arch}) -> {out}{_notes(fresh, unused)}")
    return out


def _normalise_config(cfg, family: hf.Family, tensors: dict[str, torch.Tensor]):
    """lmforge's spelling of what the checkpoint holds, so configs compare equal after a round trip."""
    from dataclasses import replace

    if cfg.d_ff and cfg.d_ff == replace(cfg, d_ff=0).ff_width():
        cfg = replace(cfg, d_ff=0)  # lmforge's "default width"
    names = hf.normalise_names(tensors, family)
    types = names.get(f"{family.base_prefix}embeddings.token_type_embeddings.weight")
    if family.model_type == "bert" and types is not None and types.shape[0] == 1 and not types.any():
        cfg = replace(cfg, type_vocab_size=0)  # one zero row adds nothing: lmforge's "no segments"
    return cfg


def _load_checked(model: torch.nn.Module, state: dict[str, torch.Tensor], cfg, family: hf.Family,
                  prefix: str) -> list[str]:
    """Load `state` into `model`; return the parameters left freshly initialised.

    Only optional parts may be fresh: the pooler, and the LM head of a checkpoint saved without one
    (a bare BertModel or GPT2Model: from_pretrained initialises it too). `prefix` is where the base
    model's names start (`backbone.` in a classifier), whose LM head classification never runs.
    """
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {f"{prefix}lm_head.weight", f"{prefix}decoder.weight"} if cfg.tie_embeddings else set()
    backbone = model.backbone if prefix else model
    head = tuple(prefix + p for p in backbone.lm_head_prefixes)
    fresh = sorted(m for m in set(missing) - tied if not (prefix and m.startswith(head)))
    optional = tuple(prefix + p for p in backbone.pooler_prefixes) + head
    if unexpected or any(not m.startswith(optional) for m in fresh):
        raise AssertionError(f"key map of {family.model_type} is inconsistent: missing {fresh}, "
                             f"unexpected {unexpected}")
    return fresh


def _notes(fresh: list[str], unused: list[str]) -> str:
    return (f"; newly initialised (not in the checkpoint): {', '.join(fresh)}" if fresh else "") + \
           (f"; ignored: {', '.join(unused[:5])}" if unused else "")


def _import_classifier(raw_cfg: dict, family: hf.Family, cfg, tensors: dict[str, torch.Tensor], tok, out: Path,
                       source: str, overwrite: bool, quiet: bool) -> Path:
    """A *ForSequenceClassification folder -> a fine-tuned classify run folder."""
    from lmforge.models.heads import SequenceClassifier
    from lmforge.tasks.classify import LABEL_MAP, ClassifyArgs, ClassifyConfig, label_map_json

    arch = family.classifier
    rows = hf.classifier_key_map(family, cfg)
    state = hf.from_hf_state(tensors, cfg, family, source, rows, arch)
    labels = hf.classifier_labels(raw_cfg, state["head.weight"].shape[0], source)
    dropout = raw_cfg.get("classifier_dropout")
    if dropout is None:  # HF's BERT head falls back on the hidden dropout; GPT heads have none
        dropout = raw_cfg.get("seq_classif_dropout", raw_cfg.get("hidden_dropout_prob", 0.1)) \
            if family.special_names != "causal" else 0.1
    ft = ClassifyArgs(pooling="auto", classifier_dropout=float(dropout))
    model = SequenceClassifier(cfg, len(labels), ft.pooling, ft.classifier_dropout)
    fresh = _load_checked(model, state, cfg, family, "backbone.")
    unused = hf.unused_tensors(tensors, cfg, family, rows)
    save_run(out, model, tok, ClassifyConfig(task="classify", model=cfg, finetune=ft), overwrite=overwrite,
             meta={"imported_from": source}, files={LABEL_MAP: label_map_json(labels, {})})
    if not quiet:
        print(f"lmforge: imported {source} ({arch}, {len(labels)} labels: {', '.join(labels[:5])}"
              f"{', ...' if len(labels) > 5 else ''}) -> {out}{_notes(fresh, unused)}")
    return out


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of an HF folder: (sharded) safetensors, else pytorch_model.bin loaded weights-only."""
    from safetensors.torch import load_file

    for index_name, single, loader in (
            ("model.safetensors.index.json", "model.safetensors", lambda p: load_file(str(p))),
            ("pytorch_model.bin.index.json", "pytorch_model.bin",
             lambda p: torch.load(p, map_location="cpu", weights_only=True))):
        index = folder / index_name
        if index.is_file():
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        elif (folder / single).is_file():
            files = [single]
        else:
            continue
        tensors: dict[str, torch.Tensor] = {}
        for name in files:
            try:
                part = loader(folder / name)
            except Exception as e:  # noqa: BLE001 - a broken file is the user's to replace
                first = str(e).strip().splitlines()[0] if str(e).strip() else ""
                why = ("it holds Python objects besides tensors, and lmforge never unpickles code: save it "
                       "with safetensors" if "weights_only" in str(e) else f"{type(e).__name__}: {first[:200]}")
                raise LmforgeError(f"{folder / name}: unreadable weights ({why})") from None
            if not isinstance(part, dict) or not all(isinstance(v, torch.Tensor) for v in part.values()):
                raise LmforgeError(f"{folder / name}: unreadable weights (not a flat name -> tensor mapping): "
                                   "give the state dict that save_pretrained writes")
            tensors.update(part)
        return tensors
    raise LmforgeError(f"{folder} has no model.safetensors or pytorch_model.bin: give a folder saved by "
                       "transformers' save_pretrained")


# ----------------------------------------------------------------------------------------------------
# hf: paths


def resolve_run(path: str | Path) -> Path:
    """A run folder for `path`: itself, or for `hf:DIR` / `hf:NAME` an import cached by source and mtime."""
    text = str(path)
    if not text.startswith(HF_PREFIX):
        return Path(path)
    folder = _source_folder(text)
    stamp = [str(folder.resolve())]
    for f in sorted(folder.iterdir()):
        if f.is_file():
            stamp.append(f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}")
    key = hashlib.sha256("\n".join(stamp).encode()).hexdigest()[:12]
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", text[len(HF_PREFIX):].strip("/"))[-60:].strip("_.") or "model"
    run_dir = cache_root() / f"{name}-{key}"
    if not (run_dir / "config.toml").is_file():
        import_hf(folder, run_dir, overwrite=True, quiet=True)
    return run_dir


def cache_root() -> Path:
    """Where `hf:` imports are kept: $LMFORGE_CACHE, else $XDG_CACHE_HOME/lmforge, else ~/.cache/lmforge."""
    if os.environ.get("LMFORGE_CACHE"):
        return Path(os.environ["LMFORGE_CACHE"]) / "hf-runs"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "lmforge" / "hf-runs"


def _source_folder(src: str) -> Path:
    """A local HF folder for `DIR`, `hf:DIR` or `hf:NAME` (NAME is downloaded from the Hub)."""
    name = src[len(HF_PREFIX):] if src.startswith(HF_PREFIX) else src
    folder = Path(name).expanduser()
    if folder.is_dir():
        return folder
    if folder.exists():
        raise LmforgeError(f"{name} is a file: give the folder that holds config.json")
    if not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", name) or name.startswith((".", "/")):
        raise LmforgeError(f"folder {name} not found: give a folder saved by transformers' save_pretrained "
                           "or a Hub name such as bert-base-uncased")
    return download(name)


def download(name: str) -> Path:
    """Fetch a Hub model's config, tokenizer and weights (safetensors, else .bin) into the HF cache."""
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import RepositoryNotFoundError
    except ImportError:
        raise LmforgeError(f"hf:{name} needs huggingface_hub: pip install 'lmforge[hf]', "
                           "or pass a folder") from None
    files = ["*.json", "*.txt", "*.model"]
    try:
        path = Path(snapshot_download(name, allow_patterns=[*files, "*.safetensors"]))
        if not any(path.glob("*.safetensors")):
            path = Path(snapshot_download(name, allow_patterns=[*files, "pytorch_model*.bin"]))
    except RepositoryNotFoundError:
        raise LmforgeError(f"could not download {name}: no such model on the Hugging Face Hub (or it is "
                           "private: log in with `hf auth login`)") from None
    except Exception as e:  # noqa: BLE001 - offline mode, DNS, timeouts all mean the same to the user
        if _offline(e):
            raise LmforgeError(f"could not download {name}: no network; download it elsewhere and pass the "
                               "folder") from None
        raise LmforgeError(f"could not download {name}: {type(e).__name__}: {e}") from None
    return path


def _offline(e: BaseException) -> bool:
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0"):
        return True
    names = {type(x).__name__ for x in (e, e.__cause__, e.__context__) if x is not None}
    return bool(names & {"LocalEntryNotFoundError", "OfflineModeIsEnabled", "ConnectError", "ConnectionError",
                         "ConnectTimeout", "ReadTimeout", "TimeoutException", "gaierror"})

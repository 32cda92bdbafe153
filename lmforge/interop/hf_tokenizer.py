"""Tokenizer files between lmforge and `transformers`.

Export writes what `AutoTokenizer.from_pretrained` reads (tokenizer.json, tokenizer_config.json,
special_tokens_map.json) plus lmforge_tokenizer.json, so a re-import restores the exact tokenizer.
Import turns any fast HF tokenizer into an lmforge `Tokenizer`, inferring the six special-token roles
(eot, pad, unk, mask, cls, sep) from the HF special tokens.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lmforge.errors import LmforgeError
from lmforge.tokenizer import META_FILE, ROLES, Tokenizer

# HF special-token attribute -> lmforge role, by the special-token names a family's tokenizers carry.
SPECIAL_NAMES = {
    "causal": {"bos_token": "eot", "eos_token": "eot", "unk_token": "unk", "pad_token": "pad",
               "mask_token": "mask", "cls_token": "cls", "sep_token": "sep"},
    "bert": {"unk_token": "unk", "sep_token": "sep", "pad_token": "pad", "cls_token": "cls", "mask_token": "mask"},
    "roberta": {"bos_token": "cls", "eos_token": "sep", "unk_token": "unk", "sep_token": "sep", "pad_token": "pad",
                "cls_token": "cls", "mask_token": "mask"},
    "t5": {"eos_token": "eot", "unk_token": "unk", "pad_token": "pad"},
}


def export_tokenizer(tok: Tokenizer, out: Path, family, model_max_length: int) -> None:
    """Write the tokenizer files of an HF folder of `family` (interop.family.Family) into `out`."""
    from tokenizers import Tokenizer as Backend
    from tokenizers.processors import TemplateProcessing

    from lmforge.atomic import write_json, write_text

    backend = Backend.from_str(tok.backend.to_str())
    extra: dict[str, Any] = {}
    if family.special_names == "t5":  # T5 reads `text </s>`: lmforge appends it itself, HF's tokenizer does
        eos = tok.specials["eot"]
        backend.post_processor = TemplateProcessing(single=f"$A {eos}", pair=f"$A {eos} $B {eos}",
                                                    special_tokens=[(eos, tok.eot_id)])
        extra["additional_special_tokens"] = [tok.id_to_piece(i) for i in tok.sentinel_ids]
    elif family.special_names != "causal":
        # lmforge wraps encoder input as [CLS] text [SEP] itself; HF expects the tokenizer to do it
        cls, sep = tok.specials["cls"], tok.specials["sep"]
        types = family.model_type in ("bert", "electra")
        if family.special_names == "roberta":
            pair = f"{cls} $A {sep} {sep} $B {sep}"
        else:
            pair = f"{cls} $A {sep} $B:1 {sep}:1" if types else f"{cls} $A {sep} $B {sep}"
        backend.post_processor = TemplateProcessing(single=f"{cls} $A {sep}", pair=pair,
                                                    special_tokens=[(cls, tok.cls_id), (sep, tok.sep_id)])
        # RoBERTa and DistilBERT read no token types; BERT's and ELECTRA's must be asked for by name
        # (transformers 5's generic fast tokenizer leaves them out, and a pair would then run with every type 0)
        extra["model_input_names"] = ["input_ids", "token_type_ids", "attention_mask"] if types else \
            ["input_ids", "attention_mask"]
    write_text(out / "tokenizer.json", backend.to_str(pretty=True))
    special_map = {name: tok.specials[role] for name, role in SPECIAL_NAMES[family.special_names].items()}
    write_json(out / "special_tokens_map.json", special_map)
    write_json(out / "tokenizer_config.json", {
        "tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False,
        "model_max_length": model_max_length, "padding_side": "right",
        "do_lower_case": tok.lowercase, **extra, **special_map})
    write_json(out / META_FILE, {
        "format_version": 1, "kind": tok.kind, "vocab_size": tok.vocab_size, "fingerprint": tok.fingerprint,
        "lowercase": tok.lowercase,
        "special_tokens": {r: {"token": tok.specials[r], "id": getattr(tok, f"{r}_id")} for r in ROLES}})


def import_tokenizer(folder: Path, family, hf_config: dict[str, Any]) -> Tokenizer:
    """An lmforge Tokenizer for the HF tokenizer in `folder` (of `family`, an interop.family.Family)."""
    backend = _load_backend(folder)
    meta_path = folder / META_FILE
    if meta_path.is_file():  # exported by lmforge: take back the exact tokenizer
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if family.special_names != "causal":
            backend.post_processor = None  # added by export; lmforge adds [CLS]/[SEP] itself
        specials = {r: meta["special_tokens"][r]["token"] for r in ROLES}
        return Tokenizer(backend, meta["kind"], specials, lowercase=meta.get("lowercase", False))
    named = _named_specials(folder, family, hf_config, backend)
    specials = _roles(named, folder)
    return Tokenizer(backend, _kind_of(backend), specials, lowercase=_lowercase(backend))


def _load_backend(folder: Path):
    from tokenizers import Tokenizer as Backend

    if (folder / "tokenizer.json").is_file():
        return Backend.from_file(str(folder / "tokenizer.json"))
    from lmforge.extras import require

    require("transformers", f"{folder}: converting its tokenizer files (it has no tokenizer.json)")
    try:  # vocab.txt / vocab.json + merges.txt: let transformers convert them to a fast tokenizer
        from transformers import AutoTokenizer

        hf_tok = AutoTokenizer.from_pretrained(str(folder), use_fast=True)
        return Backend.from_str(hf_tok.backend_tokenizer.to_str())
    except Exception as e:  # noqa: BLE001 - any failure is the same user problem
        raise LmforgeError(f"{folder}: no tokenizer.json and the tokenizer files could not be converted "
                           f"({type(e).__name__}: {e}); save it with a fast tokenizer") from None


def _named_specials(folder: Path, family, hf_config: dict[str, Any], backend) -> dict[str, str]:
    """HF special-token name (eos_token, ...) -> token string, from the folder's files."""
    named: dict[str, str] = {}
    for fname in ("tokenizer_config.json", "special_tokens_map.json"):
        path = folder / fname
        if path.is_file():
            for key, value in json.loads(path.read_text(encoding="utf-8")).items():
                if key.endswith("_token") and value:
                    named[key] = value["content"] if isinstance(value, dict) else str(value)
    for key in ("bos", "eos", "pad"):  # config.json ids, when the tokenizer files are silent
        i = hf_config.get(f"{key}_token_id")
        if f"{key}_token" not in named and isinstance(i, int) and backend.id_to_token(i) is not None:
            named[f"{key}_token"] = backend.id_to_token(i)
    for key, token in family.default_specials.items():
        if key not in named and backend.token_to_id(token) is not None:
            named[key] = token
    return {k: v for k, v in named.items() if backend.token_to_id(v) is not None}


def _roles(named: dict[str, str], folder: Path) -> dict[str, str]:
    def first(*keys: str) -> str | None:
        return next((named[k] for k in keys if k in named), None)

    eot = first("eos_token", "sep_token", "bos_token")
    if eot is None:
        raise LmforgeError(f"{folder}: the tokenizer names no eos, sep or bos token, so lmforge cannot tell "
                           "where a text ends: add eos_token to its tokenizer_config.json")
    return {"eot": eot, "pad": first("pad_token") or eot, "unk": first("unk_token") or eot,
            "mask": first("mask_token", "unk_token") or eot, "cls": first("cls_token", "bos_token") or eot,
            "sep": first("sep_token") or eot}


def _kind_of(backend) -> str:
    data = json.loads(backend.to_str())
    model, pre = data["model"]["type"], json.dumps(data.get("pre_tokenizer"))
    if model == "WordPiece":
        return "wordpiece"
    if model == "BPE":
        # SentencePiece-style BPE ('▁' and <0xNN> pieces) has the surface rules of lmforge's unigram kind
        return "bpe" if "ByteLevel" in pre else "unigram"
    if model == "Unigram":
        return "unigram"
    return "char" if '"Split"' in pre else "word"


def _lowercase(backend) -> bool:
    norm = json.dumps(json.loads(backend.to_str()).get("normalizer"))
    return '"lowercase": true' in norm or '"Lowercase"' in norm

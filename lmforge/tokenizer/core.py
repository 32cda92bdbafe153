"""The Tokenizer: a trained `tokenizers` pipeline with its kind, its special-token roles, its
fingerprint, and the files it is saved as; `load_tokenizer` reads it back."""


from __future__ import annotations

import hashlib
import json
from functools import cached_property
from pathlib import Path

import numpy as np

from lmforge.errors import LmforgeError

ROLES = ("eot", "pad", "unk", "mask", "cls", "sep")
GPT_SPECIALS = {"eot": "<|endoftext|>", "pad": "<|pad|>", "unk": "<|unk|>", "mask": "<|mask|>",
                "cls": "<|cls|>", "sep": "<|sep|>"}
# BERT separates documents with [SEP], so that is its end-of-text token too.
BERT_SPECIALS = {"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]",
                 "eot": "[SEP]"}
# WikiText writes `<unk>` itself, and word-level results count one `<eos>` per line.
WORD_SPECIALS = {"eot": "<eos>", "unk": "<unk>", "pad": "<pad>", "mask": "<mask>", "cls": "<cls>",
                 "sep": "<sep>"}
META_FILE = "lmforge_tokenizer.json"


def special_tokens_for(kind: str) -> dict[str, str]:
    return {"wordpiece": BERT_SPECIALS, "word": WORD_SPECIALS}.get(kind, GPT_SPECIALS)


def _unique(tokens: dict[str, str]) -> list[str]:
    return list(dict.fromkeys(tokens.values()))


def fingerprint_of(backend) -> str:
    data = json.loads(backend.to_str())
    canonical = json.dumps(data, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def _is_cjk(ch: str) -> bool:
    o = ord(ch)
    return (0x3040 <= o <= 0x30FF or 0x3400 <= o <= 0x4DBF or 0x4E00 <= o <= 0x9FFF or 0xF900 <= o <= 0xFAFF
            or 0x3000 <= o <= 0x303F or 0xFF00 <= o <= 0xFFEF or 0x20000 <= o <= 0x2FA1F)


def _byte_decoder() -> dict[str, int]:
    from tokenizers.pre_tokenizers import ByteLevel

    # ByteLevel.alphabet() is unordered; rebuild GPT-2's byte -> printable char map to invert it.
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    table = {chr(c): b for b, c in zip(bs, cs)}
    assert set(table) == set(ByteLevel.alphabet())
    return table


class Tokenizer:
    """A trained `tokenizers.Tokenizer` plus its kind, special-token roles and fingerprint."""

    def __init__(self, backend, kind: str, specials: dict[str, str], lowercase: bool = False) -> None:
        # lmforge pads and truncates itself (batches, max_length counts): a tokenizer.json that pads every
        # text to 128 tokens (as many hub tokenizers do) must not do it inside `encode`
        backend.no_padding()
        backend.no_truncation()
        self._backend = backend
        self.kind = kind
        self.lowercase = lowercase
        self.specials = dict(specials)
        self.vocab_size = backend.get_vocab_size(with_added_tokens=True)
        self.fingerprint = fingerprint_of(backend)
        ids = {}
        for role in ROLES:
            i = backend.token_to_id(specials[role])
            if i is None:
                raise LmforgeError(f"tokenizer has no {role} token {specials[role]!r}: retrain it with "
                                   "`lmforge tokenizer train`")
            ids[role] = i
        self.eot_id, self.pad_id, self.unk_id = ids["eot"], ids["pad"], ids["unk"]
        self.mask_id, self.cls_id, self.sep_id = ids["mask"], ids["cls"], ids["sep"]
        self.special_ids = frozenset(ids.values())

    @property
    def backend(self):
        return self._backend

    @cached_property
    def sentinel_ids(self) -> list[int]:
        """Ids of <extra_id_0>, <extra_id_1>, ... (T5's span-corruption sentinels), in that order."""
        found = {}
        for piece, i in self._backend.get_vocab(with_added_tokens=True).items():
            if piece.startswith("<extra_id_") and piece.endswith(">") and piece[10:-1].isdigit():
                found[int(piece[10:-1])] = i
        return [found[n] for n in sorted(found)]

    def encode(self, text: str) -> list[int]:
        return self._backend.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self._backend.encode_batch_fast(texts, add_special_tokens=False)]

    def encode_offsets(self, texts: list[str]) -> list[tuple[list[int], list[tuple[int, int]]]]:
        """Each text's token ids and each token's (start, end) character span in that text (for aligning
        word or character labels and answer spans with tokens). A byte-level token's span may include the
        space before it; the pieces of one character split into bytes share its span."""
        # encode_batch_fast leaves the offsets out
        return [(e.ids, e.offsets) for e in self._backend.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids) -> str:
        ids = [int(i) for i in ids]
        bad = next((i for i in ids if not 0 <= i < self.vocab_size), None)
        if bad is not None:  # the backend would drop it without a word
            raise LmforgeError(f"token id {bad} is out of range: this tokenizer has ids 0..{self.vocab_size - 1}")
        ids = [i for i in ids if i != self.pad_id]
        return self._backend.decode(ids, skip_special_tokens=False)

    def id_to_piece(self, i: int) -> str:
        piece = self._backend.id_to_token(int(i))
        if piece is None:
            raise LmforgeError(f"token id {i} is out of range: this tokenizer has {self.vocab_size} ids")
        return piece

    def token_to_id(self, piece: str) -> int | None:
        return self._backend.token_to_id(piece)

    def word_starts(self, ids: list[int]) -> list[bool]:
        """True where a token begins a new word, for whole-word masking."""
        if len(ids) == 0:
            return []
        begins, ends = self._boundary_tables
        ids = np.asarray(ids, dtype=np.int64)
        out = begins[ids].copy()
        out[1:] |= ends[ids[:-1]]
        out[0] = True
        return out.tolist()

    @cached_property
    def _boundary_tables(self) -> tuple[np.ndarray, np.ndarray]:
        """Per id: does the token open a word on its own, and does the next token open one after it."""
        begins = np.zeros(self.vocab_size, dtype=bool)
        ends = np.zeros(self.vocab_size, dtype=bool)
        byte_of = _byte_decoder() if self.kind == "bpe" else None
        for i in range(self.vocab_size):
            piece = self._backend.id_to_token(i)
            if i in self.special_ids or self.kind == "word" or piece is None:
                begins[i] = ends[i] = True
            elif self.kind == "wordpiece":
                begins[i] = not piece.startswith("##")
                ends[i] = bool(piece) and _is_cjk(piece[-1])
            else:
                begins[i], ends[i] = _surface_boundaries(self._surface_bytes(piece, byte_of))
        return begins, ends

    def _surface_bytes(self, piece: str, byte_of: dict[str, int] | None) -> bytes:
        if byte_of is not None:
            return bytes(byte_of.get(c, 0x3F) for c in piece)
        if self.kind == "unigram" and len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
            return bytes([int(piece[3:5], 16)])
        return piece.replace("▁", " ").encode("utf-8")

    def save(self, directory: Path) -> None:
        """Write the tokenizer files into `directory` (atomically, file by file)."""
        from lmforge.atomic import write_json, write_text

        directory = Path(directory)
        write_text(directory / "tokenizer.json", self._backend.to_str(pretty=True))
        write_json(directory / META_FILE, {
            "format_version": 1, "kind": self.kind, "vocab_size": self.vocab_size,
            "fingerprint": self.fingerprint, "lowercase": self.lowercase,
            "special_tokens": {r: {"token": self.specials[r], "id": getattr(self, f"{r}_id")}
                               for r in ROLES}})
        hf_names = {"bos_token": "eot", "eos_token": "eot", "unk_token": "unk", "pad_token": "pad",
                    "mask_token": "mask", "cls_token": "cls", "sep_token": "sep"}
        special_map = {name: self.specials[role] for name, role in hf_names.items()}
        write_json(directory / "special_tokens_map.json", special_map)
        write_json(directory / "tokenizer_config.json", {
            "tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False,
            "add_bos_token": False, "add_eos_token": False, "model_max_length": 1_000_000_000, **special_map})

    def __repr__(self) -> str:
        return f"Tokenizer(kind={self.kind!r}, vocab_size={self.vocab_size}, fingerprint={self.fingerprint})"


def _surface_boundaries(b: bytes) -> tuple[bool, bool]:
    """(begins a word, ends a word) for the UTF-8 bytes a token stands for."""
    if not b:
        return True, True
    if 0x80 <= b[0] <= 0xBF:  # continues a character split across tokens
        begins = False
    else:
        head = b.decode("utf-8", errors="ignore")[:1]
        begins = not head or not head.isalnum() or _is_cjk(head)
        if not head:  # a lone lead byte: a CJK character starts with E3..E9 or F0
            begins = 0xE3 <= b[0] <= 0xE9 or b[0] == 0xF0
    try:
        tail = b.decode("utf-8")[-1:]
    except UnicodeDecodeError:
        tail = ""  # ends inside a character: the next token continues it
    ends = bool(tail) and (not tail.isalnum() or _is_cjk(tail))
    return begins, ends


def find_tokenizer_dir(path: Path) -> Path:
    path = Path(path)
    if path.is_file() and path.name == "tokenizer.json":
        path = path.parent
    for cand in (path, path / "tokenizer"):
        if (cand / "tokenizer.json").is_file():
            return cand
    if not path.exists():
        raise LmforgeError(f"tokenizer folder {path} not found: train one with `lmforge tokenizer train`")
    raise LmforgeError(f"{path} holds no tokenizer.json (nor tokenizer/tokenizer.json): give a tokenizer, "
                       "run or shards folder")


def load_tokenizer(path: Path) -> Tokenizer:
    """Load a tokenizer folder, or the `tokenizer/` subfolder of a run or shards folder."""
    from tokenizers import Tokenizer as Backend

    folder = find_tokenizer_dir(path)
    meta_path = folder / META_FILE
    if not meta_path.is_file():
        raise LmforgeError(f"{folder} has no {META_FILE}: it was not made by `lmforge tokenizer train`; "
                           "train one with it")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        backend = Backend.from_file(str(folder / "tokenizer.json"))
        specials = {r: meta["special_tokens"][r]["token"] for r in ROLES}
        kind = meta["kind"]
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same user problem
        raise LmforgeError(f"{folder}: unreadable tokenizer files ({e}): "
                           "retrain with `lmforge tokenizer train`") from None
    return Tokenizer(backend, kind, specials, lowercase=meta.get("lowercase", False))


"""Typed configuration: TOML files -> frozen dataclasses, with dotted overrides.

Every section is a frozen dataclass whose fields carry a docstring. A run config is read from TOML,
then `--set section.key=value` overrides are applied; unknown keys and values of the wrong type are
errors that name the key and suggest the nearest valid one. `save_config` writes the resolved config
back as TOML so every output folder records exactly what produced it.

Each pipeline step takes only the section it needs (a model gets its model config, the optimizer its
`OptimConfig`), never the whole run config.
"""

from __future__ import annotations

import dataclasses
import difflib
import sys
import types
import typing
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from lmforge.errors import LmforgeError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PRESETS_DIR = Path(__file__).parent / "configs"


# ----------------------------------------------------------------------------------------------------
# Pipeline sections: corpus, tokenizer, shards


@dataclass(frozen=True)
class CorpusConfig:
    txt_mode: Literal["file", "paragraph", "line"] = "paragraph"
    """How a .txt file is split into documents: the whole file, blank-line paragraphs, or lines."""
    text_field: str = "text"
    """JSONL/parquet/HF field that holds the text."""
    text_column: str = "text"
    """CSV/TSV column that holds the text (a name, or a 0-based index for files without a header)."""
    glob: str = "**/*"
    """Pattern of files to read inside an input folder (recursive)."""
    invalid_utf8: Literal["replace", "skip"] = "replace"
    """Bytes that are not UTF-8: replace them with U+FFFD (counted), or skip the whole document."""
    nfkc: bool = True
    """Unicode NFKC normalisation."""
    strip_control: bool = True
    """Remove control characters and U+FFFD replacement characters."""
    normalize_whitespace: bool = True
    """Collapse runs of spaces/tabs, trim lines, keep at most one blank line."""
    strip_html: bool = False
    """Remove HTML tags and unescape entities."""
    min_chars: int = 20
    """Drop documents shorter than this (after cleaning)."""
    max_chars: int = 1_000_000
    """Drop documents longer than this."""
    min_letter_ratio: float = 0.5
    """Drop documents whose share of letters (any script) among non-space characters is below this."""
    dedup_exact: bool = True
    """Drop documents whose normalised text was seen before."""
    dedup_near: bool = True
    """Drop near-duplicates (MinHash + LSH over word shingles)."""
    near_threshold: float = 0.8
    """Estimated Jaccard similarity above which a document is a near-duplicate."""
    num_perm: int = 128
    """MinHash permutations."""
    shingle_size: int = 5
    """Words (or characters, for text without spaces) per shingle."""
    scrub_pii: bool = True
    """Replace emails, phone numbers and IP addresses with placeholders."""
    val_fraction: float = 0.01
    """Share of documents held out for validation."""
    seed: int = 1234
    """Seed of the shuffle and the split."""
    shuffle_buffer: int = 100_000
    """Documents held at once for the seeded shuffle (memory stays bounded by this)."""
    docs_per_shard: int = 50_000
    """Documents per output shard file."""
    format: Literal["jsonl.zst", "jsonl.gz", "parquet"] = "jsonl.zst"
    """Output shard format."""

    def __post_init__(self) -> None:
        _check(0.0 <= self.val_fraction < 1.0, "corpus.val_fraction", "must be in [0, 1)")
        _check(0.0 < self.near_threshold <= 1.0, "corpus.near_threshold", "must be in (0, 1]")
        _check(self.min_chars >= 0 and self.max_chars > self.min_chars, "corpus.max_chars",
               "must be larger than corpus.min_chars")


@dataclass(frozen=True)
class TokenizerConfig:
    kind: Literal["bpe", "wordpiece", "unigram", "char", "word"] = "bpe"
    """Byte-level BPE (lossless on any UTF-8), WordPiece (BERT), Unigram, characters, or whitespace words."""
    vocab_size: int = 8192
    """Target vocabulary size, special tokens included (an upper bound for char and word)."""
    min_frequency: int = 2
    """Pieces seen fewer times are not merged/added."""
    lowercase: bool = False
    """Lowercase before tokenizing (WordPiece 'uncased')."""
    max_train_bytes: int = 200_000_000
    """Train on at most this many bytes of the corpus (vocabularies converge long before)."""

    def __post_init__(self) -> None:
        _check(self.vocab_size > 0, "tokenizer.vocab_size", "must be positive")


@dataclass(frozen=True)
class ShardConfig:
    shard_tokens: int = 100_000_000
    """Tokens per shard file (the last one holds the rest)."""
    num_workers: int = 0
    """Encoding processes; 0 means one per core."""
    batch_docs: int = 1024
    """Documents handed to a worker at a time."""


# ----------------------------------------------------------------------------------------------------
# Models: one config per model file; `kind` picks the class.


@dataclass(frozen=True)
class GPTConfig:
    kind: Literal["gpt"] = "gpt"
    vocab_size: int = 0
    """Vocabulary size; 0 takes it from the tokenizer."""
    context_len: int = 256
    """Longest sequence the model attends over (positions)."""
    n_layer: int = 4
    n_head: int = 4
    d_model: int = 256
    d_ff: int = 0
    """MLP hidden width; 0 means 4*d_model (GELU/ReLU^2) or 8/3*d_model rounded to 64 (SwiGLU)."""
    pos: Literal["learned", "rope"] = "learned"
    rope_theta: float = 10000.0
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    norm_eps: float = 1e-5
    mlp: Literal["gelu", "swiglu", "relu2"] = "gelu"
    bias: bool = True
    """Biases in linear layers and LayerNorm (GPT-2 has them)."""
    dropout: float = 0.0
    tie_embeddings: bool = True
    init_std: float = 0.02
    """Std of the normal init; residual projections get init_std / sqrt(2 * n_layer)."""

    def __post_init__(self) -> None:
        _check(self.d_model % self.n_head == 0, "model.d_model", f"must be divisible by model.n_head={self.n_head}")
        _check(self.pos != "rope" or (self.d_model // self.n_head) % 2 == 0, "model.pos",
               "rope needs an even head size (d_model / n_head)")

    def ff_width(self) -> int:
        if self.d_ff:
            return self.d_ff
        if self.mlp == "swiglu":
            return 64 * ((8 * self.d_model // 3 + 63) // 64)
        return 4 * self.d_model


@dataclass(frozen=True)
class BertConfig:
    kind: Literal["bert"] = "bert"
    vocab_size: int = 0
    """Vocabulary size; 0 takes it from the tokenizer."""
    context_len: int = 128
    """Number of position embeddings."""
    n_layer: int = 2
    n_head: int = 2
    d_model: int = 128
    d_ff: int = 0
    """MLP hidden width; 0 means 4*d_model."""
    type_vocab_size: int = 2
    """Segment (token type) embeddings; 0 disables them."""
    pre_norm: bool = False
    """Pre-norm blocks instead of BERT's post-norm."""
    norm_eps: float = 1e-12
    dropout: float = 0.1
    attn_dropout: float = 0.1
    tie_embeddings: bool = True
    init_std: float = 0.02

    def __post_init__(self) -> None:
        _check(self.d_model % self.n_head == 0, "model.d_model", f"must be divisible by model.n_head={self.n_head}")

    def ff_width(self) -> int:
        return self.d_ff or 4 * self.d_model


@dataclass(frozen=True)
class RNNConfig:
    kind: Literal["rnn"] = "rnn"
    vocab_size: int = 0
    """Vocabulary size; 0 takes it from the tokenizer."""
    cell: Literal["lstm", "gru", "rnn_tanh", "rnn_relu"] = "lstm"
    context_len: int = 35
    """Truncated-BPTT length: tokens per training window."""
    n_layer: int = 2
    d_embed: int = 650
    d_hidden: int = 650
    dropout: float = 0.5
    tie_embeddings: bool = True
    """Share input and output embeddings (needs d_embed == d_hidden)."""
    init_range: float = 0.1

    def __post_init__(self) -> None:
        _check(not self.tie_embeddings or self.d_embed == self.d_hidden, "model.tie_embeddings",
               "needs model.d_embed == model.d_hidden")


ModelConfig = GPTConfig | BertConfig | RNNConfig
MODEL_CONFIGS: dict[str, type] = {"gpt": GPTConfig, "bert": BertConfig, "rnn": RNNConfig}


# ----------------------------------------------------------------------------------------------------
# Training sections


@dataclass(frozen=True)
class DataConfig:
    path: str = ""
    """Shards folder (made by `lmforge shards build`)."""
    seq_len: int = 0
    """Tokens per training sequence; 0 means the model's context_len."""
    train_split: str = "train"
    val_split: str = "val"


@dataclass(frozen=True)
class MaskingConfig:
    mask_prob: float = 0.15
    """Share of (non-special) tokens selected for prediction."""
    mask_token_prob: float = 0.8
    """Of the selected: replaced by [MASK]."""
    random_token_prob: float = 0.1
    """Of the selected: replaced by a random token (the rest stay unchanged)."""
    whole_word: bool = False
    """Select whole words instead of single tokens."""
    cross_documents: bool = False
    """Let a packed sequence continue into the next document."""

    def __post_init__(self) -> None:
        _check(0.0 < self.mask_prob < 1.0, "mlm.mask_prob", "must be in (0, 1)")
        _check(self.mask_token_prob + self.random_token_prob <= 1.0, "mlm.random_token_prob",
               "mask_token_prob + random_token_prob must be <= 1")


@dataclass(frozen=True)
class OptimConfig:
    name: Literal["adamw", "adam", "sgd", "lamb", "muon", "adagrad", "rmsprop"] = "adamw"
    lr: float = 1e-3
    """Peak learning rate (after warmup)."""
    weight_decay: float = 0.1
    """Applied to matrices only; biases, norms and embeddings are in the no-decay group."""
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    momentum: float = 0.9
    """SGD/Muon/RMSprop momentum."""
    nesterov: bool = False
    fused: bool = True
    """Use fused AdamW/Adam kernels where the device supports them."""

    def __post_init__(self) -> None:
        _check(self.lr > 0, "optim.lr", "must be positive")


@dataclass(frozen=True)
class ScheduleConfig:
    name: Literal["cosine", "linear", "constant", "wsd", "plateau"] = "cosine"
    """Decay after warmup: cosine, linear, constant, warmup-stable-decay, or plateau (constant, cut by
    plateau_factor after each evaluation whose loss is no better than the best so far)."""
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    """Final learning rate as a share of the peak."""
    decay_fraction: float = 0.2
    """wsd: share of the steps spent decaying at the end."""
    plateau_factor: float = 0.25
    """plateau: the learning rate is multiplied by this when validation stops improving (the classic
    word-level LSTM recipe divides it by 4)."""

    def __post_init__(self) -> None:
        _check(0.0 < self.plateau_factor <= 1.0, "schedule.plateau_factor", "must be in (0, 1]")


@dataclass(frozen=True)
class TrainConfig:
    max_steps: int = 1000
    """Optimizer updates."""
    max_minutes: float = 0.0
    """Wall-clock budget of one `pretrain`/`finetune` invocation in minutes (0 = off). The run stops after
    the first step past it, saves a checkpoint and evaluates as at the end. The lr schedule still follows
    max_steps, so set max_steps to about the steps that fit."""
    batch_size: int = 32
    """Sequences per optimizer step, summed over micro-batches and processes."""
    micro_batch_size: int = 0
    """Sequences per forward/backward on one process; 0 means batch_size / processes."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this; 0 disables clipping."""
    seed: int = 1337
    log_every: int = 10
    eval_every: int = 250
    """Evaluate every N steps (and at the end); 0 evaluates only at the end."""
    eval_batches: int = 20
    """Validation batches per evaluation; 0 means the whole validation split."""
    save_every: int = 500
    """Checkpoint every N steps (and at the end, and on Ctrl-C)."""
    keep_last: int = 2
    """Checkpoints kept besides the best one."""
    on_nan: Literal["stop", "skip"] = "stop"
    """A NaN/inf loss stops the run (keeping the last good checkpoint) or skips that step."""
    progress: bool = True
    """Show a progress bar."""

    def __post_init__(self) -> None:
        _check(self.max_steps > 0, "train.max_steps", "must be positive")
        _check(self.max_minutes >= 0, "train.max_minutes", "must be >= 0 (0 turns the budget off)")
        _check(self.batch_size > 0, "train.batch_size", "must be positive")

    def grad_accum_steps(self, world_size: int = 1) -> int:
        """Micro-steps per optimizer step on each process."""
        micro = self.micro_batch_size or self.batch_size // world_size
        if micro <= 0 or self.batch_size % (micro * world_size):
            raise LmforgeError(
                f"train.batch_size={self.batch_size} is not a multiple of train.micro_batch_size={micro} "
                f"x {world_size} processes: change one of them")
        return self.batch_size // (micro * world_size)

    def micro_batch(self, world_size: int = 1) -> int:
        return self.micro_batch_size or self.batch_size // world_size


@dataclass(frozen=True)
class RuntimeConfig:
    device: str = "auto"
    """auto (cuda, then mps, then cpu), or a torch device string."""
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    """bf16/fp16 autocast; fp16 uses a gradient scaler."""
    compile: bool = False
    """torch.compile the model."""
    tf32: bool = True
    """Allow TF32 matmuls on CUDA."""
    parallel: Literal["none", "ddp", "fsdp"] = "none"
    """Data parallelism across torchrun processes."""
    num_threads: int = 0
    """CPU threads for torch; 0 leaves torch's default."""
    timeout_s: int = 600
    """Seconds a process waits in a collective (all-reduce, barrier) before the job fails instead of hanging."""

    def __post_init__(self):
        if self.timeout_s <= 0:
            raise LmforgeError(f"config key 'runtime.timeout_s' = {self.timeout_s} must be > 0 (seconds)")


@dataclass(frozen=True)
class RunConfig:
    """Everything `lmforge pretrain` needs; saved as config.toml in every run folder."""

    model: ModelConfig = field(default_factory=GPTConfig)
    data: DataConfig = field(default_factory=DataConfig)
    mlm: MaskingConfig = field(default_factory=MaskingConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    def seq_len(self) -> int:
        return self.data.seq_len or self.model.context_len


# ----------------------------------------------------------------------------------------------------
# Fine-tuning (names follow `transformers.TrainingArguments` where one exists)


@dataclass(frozen=True)
class FinetuneConfig:
    from_run: str = ""
    """Pretrained run folder whose model and tokenizer are fine-tuned."""
    from_checkpoint: str = "best"
    """Checkpoint of `from_run`: best, latest, step-N or a path."""
    train_file: str = ""
    """Labeled training data: .tsv, .csv or .jsonl."""
    dev_file: str = ""
    """Labeled data evaluated every `eval_steps` and at the end; picks the best checkpoint."""
    test_file: str = ""
    """Labeled data evaluated once at the end (optional)."""
    text_column: str = ""
    """Column (or JSON key) of the text; empty guesses sentence, text, text_a, ... (a 0-based index without
    a header)."""
    text_pair_column: str = ""
    """Column of the second text of a pair (NLI); empty guesses text_b, sentence2, hypothesis if present."""
    label_column: str = ""
    """Column of the label; empty guesses label, labels, class, ... (strings or integers)."""
    header: Literal["auto", "yes", "no"] = "auto"
    """Whether TSV/CSV files start with a header line; auto looks for known column names."""
    max_length: int = 0
    """Tokens per example (longer ones are truncated and counted); 0 means the model's context_len."""
    pooling: Literal["auto", "last", "mean", "cls"] = "auto"
    """auto: [CLS] pooler for BERT, last real token for GPT and RNN."""
    classifier_dropout: float = 0.1
    """Dropout before the head (BERT and RNN; GPT-2's head has none)."""
    output_dir: str = ""
    """Run folder to create (the --out of the CLI)."""
    logging_dir: str = ""
    """TensorBoard folder; empty means output_dir/tensorboard."""
    num_train_epochs: float = 3.0
    """Passes over the training data (used when max_steps is 0)."""
    max_steps: int = 0
    """Optimizer steps; 0 derives them from num_train_epochs and the training set size."""
    per_device_train_batch_size: int = 32
    """Examples per optimizer step, split over the processes: the same steps on any number of processes."""
    per_device_eval_batch_size: int = 64
    gradient_accumulation_steps: int = 1
    """Micro-batches per optimizer step (per_device_train_batch_size is split into this many)."""
    learning_rate: float = 5e-5
    """Peak learning rate (AdamW)."""
    warmup_steps: int = 0
    lr_scheduler_type: Literal["linear", "cosine", "constant"] = "linear"
    """Decay to zero after warmup."""
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 42
    """Seeds the head's initialisation and the per-epoch shuffles."""
    logging_steps: int = 10
    eval_steps: int = 0
    """Evaluate on dev (and checkpoint) every N steps; 0 means once per epoch."""
    save_total_limit: int = 2
    """Checkpoints kept besides the best one."""
    metric_for_best_model: Literal["accuracy", "macro_f1", "loss"] = "accuracy"
    """Dev metric that picks the best checkpoint and drives early stopping."""
    early_stopping_patience: int = 0
    """Stop after this many evaluations without improvement of metric_for_best_model; 0 never stops."""
    class_weights: Literal["none", "balanced"] = "none"
    """balanced weighs each class's loss by n_examples / (n_classes * n_in_class) (imbalanced data)."""
    freeze_encoder: bool = False
    """Train the head only (BERT's pooler too)."""
    layerwise_lr_decay: float = 1.0
    """Learning rate of layer l is lr * decay ** (depth of the head - l); 1.0 disables it."""

    def __post_init__(self) -> None:
        _check(self.num_train_epochs > 0, "finetune.num_train_epochs", "must be positive")
        _check(self.max_steps >= 0, "finetune.max_steps", "must be >= 0 (0: from num_train_epochs)")
        _check(self.per_device_train_batch_size > 0, "finetune.per_device_train_batch_size",
               "must be positive")
        _check(self.per_device_eval_batch_size > 0, "finetune.per_device_eval_batch_size", "must be positive")
        _check(self.gradient_accumulation_steps > 0
               and self.per_device_train_batch_size % self.gradient_accumulation_steps == 0,
               "finetune.gradient_accumulation_steps", "must divide finetune.per_device_train_batch_size")
        _check(self.learning_rate > 0, "finetune.learning_rate", "must be positive")
        _check(self.warmup_steps >= 0, "finetune.warmup_steps", "must be >= 0")
        _check(self.max_length >= 0, "finetune.max_length", "must be >= 0 (0: the model's context_len)")
        _check(0.0 <= self.classifier_dropout < 1.0, "finetune.classifier_dropout", "must be in [0, 1)")
        _check(self.eval_steps >= 0, "finetune.eval_steps", "must be >= 0 (0: once per epoch)")
        _check(self.early_stopping_patience >= 0, "finetune.early_stopping_patience", "must be >= 0")
        _check(0.0 < self.layerwise_lr_decay <= 1.0, "finetune.layerwise_lr_decay", "must be in (0, 1]")


@dataclass(frozen=True)
class FinetuneRunConfig(RunConfig):
    """A fine-tuned run's config.toml: the pretrained run's sections plus [finetune]."""

    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)


# ----------------------------------------------------------------------------------------------------
# Loading, overriding, saving


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise LmforgeError(f"config key '{key}' {message}")


def resolve_preset(name_or_path: str) -> Path:
    """A config path, or the name of a shipped preset (`gpt-tiny`, `bert-tiny`, ...)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    preset = PRESETS_DIR / f"{path.stem}.toml"
    if preset.is_file() and (path.suffix in ("", ".toml")):
        return preset
    names = sorted(p.stem for p in PRESETS_DIR.glob("*.toml"))
    hint = difflib.get_close_matches(path.stem, names, n=1)
    raise LmforgeError(
        f"config {name_or_path} not found: give a TOML path or a preset name"
        + (f" (did you mean '{hint[0]}'?)" if hint else f" ({', '.join(names)})"))


def read_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise LmforgeError(f"config file {path} not found") from None
    except tomllib.TOMLDecodeError as e:
        raise LmforgeError(f"{path}: invalid TOML: {e}") from None


def apply_overrides(raw: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Apply `section.key=value` strings to a raw dict; values are parsed as TOML, else taken as text."""
    raw = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise LmforgeError(f"--set {item!r}: expected section.key=value, e.g. --set train.max_steps=100")
        *sections, leaf = key.strip().split(".")
        try:
            value = tomllib.loads(f"v = {text.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            value = text.strip()
        node = raw
        for s in sections:
            node = node.setdefault(s, {})
            if not isinstance(node, dict):
                raise LmforgeError(f"--set {item!r}: '{s}' is not a section")
        node[leaf] = value
    return raw


def from_dict(cls: type, raw: dict[str, Any], where: str = "", source: str = "config") -> Any:
    """Build dataclass `cls` from a raw dict, checking every key and type."""
    if not isinstance(raw, dict):
        raise LmforgeError(f"{source}: '{where or cls.__name__}' must be a table of keys, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in fields(cls) if f.init]
    for key in raw:
        if key not in names:
            full = f"{where}.{key}" if where else key
            hint = difflib.get_close_matches(key, names, n=1)
            prefix = f"{where}." if where else ""
            valid = f"did you mean '{prefix}{hint[0]}'?" if hint else f"valid keys: {', '.join(names)}"
            raise LmforgeError(f"{source}: unknown key '{full}'; {valid}")
    kwargs = {}
    for name in names:
        if name in raw:
            full = f"{where}.{name}" if where else name
            kwargs[name] = _coerce(hints[name], raw[name], full, source)
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, key: str, source: str) -> Any:
    origin, args = get_origin(tp), get_args(tp)
    if origin in (Union, types.UnionType):
        if all(is_dataclass(a) for a in args if a is not type(None)):
            return _model_section(value, key, source)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, key, source)
            except LmforgeError:
                pass
        raise LmforgeError(f"{source}: '{key}' = {value!r} does not fit type {tp}")
    if is_dataclass(tp):
        return from_dict(tp, value, key, source)
    if origin is Literal:
        if value not in args:
            hint = difflib.get_close_matches(str(value), [str(a) for a in args], n=1)
            extra = f"; did you mean '{hint[0]}'?" if hint else ""
            raise LmforgeError(f"{source}: '{key}' = {value!r} is not one of {', '.join(map(repr, args))}{extra}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or (args[-1] is not Ellipsis and len(value) != len(args)):
            raise LmforgeError(f"{source}: '{key}' must be a list of {len(args)} values, got {value!r}")
        inner = [args[0]] * len(value) if args[-1] is Ellipsis else list(args)
        return tuple(_coerce(t, v, key, source) for t, v in zip(inner, value))
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise LmforgeError(f"{source}: '{key}' must be a list, got {value!r}")
        return [_coerce(args[0], v, key, source) for v in value]
    if tp is bool:
        if not isinstance(value, bool):
            raise LmforgeError(f"{source}: '{key}' must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise LmforgeError(f"{source}: '{key}' must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise LmforgeError(f"{source}: '{key}' must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise LmforgeError(f"{source}: '{key}' must be a string, got {value!r}")
        return str(value)
    return value


def _model_section(value: Any, key: str, source: str) -> ModelConfig:
    if not isinstance(value, dict):
        raise LmforgeError(f"{source}: '{key}' must be a table with a 'kind' key")
    kind = value.get("kind", "gpt")
    if kind not in MODEL_CONFIGS:
        hint = difflib.get_close_matches(str(kind), list(MODEL_CONFIGS), n=1)
        raise LmforgeError(f"{source}: '{key}.kind' = {kind!r} is not one of {', '.join(MODEL_CONFIGS)}"
                           + (f"; did you mean '{hint[0]}'?" if hint else ""))
    return from_dict(MODEL_CONFIGS[kind], value, key, source)


def load_config(cls: type, path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (),
                base: dict[str, Any] | None = None) -> Any:
    """Read `path` (a TOML file or preset name) into `cls`, applying `--set` overrides on top."""
    raw: dict[str, Any] = dict(base or {})
    source = "config"
    if path is not None:
        resolved = resolve_preset(str(path))
        raw = _merge(raw, read_toml(resolved))
        source = str(path)
    raw = apply_overrides(raw, overrides)
    return from_dict(cls, raw, source=source if not overrides else f"{source} (with --set)")


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def to_dict(cfg: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        out[f.name] = to_dict(value) if is_dataclass(value) else (list(value) if isinstance(value, tuple) else value)
    return out


def replace(cfg: Any, **changes: Any) -> Any:
    return dataclasses.replace(cfg, **changes)


def dumps_toml(data: dict[str, Any]) -> str:
    """TOML text for a dict of scalars, lists and (nested) tables."""
    lines: list[str] = []

    def emit(table: dict[str, Any], prefix: str) -> None:
        scalars = {k: v for k, v in table.items() if not isinstance(v, dict)}
        subtables = {k: v for k, v in table.items() if isinstance(v, dict)}
        if prefix and scalars:
            lines.append(f"[{prefix}]")
        for k, v in scalars.items():
            lines.append(f"{k} = {_toml_value(v)}")
        if prefix and scalars:
            lines.append("")
        for k, v in subtables.items():
            emit(v, f"{prefix}.{k}" if prefix else k)

    emit(data, "")
    return "\n".join(lines).rstrip() + "\n"


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if v is None:
        return '""'
    raise TypeError(f"cannot write {v!r} as TOML")


def save_config(cfg: Any, path: str | Path) -> None:
    from lmforge.atomic import write_text

    write_text(path, dumps_toml(to_dict(cfg)))

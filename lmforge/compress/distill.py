"""Knowledge distillation: a smaller student trained through the one loop to match a teacher run.

The recipe (Hinton et al., 2015; DistilBERT, Sanh et al., 2019):
1. The student is the teacher's config with half its layers (rounded up), a config's [model] (`--student
   TOML|PRESET`) or a run (`--student RUN`: its model and weights). Its vocabulary is the teacher's:
   a student run must have the teacher's tokenizer, and a classifier keeps the teacher's labels.
2. It starts from every other teacher layer (0, 2, 4, ...) plus the teacher's embeddings, final norm
   and heads (`init="alternate"`, when the shapes other than the depth match), else from a fresh init.
3. Every micro-batch runs the teacher once (eval mode, no gradients) and the student, and sums per target
   (a token, a masked position, an example): `alpha_kl * T^2 * KL(teacher/T || student/T) + alpha_task *
   CE + alpha_cos * (1 - cos(h_s, h_t))` (objectives.distillation_loss), where h are the final hidden states
   the heads read at that target. The loop divides by the step's targets as for any objective.
4. Everything else is the task's own: data, evaluation (of the student's task loss and metrics), the best
   checkpoint, eval_results.json. The run folder also holds compression.json (what it was made from, how).

Tasks: causal_lm, masked_lm, classify and ner (a per-token classifier: the same loss over its tokens).
Dimensions: B batch, T sequence length, P masked positions, C hidden width, V vocabulary or labels.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from lmforge import runs
from lmforge.errors import LmforgeError
from lmforge.objectives import distillation_loss
from lmforge.tasks import LoadedRun, Source, TaskData, config_from, get_task, load_run, read_config

Outputs = Callable[[nn.Module, dict], tuple[torch.Tensor, torch.Tensor]]
"""`(model, batch) -> (logits, labels)` at the task's targets: how its objective calls the model."""


def _next_token(model: nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    return model(batch["input_ids"]), batch["labels"]  # (B, T, V), (B, T)


def _masked(model: nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    # the head runs at the masked positions only, as in masked_lm_loss: the same ones for both models
    positions = batch.get("mlm_positions")
    extra = {} if positions is None else {"positions": positions}
    logits = model(batch["input_ids"], attention_mask=batch.get("attention_mask"), **extra)  # (B, T|P, V)
    return logits, batch["labels"] if positions is None else batch["labels"].gather(1, positions)


def _labeled(model: nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    logits = model(batch["input_ids"], attention_mask=batch.get("attention_mask"),
                   token_type_ids=batch.get("token_type_ids"))  # (B, L) per example, (B, T, L) per token
    return logits, batch["labels"]


OUTPUTS: dict[str, Outputs] = {"causal_lm": _next_token, "masked_lm": _masked, "classify": _labeled,
                               "ner": _labeled}
"""The tasks distillation trains, and how each calls its model."""


def hidden_module(model: nn.Module, head: bool) -> nn.Module:
    """The module whose input is the final hidden state at each target: a task head's dropout (it reads
    the pooled (B, C) or per-token (B, T, C) states), else the LM head's first layer (the contract's first
    `lm_head_prefixes` entry; BERT's reads the (B, P, C) states at the masked positions only)."""
    return model.drop if head else model.get_submodule(model.lm_head_prefixes[0].rstrip("."))


class DistillObjective:
    """`objective(model, batch)`: the student's distillation loss against the teacher on the same batch.

    The teacher runs once per call, i.e. once per micro-batch, in eval mode without gradients; its logits
    serve the KL term. With `alpha_cos`, forward pre-hooks on both models' `hidden_module` keep the hidden
    states of that forward (no second pass). Not an `nn.Module`: the teacher stays out of the student's
    parameters, optimizer and checkpoints (and the loop saves no state for it).
    """

    def __init__(self, teacher: nn.Module, outputs: Outputs, temperature: float, alpha_kl: float,
                 alpha_task: float, alpha_cos: float = 0.0, student: nn.Module | None = None,
                 head: bool = False) -> None:
        self.teacher = teacher.eval().requires_grad_(False)
        self.outputs, self.temperature = outputs, temperature
        self.alpha_kl, self.alpha_task, self.alpha_cos = alpha_kl, alpha_task, alpha_cos
        self.hidden: dict[str, torch.Tensor] = {}
        if alpha_cos:
            for role, model in (("teacher", teacher), ("student", student)):
                hidden_module(model, head).register_forward_pre_hook(self._keeper(role))

    def _keeper(self, role: str):
        def keep(module: nn.Module, args: tuple) -> None:
            self.hidden[role] = args[0]

        return keep

    def __call__(self, model: nn.Module, batch: dict[str, torch.Tensor]):
        device = batch["input_ids"].device
        if next(self.teacher.parameters()).device != device:  # the loop moves the student only
            self.teacher.to(device)
        uses_teacher = bool(self.alpha_kl or self.alpha_cos)  # else labels only: the baseline of a comparison
        if uses_teacher:
            with torch.no_grad():
                teacher_logits, _ = self.outputs(self.teacher, batch)
        logits, labels = self.outputs(model, batch)
        if not uses_teacher:
            teacher_logits = logits  # the KL term is weighted 0; the teacher is not run
        return distillation_loss(logits, teacher_logits, labels, self.temperature, self.alpha_kl, self.alpha_task,
                                 self.alpha_cos, self.hidden.get("student"), self.hidden.get("teacher"))


# ----------------------------------------------------------------------------------------------------
# The student's config and starting weights


def check_options(temperature: float, alpha_kl: float, alpha_task: float, alpha_cos: float, init: str) -> None:
    if not (temperature > 0 and math.isfinite(temperature)):
        raise LmforgeError(f"--temperature {temperature} must be a positive number (1: the plain softmax; 2 to 4 "
                           "are usual)")
    for flag, value in (("--alpha-kl", alpha_kl), ("--alpha-task", alpha_task), ("--alpha-cos", alpha_cos)):
        if not (value >= 0 and math.isfinite(value)):
            raise LmforgeError(f"{flag} {value} must be >= 0")
    if alpha_kl + alpha_task + alpha_cos == 0:
        raise LmforgeError("--alpha-kl, --alpha-task and --alpha-cos are all 0: the student would learn nothing; "
                           "give at least one a positive weight")
    if init not in ("alternate", "random"):
        raise LmforgeError(f"--init {init!r} is not one of alternate, random")


def student_config(teacher: LoadedRun, student: str | Path | None, overrides: Sequence[str] = ()):
    """(config, description, start) of the student run: the teacher's config with the student's model and
    `--set` overrides on top; `start` is the Source of a student run (its weights), else None."""
    from lmforge.config import apply_overrides, read_toml, resolve_preset, to_dict
    from lmforge.pipeline import MUTABLE_MODEL_KEYS
    from lmforge.tasks.finetuning import refuse_covered

    t_cfg, task = teacher.config, teacher.task
    kept = {"task": task.name, "model.kind": t_cfg.model.kind}
    for item in overrides:  # before the sections merge: another kind would read as unknown keys
        key, _, value = (part.strip() for part in item.partition("="))
        if key in kept and value.strip("\"'") != kept[key]:
            raise LmforgeError(f"--set {item}: distillation keeps the teacher's {key} ({kept[key]!r})")
    raw, start = to_dict(t_cfg), None
    if student is None:
        raw["model"]["n_layer"] = -(-t_cfg.model.n_layer // 2)
        what = "the teacher's model"
    elif Path(student).is_dir():
        start = _student_run(teacher, Path(student))
        raw["model"] = to_dict(read_config(student).model)
        what = f"run {student}"
    else:
        model = read_toml(resolve_preset(str(student))).get("model")
        if not isinstance(model, dict):
            raise LmforgeError(f"--student {student} has no [model] section: give a TOML with one (only [model] is "
                               "read; the loop settings are the teacher's, changed with --set)")
        if model.get("vocab_size", 0) not in (0, t_cfg.model.vocab_size):
            raise LmforgeError(f"--student {student}: model.vocab_size = {model['vocab_size']}, the teacher's is "
                               f"{t_cfg.model.vocab_size}: drop it (the student takes the teacher's)")
        raw["model"] = dict(model)
        what = f"config {student}"
    raw["model"]["vocab_size"] = t_cfg.model.vocab_size  # the KL compares logits over the same vocabulary
    if task.finetunes:
        refuse_covered(apply_overrides({}, overrides), "--set")  # with_loop would overwrite them
        raw["finetune"].update(from_run=str(teacher.run_dir.resolve()), from_checkpoint=str(teacher.checkpoint))
    cfg = config_from(apply_overrides(raw, overrides), f"distill student ({what}{', --set' if overrides else ''})")
    if student is None:
        what = f"the teacher's model with model.n_layer {t_cfg.model.n_layer} -> {cfg.model.n_layer}"
    for key, mine, theirs in (("task", cfg.task, task.name), ("model.kind", cfg.model.kind, t_cfg.model.kind),
                              ("model.vocab_size", cfg.model.vocab_size, t_cfg.model.vocab_size)):
        if mine != theirs:
            raise LmforgeError(f"student {key} = {mine!r}, the teacher {teacher.run_dir} has {theirs!r}: distillation "
                               "keeps the teacher's task, model kind and vocabulary")
    if start is not None:
        theirs = read_config(start.run).model
        for f in dataclasses.fields(theirs):
            if f.name not in MUTABLE_MODEL_KEYS and getattr(cfg.model, f.name) != getattr(theirs, f.name):
                raise LmforgeError(f"--set model.{f.name} conflicts with --student {start.run}, whose weights "
                                   f"need {getattr(theirs, f.name)!r}: drop it")
    return cfg, what, start


def _student_run(teacher: LoadedRun, run: Path) -> Source:
    """A student run's Source, once it fits the teacher: same tokenizer, kind and vocabulary; the same task
    (and labels), or a pretrained run under a head task."""
    from lmforge.pipeline import source_of

    cfg, ckpt = read_config(run), source_of(run).checkpoint  # a quantized run is refused there
    mine, theirs = runs.checkpoint_tokenizer(run, ckpt).fingerprint, teacher.tokenizer.fingerprint
    if mine != theirs:
        raise LmforgeError(f"--student {run} has tokenizer {mine}, the teacher {teacher.run_dir} has {theirs}: a "
                           "student must share its teacher's tokenizer (or pass a student config instead of a run)")
    kind, vocab = teacher.config.model.kind, teacher.config.model.vocab_size
    if (cfg.model.kind, cfg.model.vocab_size) != (kind, vocab):
        raise LmforgeError(f"--student {run} is a {cfg.model.kind} model of vocab_size {cfg.model.vocab_size}, the "
                           f"teacher {teacher.run_dir} a {kind} of {vocab}: give a student of the teacher's kind and "
                           "vocabulary")
    task = teacher.task
    if cfg.task != task.name and (not task.head or get_task(cfg.task).finetunes):
        raise LmforgeError(f"--student {run} is a {cfg.task} run: give a {task.name} run"
                           + (f" or a pretrained {kind} run" if task.head else ""))
    for name in task.files if cfg.task == task.name else ():
        if runs.read_json(run, name)["labels"] != teacher.files[name]["labels"]:
            raise LmforgeError(f"--student {run} has other labels ({name}) than the teacher {teacher.run_dir}: a "
                               "student must predict the teacher's labels")
    return Source(run, ckpt)


def _depths(model: nn.Module, head: bool) -> dict[str, list[str]]:
    """State-dict names by depth (the backbone's `layer_of`: 0 embeddings, 1..n_layer, n_layer + 1 the top;
    a task head is on top), each list in the module's order."""
    backbone = model.backbone if head else model
    top, names = backbone.config.n_layer + 1, defaultdict(list)
    for name in model.state_dict():
        if head and not name.startswith("backbone."):
            names[top].append(name)
        else:
            names[backbone.layer_of(name.removeprefix("backbone.") if head else name)].append(name)
    return names


def alternate_state(student: nn.Module, teacher: nn.Module, head: bool = False) -> tuple[dict | None, str]:
    """(state, "") for `student` from every other teacher layer (student layer i <- teacher layer 2i) and
    the teacher's embeddings and top (final norm, LM head, task head), or (None, why) when they do not fit."""
    s_layers = (student.backbone if head else student).config.n_layer
    t_layers = (teacher.backbone if head else teacher).config.n_layer
    if 2 * (s_layers - 1) >= t_layers:
        return None, (f"a student of {s_layers} layers takes every other teacher layer up to layer "
                      f"{2 * (s_layers - 1)}, the teacher has layers 0-{t_layers - 1}")
    s_names, t_names, t_state = _depths(student, head), _depths(teacher, head), teacher.state_dict()
    s_state, state = student.state_dict(), {}
    for depth, names in s_names.items():
        source = t_names[0 if depth == 0 else 2 * depth - 1 if depth <= s_layers else t_layers + 1]
        if len(source) != len(names):
            return None, f"layer {depth - 1} holds other tensors than the teacher's"
        for mine, theirs in zip(names, source):  # the same module order: only the layer numbers differ
            if re.split(r"\d+", mine) != re.split(r"\d+", theirs) or s_state[mine].shape != t_state[theirs].shape:
                return None, (f"{mine} {tuple(s_state[mine].shape)} does not match the teacher's {theirs} "
                              f"{tuple(t_state[theirs].shape)}")
            state[mine] = t_state[theirs]
    return state, ""


def _start(model: nn.Module, teacher: LoadedRun, start: Source | None, init: str, say) -> str:
    """Set the student's starting weights; returns the init used (run, alternate or random)."""
    from lmforge.checkpoint import load_weights

    if start is not None:  # a pretrained run under a head task fills the backbone; the head starts fresh
        load_weights(start.checkpoint, model if read_config(start.run).task == teacher.task.name else model.backbone)
        return "run"
    if init == "random":
        return "random"
    state, why = alternate_state(model, teacher.model, teacher.task.head)
    if state is None:
        say(f"distill: --init alternate does not fit ({why}): the student starts from a random init")
        return "random"
    model.load_state_dict(state)
    return "alternate"


# ----------------------------------------------------------------------------------------------------
# The command


def distill(teacher: str | Path, out: str | Path, *, student: str | Path | None = None, temperature: float = 2.0,
            alpha_kl: float = 0.5, alpha_task: float = 0.5, alpha_cos: float = 0.0, init: str = "alternate",
            overrides: Sequence[str] = (), overwrite: bool = False, checkpoint: str = "best", say=print) -> dict:
    """Distill run `teacher` (its `checkpoint`) into a new run folder `out`, trained by the task's loop.

    `student`: None (the teacher's config, half the layers), a TOML file or preset name (its [model]) or a
    run folder (its model and weights; `init` is then ignored). `init`: alternate or random. `overrides`:
    `--set` strings on the student's config (model.n_layer=2, train.max_steps=200, finetune.max_steps=...).
    Returns {"out": str(out), **final metrics} (the metrics of a fine-tuning task; none for an LM).
    """
    import os

    from lmforge.pipeline import train_run

    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, rank 0 speaks for every process (as pipeline)
        say = lambda message: None  # noqa: E731
    check_options(temperature, alpha_kl, alpha_task, alpha_cos, init)
    teacher, out = Path(teacher), Path(out)
    if out.resolve() == teacher.resolve():
        raise LmforgeError(f"--out {out} is the teacher's folder: give a new one")
    task = read_config(teacher).task
    if task not in OUTPUTS:
        raise LmforgeError(f"{teacher} is a {task} run: distill supports {', '.join(OUTPUTS)}")
    t = load_run(teacher, checkpoint)
    if t.quantization:  # its int8 weights can neither start a student nor give exact soft targets
        raise LmforgeError(f"--teacher {teacher} is quantized ({t.quantization['scheme']}): distill from the run it "
                           f"was made from ({t.quantization.get('from', '?')})")
    cfg, what, start = student_config(t, student, overrides)
    if alpha_cos and cfg.model.hidden_size != t.config.model.hidden_size:
        raise LmforgeError(f"--alpha-cos compares hidden states, but the student is {cfg.model.hidden_size} wide and "
                           f"the teacher {t.config.model.hidden_size}: set --alpha-cos 0 or match the widths")
    weights = cfg.finetune.class_weights if t.task.name == "classify" else "none"
    if alpha_task and weights != "none":
        raise LmforgeError(f"finetune.class_weights = {cfg.finetune.class_weights!r} is not applied to distillation's "
                           "task loss: --set finetune.class_weights=none (or --alpha-task 0)")
    n_teacher = sum(p.numel() for p in t.model.parameters())  # a tied tensor counts once

    def adapt(model: nn.Module, data: TaskData) -> TaskData:
        for name in t.task.files:  # the labels read from the training file must be the teacher's, in order
            if data.files[name]["labels"] != t.files[name]["labels"]:
                raise LmforgeError(f"the training data's labels {data.files[name]['labels']} differ from the teacher's "
                                   f"{t.files[name]['labels']} ({teacher / name}): distill on the teacher's label set")
        used = _start(model, t, start, init, say)
        objective = DistillObjective(t.model, OUTPUTS[t.task.name], temperature, alpha_kl, alpha_task, alpha_cos,
                                     student=model, head=t.task.head)
        info = {"method": "distill", "from": str(teacher), "teacher_checkpoint": t.checkpoint.name, "student": what,
                "init": used, "temperature": temperature, "alpha_kl": alpha_kl, "alpha_task": alpha_task,
                "alpha_cos": alpha_cos, "params_teacher": n_teacher,
                "params_student": sum(p.numel() for p in model.parameters())}
        say(f"distill: {teacher} ({n_teacher / 1e6:.2f}M parameters) -> {what} ({info['params_student'] / 1e6:.2f}M), "
            f"init {used}; temperature {temperature}, alpha kl/task/cos {alpha_kl}/{alpha_task}/{alpha_cos}")
        # compression.json says where the weights came from; init_from.json would name the teacher as their source
        files = {k: v for k, v in data.files.items() if k != runs.INIT_FROM}
        return dataclasses.replace(data, objective=objective, files={**files, runs.COMPRESSION: info})

    # The teacher is the source: the task's prepare reads its tokenizer (and checks the shards against it).
    # Its weights are not loaded nor its model imposed, since an adapt hook is given: adapt sets the student's.
    metrics = train_run(cfg, out, overwrite=overwrite, source=Source(t.run_dir, t.checkpoint), adapt=adapt)
    return {"out": str(out), **metrics}

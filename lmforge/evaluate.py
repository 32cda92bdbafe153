"""Metric primitives: loss, perplexity and bits per byte of a language model; classification metrics.

Bits per byte = total nats over the windows / ln 2 / the UTF-8 bytes of text they cover, where the
bytes are estimated as targets x (text bytes / tokens of the split), from the shard manifest. Unlike
perplexity it compares models with different tokenizers.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from lmforge.errors import LmforgeError
from lmforge.objectives import IGNORE
from lmforge.runtime import Runtime


@torch.no_grad()
def evaluate_lm(model: nn.Module, objective, batches: Iterable[dict[str, torch.Tensor]], runtime: Runtime,
                bytes_per_token: float | None = None) -> dict[str, float]:
    """Mean loss per target over `batches`, its perplexity and (given bytes per token) bits per byte.

    An objective whose extras count `correct` predictions also gets `accuracy` (per target).
    """
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=runtime.device)
    count = torch.zeros((), dtype=torch.int64, device=runtime.device)
    correct = None
    for batch in batches:
        with runtime.autocast():
            loss_sum, n_targets, extras = objective(model, runtime.to_device(batch))
        total += loss_sum.double()
        count += n_targets
        if "correct" in extras:
            correct = extras["correct"].long() + (0 if correct is None else correct)
    model.train(was_training)
    nats, targets = runtime.all_reduce_sum(total).item(), int(runtime.all_reduce_sum(count).item())
    if targets == 0:
        raise ValueError("evaluation saw no targets")
    loss = nats / targets
    out = {"loss": loss, "perplexity": math.exp(min(loss, 700.0)), "tokens": targets}
    if bytes_per_token:
        out["bits_per_byte"] = nats / math.log(2) / (targets * bytes_per_token)
    if correct is not None:
        out["accuracy"] = runtime.all_reduce_sum(correct).item() / targets
    return out


# ----------------------------------------------------------------------------------------------------
# Classification


def classification_metrics(predicted: list[int] | torch.Tensor, gold: list[int] | torch.Tensor,
                           labels: list[str]) -> dict:
    """Accuracy, macro-F1, per-class precision/recall/F1/support and the confusion matrix.

    confusion[i][j] counts examples of true class i predicted as j. A class never predicted has
    precision 0 (and never present: recall 0), as scikit-learn's zero_division=0.
    """
    return metrics_from_confusion(confusion_matrix(predicted, gold, len(labels)), labels)


def confusion_matrix(predicted: list[int] | torch.Tensor, gold: list[int] | torch.Tensor, k: int) -> torch.Tensor:
    """(L, L) counts of true class i predicted as j; gold labels of IGNORE (-100) are left out."""
    p, g = torch.as_tensor(predicted, dtype=torch.long), torch.as_tensor(gold, dtype=torch.long)
    keep = g != IGNORE
    return torch.bincount(g[keep] * k + p[keep], minlength=k * k).view(k, k)  # (L, L)


def metrics_from_confusion(confusion: torch.Tensor, labels: list[str]) -> dict:
    """`classification_metrics` from a confusion matrix: counts add up across processes, metrics do not."""
    confusion = confusion.long().cpu()
    tp = confusion.diag().double()
    precision = tp / confusion.sum(0).clamp(min=1)
    recall = tp / confusion.sum(1).clamp(min=1)
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall).clamp(min=1e-12),
                     torch.zeros_like(tp))
    n = int(confusion.sum())
    return {"accuracy": float(tp.sum() / max(n, 1)), "macro_f1": float(f1.mean()), "examples": n,
            "per_class": {lab: {"precision": float(precision[i]), "recall": float(recall[i]),
                                "f1": float(f1[i]), "support": int(confusion[i].sum())}
                          for i, lab in enumerate(labels)},
            "confusion": confusion.tolist(), "labels": list(labels)}


@torch.no_grad()
def evaluate_classifier(model: nn.Module, objective, batches: Iterable[dict[str, torch.Tensor]],
                        runtime: Runtime, labels: list[str]) -> dict:
    """Mean loss per example and `classification_metrics` over labeled `batches`.

    Under several processes each one passes its own disjoint part of the data; the loss sum and the
    confusion counts are summed over processes, so every process returns the metrics of the whole data
    (the same as one process, and the same on every process: early stopping agrees everywhere).
    Examples labelled IGNORE (the padding batches of `runtime.even_batches`) count for nothing.
    """
    was_training = model.training
    model.eval()
    k = len(labels)
    # one float64 buffer, one all-reduce: [loss sum, confusion counts (exact below 2**53)]
    totals = torch.zeros(1 + k * k, dtype=torch.float64, device=runtime.device)
    for batch in batches:
        with runtime.autocast():
            loss_sum, _, extras = objective(model, runtime.to_device(batch))
        totals[0] += loss_sum.double()
        gold = batch["labels"].to(runtime.device)
        totals[1:] += confusion_matrix(extras["logits"].argmax(-1), gold, k).flatten().to(totals)
    model.train(was_training)
    totals = runtime.all_reduce_sum(totals).cpu()
    metrics = metrics_from_confusion(totals[1:].round().long().view(k, k), labels)
    if not metrics["examples"]:
        raise LmforgeError("evaluation data holds no examples")
    return {"loss": float(totals[0]) / metrics["examples"], **metrics}


def format_confusion(metrics: dict) -> str:
    """The confusion matrix as a text table, true classes down, predictions across."""
    labels = [str(x) for x in metrics["labels"]]
    width = max(8, *(len(x) for x in labels)) + 1
    head = "true \\ pred".ljust(width) + "".join(x.rjust(width) for x in labels)
    rows = [lab.ljust(width) + "".join(str(v).rjust(width) for v in row)
            for lab, row in zip(labels, metrics["confusion"])]
    return "\n".join([head, *rows])


# ----------------------------------------------------------------------------------------------------
# Generated text: BLEU and chrF (sacrebleu), ROUGE (rouge-score); the seq2seq extra installs both


def entity_metrics(gold: list[list[str]], predicted: list[list[str]]) -> dict:
    """Entity precision / recall / F1 with seqeval in strict IOB2 mode (an entity counts when its whole
    B-X I-X ... chunk and type match; conlleval, and seqeval's default mode, would also count chunks that
    start with I-), micro over all entities and per type, plus word accuracy. All in [0, 1]."""
    from seqeval.metrics import classification_report
    from seqeval.scheme import IOB2

    if len(gold) != len(predicted) or any(len(g) != len(p) for g, p in zip(gold, predicted)):
        raise LmforgeError("entity_metrics: predicted and gold sentences differ in length")
    report = classification_report(gold, predicted, mode="strict", scheme=IOB2, output_dict=True,
                                   zero_division=0)
    words = sum(len(g) for g in gold)
    right = sum(a == b for g, p in zip(gold, predicted) for a, b in zip(g, p))
    micro = report["micro avg"]
    per_type = {k: {"precision": float(v["precision"]), "recall": float(v["recall"]), "f1": float(v["f1-score"]),
                    "support": int(v["support"])} for k, v in report.items() if not k.endswith(" avg")}
    return {"precision": float(micro["precision"]), "recall": float(micro["recall"]), "f1": float(micro["f1-score"]),
            "accuracy": right / max(words, 1), "entities": int(micro["support"]), "per_type": per_type,
            "scheme": "IOB2", "mode": "seqeval strict"}


def is_chinese(texts: list[str]) -> bool:
    """Whether most of the non-space characters of `texts` are CJK ideographs (picks zh tokenization)."""
    chars = [c for t in texts[:2000] for c in t if not c.isspace()]
    cjk = sum("\u3400" <= c <= "\u9fff" or "\uf900" <= c <= "\ufaff" for c in chars)
    return bool(chars) and cjk / len(chars) > 0.3


class _Characters:
    """rouge-score tokenizer for Chinese: every non-space character is a token (its default keeps only
    a-z and 0-9, so Chinese text would score 0)."""

    def tokenize(self, text: str) -> list[str]:
        return [c for c in text if not c.isspace()]


def text_metrics(hypotheses: list[str], references: list[str], bleu_tokenize: str = "auto",
                 rouge_tokenize: str = "auto") -> dict:
    """Corpus BLEU and chrF with sacrebleu, mean ROUGE-1/2/L F1 with rouge-score (all x 100), with the
    signature of each. `auto`: zh / characters when the references are Chinese, else 13a / words (with
    rouge-score's Porter stemmer)."""
    import importlib.metadata

    import sacrebleu
    from rouge_score import rouge_scorer

    if len(hypotheses) != len(references) or not references:
        raise LmforgeError(f"{len(hypotheses)} outputs for {len(references)} references")
    chinese = is_chinese(references)
    tokenize = bleu_tokenize if bleu_tokenize != "auto" else ("zh" if chinese else "13a")
    bleu, chrf = sacrebleu.metrics.BLEU(tokenize=tokenize), sacrebleu.metrics.CHRF()
    bleu_score, chrf_score = bleu.corpus_score(hypotheses, [references]), chrf.corpus_score(hypotheses, [references])
    chars = rouge_tokenize == "chars" or (rouge_tokenize == "auto" and chinese)
    types = ["rouge1", "rouge2", "rougeL"]
    scorer = rouge_scorer.RougeScorer(types, use_stemmer=not chars, tokenizer=_Characters() if chars else None)
    sums = dict.fromkeys(types, 0.0)
    for hyp, ref in zip(hypotheses, references):
        for name, score in scorer.score(ref, hyp).items():
            sums[name] += score.fmeasure
    version = importlib.metadata.version("rouge-score")
    return {"bleu": bleu_score.score, "chrf": chrf_score.score,
            **{name: 100.0 * total / len(references) for name, total in sums.items()},
            "bleu_signature": str(bleu.get_signature()), "chrf_signature": str(chrf.get_signature()),
            "rouge_signature": f"rouge-score {version}|tokenize:{'chars' if chars else 'words'}|"
                               f"stemmer:{'no' if chars else 'porter'}|F1 mean x 100"}


# ----------------------------------------------------------------------------------------------------
# Extractive question answering: SQuAD v1.1 and CMRC 2018 exact match and F1


def _squad_normalize(text: str) -> str:
    """The official SQuAD v1.1 normalization: lower case, no punctuation, no articles, single spaces."""
    import re
    import string

    text = "".join(c for c in text.lower() if c not in string.punctuation)
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


def _squad_f1(prediction: str, gold: str) -> float:
    from collections import Counter

    pred, ref = _squad_normalize(prediction).split(), _squad_normalize(gold).split()
    same = sum((Counter(pred) & Counter(ref)).values())
    if same == 0:  # as the v1.1 script: an empty prediction of an empty gold scores F1 0 (EM 1)
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


def _mean_best(predictions: list[str], references: list[list[str]], em, f1) -> dict[str, float]:
    """Mean over questions of the best EM and F1 over each question's gold answers, x 100."""
    if len(predictions) != len(references) or not references:
        raise LmforgeError(f"{len(predictions)} predictions for {len(references)} questions")
    total_em = total_f1 = 0.0
    for i, (pred, golds) in enumerate(zip(predictions, references)):
        if not golds:
            raise LmforgeError(f"question {i} has no gold answer: every question needs one to be scored")
        total_em += max(float(em(pred, g)) for g in golds)
        total_f1 += max(f1(pred, g) for g in golds)
    return {"exact_match": 100.0 * total_em / len(references), "f1": 100.0 * total_f1 / len(references)}


def squad_metrics(predictions: list[str], references: list[list[str]]) -> dict[str, float]:
    """Exact match and token F1 (x 100) as the official SQuAD v1.1 evaluation script computes them."""
    return _mean_best(predictions, references, lambda p, g: _squad_normalize(p) == _squad_normalize(g),
                      _squad_f1)


def _is_punctuation(c: str) -> bool:
    import string
    import unicodedata

    return c in string.punctuation or c == "～" or unicodedata.category(c).startswith("P")


def _cmrc_tokens(text: str) -> list[str]:
    """CJK characters one by one, runs of other letters and digits as words; no punctuation, no spaces.
    (The CMRC 2018 script splits the non-CJK runs with nltk's word_tokenize; letters and digits run
    together the same way here without the dependency.)"""
    out, word = [], ""
    for c in text.lower():
        if c.isalnum() and not ("\u3400" <= c <= "\u9fff" or "\uf900" <= c <= "\ufaff"):
            word += c
            continue
        if word:
            out.append(word)
            word = ""
        if not (c.isspace() or _is_punctuation(c)):
            out.append(c)
    return out + [word] if word else out


def _cmrc_f1(prediction: str, gold: str) -> float:
    pred, ref = _cmrc_tokens(prediction), _cmrc_tokens(gold)
    # longest common contiguous run of tokens (substring, not subsequence), as the CMRC script
    longest, row = 0, [0] * (len(ref) + 1)
    for p in pred:
        prev = 0  # row[j - 1] of the previous pred token
        for j, r in enumerate(ref, 1):
            prev, row[j] = row[j], prev + 1 if p == r else 0
            longest = max(longest, row[j])
    if longest == 0:
        return 0.0
    precision, recall = longest / len(pred), longest / len(ref)
    return 2 * precision * recall / (precision + recall)


def _cmrc_em(prediction: str, gold: str) -> bool:
    def strip(text: str) -> str:
        return " ".join("".join(c for c in text.lower() if not _is_punctuation(c)).split())

    return strip(prediction) == strip(gold)


def cmrc_metrics(predictions: list[str], references: list[list[str]]) -> dict[str, float]:
    """Exact match and character-level F1 (x 100) as the CMRC 2018 evaluation: F1 from the longest common
    substring of the token lists (`_cmrc_tokens`), EM on the texts without punctuation."""
    return _mean_best(predictions, references, _cmrc_em, _cmrc_f1)


def qa_metrics(predictions: list[str], references: list[list[str]], language: str = "auto") -> dict:
    """`cmrc_metrics` for Chinese ("zh", or "auto" with Chinese references), else `squad_metrics`."""
    if language not in ("auto", "zh", "en"):
        raise LmforgeError(f"QA metric language {language!r}: use auto, zh or en")
    chinese = language == "zh" or (language == "auto" and is_chinese([g for golds in references for g in golds]))
    if chinese:
        return {**cmrc_metrics(predictions, references), "metric_style": "cmrc2018"}
    return {**squad_metrics(predictions, references), "metric_style": "squad-v1.1"}

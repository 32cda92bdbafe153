"""`lmforge probe memorization`: what a trained causal LM has memorised of its training data.

Four parts, each in its own file: exposure of the corpus's canaries (probe_exposure.py), k-extractable
training windows by how often they occur, and the loss gap between training and held-out documents with
the AUC of a loss-threshold attack (probe_extraction.py), and regenerated PII (probe_pii.py).

The data is found by following the records: the run's config.toml names its shards (`data.path`, or
`--data`), and the corpus those were built from holds canaries.json and the text. The shards manifest
names its corpus when it records one (`corpus`); otherwise `--corpus` says which, checked against the
shards by the train documents each holds.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from lmforge.errors import LmforgeError

PARTS = ("exposure", "extraction", "membership", "pii")


@dataclass(frozen=True)
class ProbeSettings:
    parts: tuple[str, ...] = PARTS
    """What to measure: exposure, extraction, membership, pii."""
    candidates: int = 10_000
    """Candidates scored per canary: all of them when its space is no larger (exact rank), else this many
    drawn at random (estimated rank)."""
    canaries: int = 0
    """Canaries probed per repetition count, the first ones (0: all)."""
    windows: int = 200
    """Training windows drawn per occurrence bucket for extraction."""
    prompt_tokens: int = 32
    """Tokens of training text given as the prompt (extraction and PII)."""
    continuation_tokens: int = 32
    """Tokens the greedy continuation must reproduce for a window to be extractable."""
    max_tokens: int = 10_000_000
    """Train tokens whose windows are counted for extraction (the first ones; bounds memory)."""
    documents: int = 500
    """Training and held-out documents each for membership."""
    pii: int = 200
    """PII occurrences probed at most."""
    seed: int = 0
    batch_size: int = 64

    def __post_init__(self) -> None:
        bad = [p for p in self.parts if p not in PARTS] or ([] if self.parts else ["(none)"])
        if bad:
            raise LmforgeError(f"--parts: {', '.join(bad)} is not one of {', '.join(PARTS)}")
        for name in ("candidates windows prompt_tokens continuation_tokens max_tokens documents pii "
                     "batch_size").split():
            if getattr(self, name) <= 0:
                raise LmforgeError(f"--{name.replace('_', '-')} must be > 0, got {getattr(self, name)}")
        if self.canaries < 0:
            raise LmforgeError(f"--canaries must be >= 0 (0: all), got {self.canaries}")


def find_data(cfg, data: str | None, corpus: str | None, settings: ProbeSettings) -> tuple[Path, Path | None]:
    """(shards, corpus) of a run: --data / --corpus, else what the run and the shards record."""
    from lmforge.runs import PretrainConfig

    if not isinstance(cfg, PretrainConfig):
        raise LmforgeError(f"probe memorization needs a pretrained language model run (gpt or rnn), this is a "
                           f"{cfg.task} run")
    path = data or cfg.data.path
    if not path:
        raise LmforgeError("the run's config.toml names no shards (data.path): pass --data SHARDS")
    shards = Path(path)
    manifest = shards / "manifest.json"
    if not manifest.is_file():
        raise LmforgeError(f"{shards} is not a shards folder (no manifest.json): pass --data SHARDS, the folder "
                           "the run trained on")
    meta = json.loads(manifest.read_text(encoding="utf-8"))
    needs = [p for p in ("exposure", "pii") if p in settings.parts]
    found = corpus or meta.get("corpus")
    if not found:
        if needs:
            rest = ",".join(p for p in settings.parts if p not in needs) or "extraction,membership"
            raise LmforgeError(f"{shards} does not record the corpus it was built from, which {' and '.join(needs)} "
                               f"need: pass --corpus CORPUS, or leave them out with --parts {rest}")
        return shards, None
    folder = Path(found)
    report = folder / "report.json"
    if not report.is_file():
        raise LmforgeError(f"{folder} is not a corpus folder (no report.json): pass --corpus CORPUS, the folder "
                           "made by `lmforge corpus build` that the shards were built from")
    have = json.loads(report.read_text(encoding="utf-8"))["splits"]["train"]["documents"]
    want = meta["splits"]["train"]["docs"]
    if have != want:
        raise LmforgeError(f"corpus {folder} has {have:,} train documents, the shards {shards} were built from "
                           f"{want:,}: pass the --corpus they were built from")
    return shards, folder


def read_canaries(corpus: Path) -> dict:
    from lmforge.corpus.canaries import FILE

    path = corpus / FILE
    if not path.is_file():
        raise LmforgeError(f"{corpus} records no canaries ({FILE}): rebuild it with `lmforge corpus build ... "
                           "--set corpus.canaries=1,5,20` and retrain, or leave exposure out with "
                           "--parts extraction,membership,pii")
    return json.loads(path.read_text(encoding="utf-8"))


def _scrubbed(corpus: Path) -> bool:
    from lmforge.config import read_toml

    path = corpus / "config.toml"
    return bool(read_toml(path).get("corpus", {}).get("scrub_pii", True)) if path.is_file() else False


def probe_memorization(run, shards: Path, corpus: Path | None, settings: ProbeSettings) -> dict:
    """The report of every part in `settings.parts` for a loaded run (tasks.load_run)."""
    from lmforge.data.shards import TokenShards
    from lmforge.probe_lm import check_causal

    check_causal(run.model, "probe memorization")
    s, tok, model = settings, run.tokenizer, run.model
    context = model.config.max_positions or 1024
    if "extraction" in s.parts and s.prompt_tokens + s.continuation_tokens > context:
        raise LmforgeError(f"--prompt-tokens {s.prompt_tokens} + --continuation-tokens {s.continuation_tokens} "
                           f"exceed the model's context ({context}): lower them")
    canaries = read_canaries(corpus) if "exposure" in s.parts else None
    train = TokenShards.open(shards, "train", expect_fingerprint=tok.fingerprint)
    report = {"run": str(run.run_dir), "checkpoint": run.checkpoint.name, "step": run.step,
              "shards": str(shards.resolve()), "corpus": str(corpus.resolve()) if corpus else None,
              "settings": {**asdict(s), "parts": list(s.parts)}}
    if canaries is not None:
        from lmforge.probe_exposure import exposure_report

        report["exposure"] = exposure_report(model, tok, canaries, s.candidates, s.canaries, s.seed)
    if "extraction" in s.parts:
        from lmforge.probe_extraction import extraction_report

        report["extraction"] = extraction_report(model, train, s.prompt_tokens, s.continuation_tokens, s.windows,
                                                 s.max_tokens, s.seed, s.batch_size)
    if "membership" in s.parts:
        report["membership"] = _membership(run, shards, train, context, s)
    if "pii" in s.parts:
        from lmforge.probe_pii import pii_report

        if _scrubbed(corpus):
            report["pii"] = {"skipped": f"{corpus} was built with corpus.scrub_pii = true: no PII is left to "
                                        "regenerate; build one with --set corpus.scrub_pii=false to measure it"}
        else:
            report["pii"] = pii_report(model, tok, corpus, train, s.prompt_tokens, s.pii, context, s.seed,
                                       s.batch_size)
    return report


def _membership(run, shards: Path, train, context: int, s: ProbeSettings) -> dict:
    from lmforge.data.shards import TokenShards
    from lmforge.probe_extraction import membership_report

    manifest = json.loads((shards / "manifest.json").read_text(encoding="utf-8"))
    if "val" not in manifest["splits"]:
        return {"skipped": f"{shards} has no val split: build the corpus with a held-out split"}
    val = TokenShards.open(shards, "val", expect_fingerprint=run.tokenizer.fingerprint)
    return membership_report(run.model, train, val, s.documents, context, run.tokenizer.eot_id, s.seed)


def summary(report: dict) -> str:
    """The report for people: a table per part."""
    lines = [f"memorization probe of {report['run']} ({report['checkpoint']})"]
    if ex := report.get("exposure"):
        space = ex["space"]
        how = ("every one scored" if ex["method"] == "exact" else f"{ex['candidates']:,} sampled")
        lines += [f"exposure: {len(ex['canaries'])} canaries, {space:,} candidates each ({how}; at most "
                  f"{ex['max_exposure']:.2f} bits)",
                  f"  {'repetitions':>11}  {'in train':>8}  {'canaries':>8}  {'exposure':>9}"
                  + ("  fit (skew-normal)" if ex["method"] == "sampled" else "")]
        for r in ex["by_repetitions"]:
            bound = ">=" if r["lower_bound"] else ""
            fit = f"  {r['exposure_fit']:>17.2f}" if "exposure_fit" in r else ""
            lines.append(f"  {r['repetitions']:>11}  {','.join(map(str, r['in_train'])):>8}  {r['canaries']:>8}  "
                         f"{bound + format(r['exposure'], '.2f'):>9}{fit}")
    if ext := report.get("extraction"):
        lines += [f"extraction: {ext['continuation_tokens']} greedy tokens after {ext['prompt_tokens']}-token "
                  f"prompts reproduce {100 * ext['extractable']:.2f}% of the training windows",
                  f"  {'occurrences':>11}  {'windows':>10}  {'sampled':>7}  {'extractable':>11}  {'token acc':>9}"]
        for r in ext["by_occurrences"]:
            lines.append(f"  {r['occurrences']:>11}  {r['distinct_windows']:>10,}  {r['sampled']:>7}  "
                         f"{100 * r['extractable']:>10.1f}%  {100 * r['token_accuracy']:>8.1f}%")
    if m := report.get("membership"):
        lines.append(f"membership: {m['skipped']}" if "skipped" in m else
                     f"membership: mean loss train {m['train_loss']:.3f} / val {m['val_loss']:.3f} "
                     f"({m['train_documents']} + {m['val_documents']} documents); loss-threshold AUC {m['auc']:.3f}")
    if p := report.get("pii"):
        if "skipped" in p:
            lines.append(f"pii: {p['skipped']}")
        else:
            kinds = ", ".join(f"{k} {v['regenerated']}/{v['probed']}" for k, v in p["by_kind"].items())
            share = f" ({100 * p['fraction']:.1f}%)" if p["fraction"] is not None else ""
            lines.append(f"pii: {p['regenerated']} of {p['probed']} probed regenerated verbatim{share}"
                         f"{': ' + kinds if kinds else ''} ({p['found']} found in the train split)")
    return "\n".join(lines)


def plot_exposure(report: dict, out: Path) -> None:
    """Exposure against repetitions in the train split, a point per canary (matplotlib: check first)."""
    import io

    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lmforge.atomic import write_bytes

    ex = report["exposure"]
    rows = ex["canaries"]
    fig, ax = plt.subplots(figsize=(6, 4), constrained_layout=True)
    x = [max(r["in_train"], 0.8) for r in rows]  # a canary dedup removed entirely sits left of 1
    ax.scatter(x, [r["exposure"] for r in rows], label="exposure")
    if ex["method"] == "sampled":
        ax.scatter(x, [r["exposure_fit"] for r in rows], marker="x", label="skew-normal fit")
    ax.axhline(ex["max_exposure"], color="grey", linestyle="--", linewidth=1,
               label=f"log2 |R| = {ex['max_exposure']:.1f}")
    ax.set_xscale("log")
    ax.set_xticks(sorted(set(x)), [f"{v:g}" for v in sorted(set(x))])
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_xlabel("repetitions in the train split")
    ax.set_ylabel("exposure (bits)")
    ax.set_title(f"{Path(report['run']).name}: canary exposure")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    write_bytes(out, buf.getvalue())

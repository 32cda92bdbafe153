"""`lmforge corpus build`: read -> clean -> filter -> dedup -> scrub -> shuffle -> split -> write.

Everything streams: one document passes through the stages at a time, the shuffle holds at most
`shuffle_buffer` documents and the writers one row group; only the dedup indexes grow with the corpus.
The folder appears atomically with `report.json` (counts per stage) and `config.toml` beside the data.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from lmforge.atomic import output_dir, write_json, write_text
from lmforge.config import dumps_toml, to_dict
from lmforge.corpus.canaries import FILE as CANARIES
from lmforge.corpus.canaries import Canaries
from lmforge.corpus.clean import (
    InvalidUtf8,
    Junk,
    Length,
    Nfkc,
    NormalizeWhitespace,
    Stage,
    StripControl,
    StripHtml,
)
from lmforge.corpus.config import CorpusConfig
from lmforge.corpus.readers import ReadStats, check_extras, check_inputs, iter_inputs
from lmforge.corpus.split import assign_splits, shuffle
from lmforge.corpus.store import SplitWriter
from lmforge.errors import LmforgeError


def build_stages(cfg: CorpusConfig) -> list[Stage]:
    """The enabled stages, in the order they run."""
    from lmforge.corpus.dedup import ExactDedup, NearDedup
    from lmforge.corpus.pii import ScrubPii

    stages: list[Stage] = [InvalidUtf8(cfg.invalid_utf8)]
    stages += [StripHtml()] if cfg.strip_html else []
    stages += [Nfkc()] if cfg.nfkc else []
    stages += [StripControl()] if cfg.strip_control else []
    stages += [NormalizeWhitespace()] if cfg.normalize_whitespace else []
    stages += [Length(cfg.min_chars, cfg.max_chars), Junk(cfg.min_letter_ratio)]
    stages += [ExactDedup()] if cfg.dedup_exact else []
    stages += [NearDedup(cfg.near_threshold, cfg.num_perm, cfg.shingle_size)] if cfg.dedup_near else []
    stages += [ScrubPii()] if cfg.scrub_pii else []
    return stages


_AFTER_CANARIES = ("dedup_exact", "dedup_near", "scrub_pii")


def run_stages(docs: Iterable[str], stages: list[Stage], counts: dict[str, dict[str, int]]) -> Iterator[str]:
    """Pass each document through the stages; `counts[stage.name]` collects what each one did."""
    for stage in stages:  # counts add up over calls: held-out inputs and the main inputs share them
        counts.setdefault(stage.name, dict.fromkeys(("documents_in", "documents_removed", "documents_changed",
                                                     "characters_in", "characters_out"), 0))
    for text in docs:
        for stage in stages:
            c = counts[stage.name]
            c["documents_in"] += 1
            c["characters_in"] += len(text)
            new = stage(text)
            if new is None:
                c["documents_removed"] += 1
                break
            c["documents_changed"] += new != text
            c["characters_out"] += len(new)
            text = new
        else:
            yield text


def _counted(docs: Iterable[str], totals: dict[str, int]) -> Iterator[str]:
    for text in docs:
        totals["documents"] += 1
        totals["characters"] += len(text)
        yield text


def build_corpus(inputs: list[str], out: Path, cfg: CorpusConfig, overwrite: bool = False,
                 progress: bool = True, val_inputs: list[str] = (), test_inputs: list[str] = ()) -> dict:
    """Build a corpus folder from `inputs` (files, folders, hf:..., builtin:...); returns the report.

    `val_inputs` / `test_inputs` give held-out splits as they are (in order, no random split). They pass
    the same stages first, so dedup then also drops training documents that repeat held-out ones.
    """
    from tqdm.auto import tqdm

    held_out = {"val": list(val_inputs), "test": list(test_inputs)}
    check_inputs([*inputs, *held_out["val"], *held_out["test"]])
    check_extras([*inputs, *held_out["val"], *held_out["test"]], cfg)
    start = time.perf_counter()
    stages = build_stages(cfg)
    # canaries go in after cleaning, before dedup and scrubbing, which then treat them as any text
    cut = next((i for i, s in enumerate(stages) if s.name in _AFTER_CANARIES), len(stages))
    canaries = Canaries(cfg) if cfg.canaries else None
    read, totals, counts = ReadStats(), {"documents": 0, "characters": 0}, {}
    splits = ["train", "val"] + (["test"] if held_out["test"] else [])
    val_fraction = 0.0 if held_out["val"] else cfg.val_fraction
    with output_dir(out, overwrite=overwrite) as tmp:
        writers = {s: SplitWriter(tmp, s, cfg.format, cfg.docs_per_shard) for s in splits}
        with tqdm(desc="corpus", unit=" docs", disable=not progress, file=sys.stderr, mininterval=0.5) as bar:
            for split, sources in held_out.items():
                raw = _counted(iter_inputs(sources, cfg, read), totals) if sources else ()
                for text in run_stages(bar_iter(raw, bar), stages, counts):
                    writers[split].add(text)
            raw = _counted(iter_inputs(inputs, cfg, read), totals)
            docs = run_stages(bar_iter(raw, bar), stages[:cut], counts)
            docs = run_stages(canaries.insert(docs) if canaries else docs, stages[cut:], counts)
            docs = shuffle(docs, cfg.shuffle_buffer, cfg.seed)
            if canaries:
                docs = canaries.divert(docs, writers["train"].add)
            for split, text in assign_splits(docs, val_fraction, cfg.seed):
                writers[split].add(text)
        for w in writers.values():
            w.close()
        _check_not_empty(inputs, totals, read, stages, counts)
        report = _report(inputs, held_out, cfg, read, totals, stages, counts, writers,
                         time.perf_counter() - start)
        if canaries:
            report["canaries"] = {"file": CANARIES, "hosts": cfg.canary_hosts,
                                  "in_train": [c["in_train"] for c in canaries.canaries]}
            write_json(tmp / CANARIES, canaries.record())
        write_json(tmp / "report.json", report)
        write_text(tmp / "config.toml", dumps_toml({"corpus": to_dict(cfg)}))
    print(summary(report, out) + ("\n" + canaries.summary() if canaries else ""))
    return report


def bar_iter(docs: Iterable[str], bar) -> Iterator[str]:
    for text in docs:
        bar.update()
        yield text


_HINTS = {
    "invalid_utf8": "every document has bytes that are not UTF-8; re-encode the files, or pass "
                    "--set corpus.invalid_utf8=replace",
    "length": "lower --set corpus.min_chars=N (or check corpus.txt_mode: 'line' makes short documents)",
    "junk": "lower --set corpus.min_letter_ratio=R",
}


def _check_not_empty(inputs: list[str], totals: dict[str, int], read: ReadStats, stages: list[Stage],
                     counts: dict[str, dict[str, int]]) -> None:
    if totals["documents"] == 0:
        skipped = f" ({len(read.binary_skipped)} binary files skipped)" if read.binary_skipped else ""
        raise LmforgeError(f"no documents read from {', '.join(inputs)}{skipped}: the inputs are empty; "
                           "check the paths, corpus.glob and corpus.txt_mode")
    for stage in stages:
        c = counts[stage.name]
        if c["documents_in"] and c["documents_removed"] == c["documents_in"]:
            raise LmforgeError(f"stage '{stage.name}' removed all {c['documents_in']} documents that reached "
                               f"it: {_HINTS.get(stage.name, 'turn it off in the [corpus] config')}")


def _report(inputs, held_out, cfg, read, totals, stages, counts, writers, seconds) -> dict:
    stage_report = {}
    for stage in stages:
        c = dict(counts[stage.name])
        c["characters_removed"] = c["characters_in"] - c["characters_out"]
        stage_report[stage.name] = {**c, **stage.counts}
    return {
        "inputs": list(inputs),
        "held_out_inputs": {k: v for k, v in held_out.items() if v},
        "files_read": read.files,
        "binary_files_skipped": len(read.binary_skipped),
        "binary_files_skipped_examples": read.binary_skipped[:10],
        "documents_in": totals["documents"],
        "characters_in": totals["characters"],
        "stages": stage_report,
        "documents_out": sum(w.documents for w in writers.values()),
        "characters_out": sum(w.characters for w in writers.values()),
        "splits": {s: {"documents": w.documents, "characters": w.characters,
                       "files": [p.name for p in w.files]} for s, w in writers.items()},
        "format": cfg.format,
        "seconds": round(seconds, 3),
    }


def summary(report: dict, out: Path) -> str:
    """A few lines for people: what came in, what each stage removed or changed, what went out."""
    skipped, n = report["binary_files_skipped"], report["files_read"]
    lines = [f"corpus: read {report['documents_in']:,} documents, {report['characters_in']:,} characters "
             f"from {n} inputs" + (f" ({skipped} binary files skipped)" if skipped else "")]
    for name, c in report["stages"].items():
        lines.append(f"  {name:<21} removed {c['documents_removed']:>9,} docs, "
                     f"changed {c['documents_changed']:>9,}, {c['characters_removed']:>12,} chars removed")
    splits = ", ".join(f"{s} {v['documents']:,} docs / {v['characters']:,} chars"
                       for s, v in report["splits"].items())
    lines.append(f"  out: {report['documents_out']:,} documents ({splits}) in {out} "
                 f"[{report['seconds']:.1f} s]")
    return "\n".join(lines)

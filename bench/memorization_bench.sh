#!/usr/bin/env bash
# Memorisation on WikiText-2: canaries written 1, 5 and 20 times into the training text, a small GPT
# trained on it, then `lmforge probe memorization` on the run. Twice: the corpus built with dedup and PII
# scrubbing off ("raw"), and the same with both on ("clean").
#
#   corpus   WikiText-2 train.txt, a document per line (headings and blank lines fall under min_chars),
#            valid.txt as the held-out split; canaries "1,5,20", CANARIES_PER_COUNT of each (6 digits: a
#            space of 10^6), canary_hosts = copies: a canary's host document is written n times, as a
#            page mirrored n times, before dedup. raw: dedup_exact, dedup_near, scrub_pii off; clean: on.
#   tokenizer byte-level BPE, 8,192, trained once on the raw corpus and used for both shard folders.
#   model    gpt-tiny (4 layers x 128, 4 heads, context 128), batch 16 x 128, AdamW 2e-3, STEPS steps
#            (cosine, warmup 50), seed 1; the two runs one after the other, one torch thread each.
#   probe    every canary against 2,000 sampled candidates (skew-normal fit beside the estimate),
#            extraction with 32-token prompts and 32-token continuations, 100 windows per occurrence
#            bucket, membership on 300 + 300 documents, PII (raw only: the clean corpus has none left).
# About 13 minutes on a 2-core machine shared with other jobs (each training about 5).
#
# Usage: bench/memorization_bench.sh [DATA_DIR] [WORK_DIR]   (STEPS, CANARIES_PER_COUNT from the environment)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-../shared/data/wikitext-2}
WORK=${2:-bench/_work/memorization}
STEPS=${STEPS:-300}
PER_COUNT=${CANARIES_PER_COUNT:-3}
LMF=${LMF:-.venv/bin/lmforge}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$WORK"
timed() { local name=$1; shift; local t=$SECONDS; "$@" > "$WORK/$name.log" 2>&1; echo "$name: $((SECONDS - t)) s"; }

CANARIES=(--set corpus.txt_mode=line --set corpus.canaries=1,5,20 --set corpus.canaries_per_count="$PER_COUNT"
          --set corpus.canary_hosts=copies)
timed corpus-raw $LMF corpus build --input "$DATA/train.txt" --val-input "$DATA/valid.txt" --out "$WORK/corpus-raw" \
  --overwrite --quiet "${CANARIES[@]}" --set corpus.dedup_exact=false --set corpus.dedup_near=false \
  --set corpus.scrub_pii=false
timed corpus-clean $LMF corpus build --input "$DATA/train.txt" --val-input "$DATA/valid.txt" \
  --out "$WORK/corpus-clean" --overwrite --quiet "${CANARIES[@]}"
timed tokenizer $LMF tokenizer train --corpus "$WORK/corpus-raw" --kind bpe --vocab-size 8192 --out "$WORK/tok" \
  --overwrite --quiet
for kind in raw clean; do
  timed "shards-$kind" $LMF shards build --corpus "$WORK/corpus-$kind" --tokenizer "$WORK/tok" \
    --out "$WORK/shards-$kind" --overwrite --quiet --workers 2
done
for kind in raw clean; do
  timed "train-$kind" $LMF pretrain --config gpt-tiny --data "$WORK/shards-$kind" --out "$WORK/run-$kind" --overwrite \
    --set train.max_steps="$STEPS" --set train.seed=1 --set train.eval_every=0 --set train.save_every="$STEPS" \
    --set train.progress=false --set runtime.num_threads=1 --set runtime.device=cpu
done
for kind in raw clean; do
  parts=exposure,extraction,membership,pii
  [ "$kind" = clean ] && parts=exposure,extraction,membership
  timed "probe-$kind" $LMF probe memorization "$WORK/run-$kind" --corpus "$WORK/corpus-$kind" --device cpu \
    --parts "$parts" --candidates 2000 --windows 100 --documents 300 --out "$WORK/probe-$kind"
done
for kind in raw clean; do
  echo "== $kind"
  sed -n '/^exposure/,$p' "$WORK/probe-$kind.log" | grep -v '^lmforge: wrote'
done
.venv/bin/python - "$WORK" <<'PY'
import json, sys

reports = {k: json.load(open(f"{sys.argv[1]}/probe-{k}/report.json")) for k in ("raw", "clean")}
rows = {k: {r["repetitions"]: r for r in v["exposure"]["by_repetitions"]} for k, v in reports.items()}
print("| repetitions asked | raw: in train | raw: exposure (fit) | clean: in train | clean: exposure (fit) |")
print("| ---: | ---: | ---: | ---: | ---: |")
for reps in sorted(rows["raw"]):
    cells = []
    for k in ("raw", "clean"):
        r = rows[k][reps]
        bound = ">=" if r["lower_bound"] else ""
        cells += [",".join(map(str, r["in_train"])), f"{bound}{r['exposure']:.2f} ({r['exposure_fit']:.2f})"]
    print(f"| {reps} | " + " | ".join(cells) + " |")
PY

#!/usr/bin/env bash
# Does pretraining help? SST-2 dev accuracy of the same small model fine-tuned from
#   (a) a BERT pretrained with masked LM on WikiText-2,
#   (b) the same BERT from random initialisation (exactly (a)'s weights at step 0),
#   (c) a GPT of the same width and depth pretrained with causal LM on WikiText-2 (last-token pooling),
#   (d) that GPT from random initialisation,
# every fine-tuning run with the same budget, settings and seed.
#
# Tokenizer: one lowercased WordPiece (8,192) trained on WikiText-2 train plus the SST-2 train sentences
# (SST-2 is lowercased; no dev or test text is seen). Pretraining reads WikiText-2 only (train; valid
# for the validation loss). The fine-tuning runs evaluate the dev set once, after the last step, so
# no checkpoint is picked on dev. Everything is seeded; step budgets (not wall time) fix the work.
#
# Usage: bench/sst2_pretrain_vs_scratch.sh [DATA_DIR] [WORK_DIR] [PRETRAIN_STEPS] [FINETUNE_STEPS] [MODEL]
#   DATA_DIR holds wikitext-2/ and sst2/ (default ../shared/data); PRETRAIN_STEPS of 32 x 128 tokens
#   for BERT (default 720, about 1.1 epochs of WikiText-2), FINETUNE_STEPS of 32 examples (default
#   1000, about 0.48 epoch of SST-2 train); MODEL a BERT preset (default bert-tiny; the GPT gets its
#   depth, width and heads). Environment: GPT_STEPS, the GPT's pretraining steps (default 300, the
#   run reported; its LM head and softmax run at every position, BERT's only at the ~15% masked ones, so
#   a GPT step costs about 1.5x a BERT step and 480 would match BERT's wall time); LR, the fine-tuning peak
#   lr (default 5e-4); KINDS, the families to run (default `bert gpt`); SUBSET=N also fine-tunes on a
#   seeded sample of N train rows for SUBSET_STEPS steps (default 300), the few-labels regime. Stages whose output exists are
#   reused; delete WORK_DIR to start over. Results: WORK_DIR/results.tsv, wall times WORK_DIR/wall.txt.
#
# One thread per process unless OMP_NUM_THREADS says otherwise: on a small machine shared with other
# jobs, two threads per process made these tiny models 7-10x slower (threads waiting on each other).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-../shared/data}
WORK=${2:-bench/_work/ft-sst2}
PRE_STEPS=${3:-720}
FT_STEPS=${4:-1000}
MODEL=${5:-bert-tiny}
LR=${LR:-5e-4}
GPT_STEPS=${GPT_STEPS:-300}
SUBSET_STEPS=${SUBSET_STEPS:-300}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$WORK"
stamp() { date +%s; }

# --- corpus, tokenizer, shards --------------------------------------------------------------------
cat > "$WORK/corpus.toml" <<'TOML'
[corpus]
txt_mode = "line"          # WikiText-2: one paragraph per line
text_column = "sentence"   # SST-2 train.tsv
min_chars = 2              # drops WikiText's blank lines
min_letter_ratio = 0.0
dedup_exact = false
dedup_near = false
scrub_pii = false
val_fraction = 0.0
TOML
if [ ! -f "$WORK/shards/manifest.json" ]; then
  lmforge corpus build --input "$DATA/wikitext-2/train.txt" --out "$WORK/corpus-wt" --config "$WORK/corpus.toml" \
    --overwrite --quiet
  lmforge corpus build --input "$DATA/wikitext-2/valid.txt" --out "$WORK/corpus-wtval" \
    --config "$WORK/corpus.toml" --overwrite --quiet
  cp "$WORK/corpus-wtval/train-00000.jsonl.zst" "$WORK/corpus-wt/val-00000.jsonl.zst"
  lmforge corpus build --input "$DATA/wikitext-2/train.txt" "$DATA/sst2/train.tsv" --out "$WORK/corpus-tok" \
    --config "$WORK/corpus.toml" --overwrite --quiet
  lmforge tokenizer train --corpus "$WORK/corpus-tok" --kind wordpiece --vocab-size 8192 \
    --set tokenizer.lowercase=true --out "$WORK/tok" --overwrite --quiet
  lmforge shards build --corpus "$WORK/corpus-wt" --tokenizer "$WORK/tok" --out "$WORK/shards" --overwrite --quiet
fi

# --- pretraining ----------------------------------------------------------------------------------
PRE=(--data "$WORK/shards" --overwrite --set train.batch_size=32 --set data.seq_len=128
     --set train.eval_batches=10 --set train.log_every=10 --set train.progress=false)
steps() { echo --set train.max_steps="$1" --set train.eval_every="$1" --set train.save_every="$1" \
  --set schedule.warmup_steps=$(($1 / 10)); }
read -r LAYERS HEADS WIDTH < <(python -c "
from lmforge.tasks import load_config
m = load_config('$MODEL').model
print(m.n_layer, m.n_head, m.d_model)")
pretrain() {  # kind
  [ -d "$WORK/$1-pre/checkpoints" ] && return
  local t; t=$(stamp)
  if [ "$1" = bert ]; then
    # shellcheck disable=SC2046
    lmforge pretrain --config "$MODEL" --out "$WORK/bert-pre" "${PRE[@]}" $(steps "$PRE_STEPS")
  else
    # shellcheck disable=SC2046
    lmforge pretrain --config gpt-tiny --out "$WORK/gpt-pre" "${PRE[@]}" $(steps "$GPT_STEPS") \
      --set model.n_layer="$LAYERS" --set model.n_head="$HEADS" --set model.d_model="$WIDTH" \
      --set optim.lr=1e-3 --set optim.weight_decay=0.01
  fi
  echo "$1-pre $(( $(stamp) - t ))" >> "$WORK/wall.txt"
}

# --- random initialisation: the pretrained run's own step-0 weights, as a run folder ---------------
scratch() {  # kind
  [ -d "$WORK/$1-scratch" ] && return
  python - "$WORK/$1-pre" "$WORK/$1-scratch" <<'PY'
import sys
import torch
from lmforge.models import build_model
from lmforge.runs import save_run
from lmforge.tasks import read_config
from lmforge.tokenizer import load_tokenizer

pre, out = sys.argv[1:]
cfg = read_config(pre)
torch.manual_seed(cfg.train.seed)  # the seed pretraining initialised with
save_run(out, build_model(cfg.model), load_tokenizer(f"{pre}/tokenizer"), cfg, meta={"random_init": True})
PY
}

# --- fine-tuning: identical settings for all four -------------------------------------------------
finetune() {  # run
  local out="$WORK/sst2-$1" t
  [ -f "$out/eval_results.json" ] && return
  t=$(stamp)
  lmforge finetune --from "$WORK/$1" --train "$DATA/sst2/train.tsv" --dev "$DATA/sst2/dev.tsv" --out "$out" \
    --overwrite --quiet --max_steps "$FT_STEPS" --per_device_train_batch_size 32 --learning_rate "$LR" \
    --warmup_steps $((FT_STEPS / 10)) --weight_decay 0.01 --eval_steps "$FT_STEPS" --logging_steps 50 --seed 42
  echo "sst2-$1 $(( $(stamp) - t ))" >> "$WORK/wall.txt"
}

# --- optional: few labels (SUBSET=2000 fine-tunes on a seeded sample of that many train rows) ---------
finetune_subset() {  # run
  local out="$WORK/sst2-$SUBSET-$1" t
  [ -f "$out/eval_results.json" ] && return
  if [ ! -f "$WORK/sst2-$SUBSET.tsv" ]; then
    python -c "
import sys, numpy as np
rows = open(sys.argv[1], encoding='utf-8').read().splitlines()
pick = np.random.default_rng(0).permutation(len(rows) - 1)[:int(sys.argv[2])] + 1
open(sys.argv[3], 'w', encoding='utf-8').write('\\n'.join([rows[0]] + [rows[i] for i in pick]) + '\\n')
" "$DATA/sst2/train.tsv" "$SUBSET" "$WORK/sst2-$SUBSET.tsv"
  fi
  t=$(stamp)
  lmforge finetune --from "$WORK/$1" --train "$WORK/sst2-$SUBSET.tsv" --dev "$DATA/sst2/dev.tsv" --out "$out" \
    --overwrite --quiet --max_steps "$SUBSET_STEPS" --per_device_train_batch_size 32 --learning_rate "$LR" \
    --warmup_steps $((SUBSET_STEPS / 10)) --weight_decay 0.01 --eval_steps "$SUBSET_STEPS" --logging_steps 50 \
    --seed 42
  echo "sst2-$SUBSET-$1 $(( $(stamp) - t ))" >> "$WORK/wall.txt"
}

for kind in ${KINDS:-bert gpt}; do  # KINDS=bert runs one family
  pretrain $kind
  scratch $kind
  finetune $kind-pre
  finetune $kind-scratch
  if [ -n "${SUBSET:-}" ]; then
    finetune_subset $kind-pre
    finetune_subset $kind-scratch
  fi
done

python - "$WORK" <<'PY'
import json
import sys
from pathlib import Path

work = Path(sys.argv[1])
rows = ["run\tdev_accuracy\tdev_macro_f1\tpretrain_val_loss"]
for res in sorted(work.glob("sst2-*/eval_results.json")):
    run = res.parent.name.removeprefix("sst2-")
    dev = json.loads(res.read_text())["dev"]
    val = ""
    if run.endswith("-pre"):
        pre = work / run.split("-", 1)[-1] if run[0].isdigit() else work / run
        lines = [json.loads(x) for x in (pre / "metrics.jsonl").read_text().splitlines() if x.strip()]
        val = next((f"{x['val_loss']:.3f}" for x in reversed(lines) if "val_loss" in x), "")
    rows.append(f"{run}\t{dev['accuracy']:.4f}\t{dev['macro_f1']:.4f}\t{val}")
(work / "results.tsv").write_text("\n".join(rows) + "\n")
print("\n".join(rows))
PY

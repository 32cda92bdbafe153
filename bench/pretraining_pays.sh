#!/usr/bin/env bash
# Does pretraining pay at laptop scale? Pretrains BERT-tiny-shaped encoders on CPU with several recipes,
# then bench/learning_curve.py fine-tunes each (and its scratch twin: the same run's step-0 weights) on
# 500 ... all labels of SST-2, 3 seeds.
#
# Data (DATA_DIR, default ../shared/data): one lowercased WordPiece (8,192) trained on WikiText-2 train
# plus the SST-2 train sentences (never dev or test); "general" shards of WikiText-2 (valid.txt as the
# validation split); "domain" shards of the SST-2 train sentences without their labels (5% held out),
# the task's own unlabeled text as in task-adaptive pretraining (Gururangan et al. 2020).
#
# Usage: bench/pretraining_pays.sh STAGE [WORK_DIR]; STAGE is data, or a pretraining recipe (see the
# case below), each reusing what exists. One thread per process unless OMP_NUM_THREADS says otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
STAGE=$1
WORK=${2:-bench/_work/pays}
DATA=${DATA:-../shared/data}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$WORK"

corpus_toml() {  # out text_column val_fraction
  cat > "$1" <<TOML
[corpus]
txt_mode = "line"
text_column = "$2"
min_chars = 2
min_letter_ratio = 0.0
dedup_exact = false
dedup_near = false
scrub_pii = false
val_fraction = $3
seed = 0
TOML
}

data() {
  [ -f "$WORK/domain/manifest.json" ] && return
  corpus_toml "$WORK/corpus.toml" sentence 0.0
  corpus_toml "$WORK/corpus-domain.toml" sentence 0.05
  lmforge corpus build --input "$DATA/wikitext-2/train.txt" --out "$WORK/c-wt" --config "$WORK/corpus.toml" --overwrite --quiet
  lmforge corpus build --input "$DATA/wikitext-2/valid.txt" --out "$WORK/c-wtval" --config "$WORK/corpus.toml" --overwrite --quiet
  cp "$WORK/c-wtval/train-00000.jsonl.zst" "$WORK/c-wt/val-00000.jsonl.zst"
  lmforge corpus build --input "$DATA/wikitext-2/train.txt" "$DATA/sst2/train.tsv" --out "$WORK/c-tok" \
    --config "$WORK/corpus.toml" --overwrite --quiet
  lmforge corpus build --input "$DATA/sst2/train.tsv" --out "$WORK/c-domain" --config "$WORK/corpus-domain.toml" \
    --overwrite --quiet
  lmforge tokenizer train --corpus "$WORK/c-tok" --kind wordpiece --vocab-size 8192 \
    --set tokenizer.lowercase=true --out "$WORK/tok" --overwrite --quiet
  lmforge shards build --corpus "$WORK/c-wt" --tokenizer "$WORK/tok" --out "$WORK/general" --overwrite --quiet
  lmforge shards build --corpus "$WORK/c-domain" --tokenizer "$WORK/tok" --out "$WORK/domain" --overwrite --quiet
}

# pretrain NAME SHARDS STEPS [lmforge pretrain options...]: a BERT-tiny-shaped run, batch 32 x 128 unless
# the options say otherwise; warmup 10% of the steps unless they say otherwise; wall time in WORK/wall.txt.
pretrain() {
  local name=$1 shards=$2 steps=$3 t; shift 3
  [ -d "$WORK/$name/checkpoints" ] && return
  t=$(date +%s)
  lmforge pretrain --config "${CONFIG:-bert-tiny}" --data "$WORK/$shards" --out "$WORK/$name" --overwrite \
    --set train.max_steps="$steps" --set train.eval_every="$steps" --set train.save_every="$steps" \
    --set train.batch_size=32 --set data.seq_len=128 --set train.eval_batches=40 --set train.log_every=50 \
    --set train.progress=false --set schedule.warmup_steps=$((steps / 10)) "$@"
  echo "$name $(( $(date +%s) - t )) s, $steps steps, $*" >> "$WORK/wall.txt"
}

# cramming's changes (Geiping & Goldstein 2022), added one at a time, each at half the plain budget
CRAM_1=(--set model.pre_norm=true)
CRAM_2=("${CRAM_1[@]}" --set model.dropout=0.0 --set model.attn_dropout=0.0)
CRAM_3=("${CRAM_2[@]}" --set mlm.cross_documents=true)
CRAM_4=("${CRAM_3[@]}" --set mlm.mask_prob=0.25)
PLAIN=${PLAIN:-3000}   # the plain recipe's budget in steps of 32 x 128 tokens
HALF=$((PLAIN / 2))

case $STAGE in
  data) data ;;
  plain) pretrain mlm general "$PLAIN" ;;
  plain-half) pretrain mlm-half general "$HALF" ;;
  # domain-adaptive: the plain run continued on the task's unlabeled text (phrases of ~13 tokens: packed)
  dapt) pretrain mlm-dapt domain "${DAPT:-1000}" --init-from "$WORK/mlm" --set mlm.cross_documents=true ;;
  # the task's unlabeled text alone, from random initialisation
  domain-only) pretrain mlm-domain domain "${DAPT:-1000}" --set mlm.cross_documents=true ;;
  cram1) pretrain cram1 general "$HALF" "${CRAM_1[@]}" ;;
  cram2) pretrain cram2 general "$HALF" "${CRAM_2[@]}" ;;
  cram3) pretrain cram3 general "$HALF" "${CRAM_3[@]}" ;;
  cram4) pretrain cram4 general "$HALF" "${CRAM_4[@]}" ;;
  cram5) pretrain cram5 general "$HALF" "${CRAM_4[@]}" --set schedule.warmup_steps=$((HALF / 2)) ;;
  cram6) pretrain cram6 general $((HALF / 4)) "${CRAM_4[@]}" --set schedule.warmup_steps=$((HALF / 8)) \
           --set train.batch_size=128 --set train.micro_batch_size=32 --set optim.lr=2e-3 ;;
  # ELECTRA-tiny (replaced-token detection) at the plain recipe's wall-clock budget: one step of 32 x 128
  # measured at 0.785x the tokens/s of bert-tiny's MLM step (12.6k against 16.0k, one thread, quiet)
  electra) CONFIG=electra-tiny pretrain electra general $((PLAIN * 785 / 1000)) ;;
  *) echo "unknown stage $STAGE" >&2; exit 2 ;;
esac

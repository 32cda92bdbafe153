#!/usr/bin/env bash
# BERT-tiny masked-LM pretraining on WikiText-2 for a fixed step budget on CPU.
#
# Pipeline: one document per paragraph line (the text kept as given: no cleaning, dedup or shuffling;
# blank lines dropped), an uncased WordPiece tokenizer trained on train.txt, shards with valid.txt as
# the validation split, `lmforge pretrain --config bert-tiny` (2 layers x 128 wide x 2 heads, seq 128,
# batch 32, dynamic 15% masking, AdamW lr 1e-3, linear decay) for MAX_STEPS steps, then `lmforge eval`
# (masked-token accuracy and MLM perplexity over all of valid.txt, with the fixed validation masks)
# and a few `lmforge fill-mask` probes.
#
# Usage: bench/bert_wikitext2.sh [DATA_DIR] [WORK_DIR] [MAX_STEPS] [VOCAB]
#   DATA_DIR holds train.txt and valid.txt (raw WikiText-2, one paragraph per line);
#   default ../shared/data/wikitext-2. MAX_STEPS defaults to 200 (about 13 minutes on a busy 2-core CPU),
#   VOCAB to 8192.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-../shared/data/wikitext-2}
WORK=${2:-bench/_work/bert-wikitext2}
STEPS=${3:-200}
VOCAB=${4:-8192}
mkdir -p "$WORK"

cat > "$WORK/corpus.toml" <<'TOML'
[corpus]
txt_mode = "line"
nfkc = false
strip_control = false
normalize_whitespace = false
min_chars = 2          # drops the blank lines (a single space each)
min_letter_ratio = 0.0
dedup_exact = false
dedup_near = false
scrub_pii = false
val_fraction = 0.0
shuffle_buffer = 1
TOML

# each file becomes its own corpus; valid.txt is then placed as the val split of the training corpus
for part in train valid; do
  lmforge corpus build --input "$DATA/$part.txt" --out "$WORK/corpus-$part" --config "$WORK/corpus.toml" \
    --overwrite --quiet
done
cp "$WORK/corpus-valid/train-00000.jsonl.zst" "$WORK/corpus-train/val-00000.jsonl.zst"

lmforge tokenizer train --corpus "$WORK/corpus-train" --kind wordpiece --vocab-size "$VOCAB" \
  --set tokenizer.lowercase=true --out "$WORK/tok" --overwrite --quiet
lmforge shards build --corpus "$WORK/corpus-train" --tokenizer "$WORK/tok" --out "$WORK/shards" --overwrite --quiet

start=$(date +%s)
lmforge pretrain --config bert-tiny --data "$WORK/shards" --out "$WORK/run" --overwrite \
  --set train.max_steps="$STEPS" --set train.eval_every="$STEPS" --set train.save_every="$STEPS" \
  --set train.log_every=50
echo "pretrain wall time: $(( $(date +%s) - start )) s for $STEPS steps"

echo "validation (all of valid.txt):"
lmforge eval "$WORK/run" --split val --out "$WORK/eval.json"

for text in "the [MASK] of the united states" "he was born in [MASK] ." "the game was released in [MASK] ." \
            "the river flows into the [MASK] ." "she was a member of the [MASK] party ."; do
  echo "fill-mask: $text"
  lmforge fill-mask "$WORK/run" "$text" --top-k 5
done

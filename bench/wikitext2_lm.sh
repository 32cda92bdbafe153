#!/usr/bin/env bash
# WikiText-2 word-level language modelling with the classic medium LSTM (preset rnn-lstm-wt2:
# 2 x 650 LSTM, tied embeddings, dropout 0.5, BPTT 35, batch 20, SGD lr 20, clip 0.25).
#
# Measures: validation and test perplexity of lmforge's truncated-BPTT training, evaluated the classic
# way (10 contiguous streams, the state carried across windows of 35), so the figures compare with the
# PyTorch word_language_model example and the literature (medium LSTM: about 100-110 test perplexity
# after 40 epochs), with the classic lr / 4 whenever an epoch's validation loss does not improve
# (schedule plateau, evaluated every 3,000 steps, about an epoch). Also throughput (tokens/s in
# RUN/metrics.jsonl). Differences from the classic preprocessing: blank lines are left out (the
# classic reader gives each its own <eos>: 12,951 extra, easy targets in train), so perplexities are
# slightly higher; everything else (text, <unk>, <eos> per line, vocabulary) is the same.
#
# Usage: bench/wikitext2_lm.sh [DATA_DIR] [WORK_DIR] [MAX_STEPS]
#   DATA_DIR holds train.txt, valid.txt, test.txt (raw WikiText-2 tokens, one paragraph per line);
#   default ../shared/data/wikitext-2. MAX_STEPS defaults to 6000 (about 2 epochs; about 20 minutes on
#   one recent GPU); 120000 is the full 40-epoch recipe.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-../shared/data/wikitext-2}
WORK=${2:-bench/_work/wikitext2}
STEPS=${3:-6000}
mkdir -p "$WORK"

# Keep the text exactly as given: one document per line, no cleaning, filtering, dedup or shuffling.
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
shuffle_buffer = 1     # a buffer of one keeps the order: the text must stay contiguous
TOML

# `corpus build` splits one input at random, so each file becomes its own corpus and the held-out
# files are placed as the val split of the corpus folders that shards are built from.
for part in train valid test; do
  lmforge corpus build --input "$DATA/$part.txt" --out "$WORK/corpus-$part" --config "$WORK/corpus.toml" \
    --overwrite --quiet
done
cp "$WORK/corpus-valid/train-00000.jsonl.zst" "$WORK/corpus-train/val-00000.jsonl.zst"
cp "$WORK/corpus-test/train-00000.jsonl.zst" "$WORK/corpus-test/val-00000.jsonl.zst"

# Every word of the training text (WikiText already wrote <unk> for rare ones); <eos> ends each line.
lmforge tokenizer train --corpus "$WORK/corpus-train" --kind word --vocab-size 100000 \
  --set tokenizer.min_frequency=1 --out "$WORK/tok" --overwrite --quiet
lmforge shards build --corpus "$WORK/corpus-train" --tokenizer "$WORK/tok" --out "$WORK/shards" --overwrite --quiet
lmforge shards build --corpus "$WORK/corpus-test" --tokenizer "$WORK/tok" --out "$WORK/shards-test" \
  --overwrite --quiet

lmforge pretrain --config rnn-lstm-wt2 --data "$WORK/shards" --out "$WORK/run" --overwrite \
  --set train.max_steps="$STEPS" --set train.eval_every=3000 --set train.save_every=3000 \
  --set train.eval_batches=0 --set train.log_every=100 --set schedule.name=plateau

echo "validation (all of valid.txt):"
lmforge eval "$WORK/run" --split val
echo "test (all of test.txt):"
lmforge eval "$WORK/run" --data "$WORK/shards-test" --split val

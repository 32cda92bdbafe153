#!/usr/bin/env bash
# WikiText-2 word-level language modelling: lmforge's LSTM baseline against a small GPT trained on the
# same word tokens for the same wall time, both on CPU, then validation and test perplexity of each.
#
# The two runs train AT THE SAME TIME, one torch thread each, so they see the same machine load (on a
# shared machine the budget buys whatever share of the cores the others leave; compare the two runs of
# one invocation, not figures across machines). `train.max_minutes` stops each after the first step past
# the budget, saves and evaluates as at the end.
#   LSTM: the rnn-lstm-wt2 recipe (tied embeddings, SGD lr 20, clip 0.25, batch 20, BPTT 35, lr / 4
#         whenever a validation loss does not improve) scaled down to 2 x 128 units, dropout 0.2.
#   GPT:  2 layers, 128 wide, 4 heads, context 64, batch 16, AdamW lr 2e-3 (warmup 30, cosine over
#         max_steps, which is set to about the steps the budget allows), dropout 0.1, tied embeddings.
# The 33,278-word output layer is most of the compute of both, so both are small.
#
# Evaluation: validation and test splits in full. The LSTM reads 10 contiguous streams, its state carried
# across windows of 35 (the classic protocol). The GPT reads non-overlapping windows of its context (64):
# a token sees 0-63 words of context, 32 on average, which is pessimistic next to a sliding window.
#
# Data: the text exactly as given, one document per line, blank lines included (each is one <eos>, as in
# the classic reader): 2,088,628 / 217,646 / 245,569 train / valid / test tokens, vocabulary 33,278 words
# (<unk> and <eos> included) plus 4 unused specials.
#
# Usage: bench/wikitext2_lm.sh [DATA_DIR] [WORK_DIR] [MINUTES]
#   DATA_DIR holds train.txt, valid.txt, test.txt (raw WikiText-2 tokens); default
#   ../shared/data/wikitext-2. MINUTES is the wall-clock budget of each run (default 15); with another
#   budget set GPT_STEPS (environment) to about the GPT steps that fit: its cosine schedule follows them.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-../shared/data/wikitext-2}
WORK=${2:-bench/_work/wikitext2}
MINUTES=${3:-15}
GPT_STEPS=${GPT_STEPS:-350}  # about what 15 one-thread minutes allow on a loaded 2-core machine
mkdir -p "$WORK"

# Keep the text exactly as given: every cleaning, filter, dedup and PII stage off, order kept.
cat > "$WORK/corpus.toml" <<'TOML'
[corpus]
txt_mode = "line"
nfkc = false
strip_control = false
normalize_whitespace = false
strip_html = false
min_chars = 0          # blank lines stay: each becomes one <eos>
max_chars = 1000000000
min_letter_ratio = 0.0
dedup_exact = false
dedup_near = false
scrub_pii = false
shuffle_buffer = 1     # a buffer of one keeps the order: the text must stay contiguous
TOML

lmforge corpus build --input "$DATA/train.txt" --val-input "$DATA/valid.txt" --test-input "$DATA/test.txt" \
  --out "$WORK/corpus" --config "$WORK/corpus.toml" --overwrite --quiet
# Every word of the training text (WikiText already wrote <unk> for rare ones); <eos> ends each line.
lmforge tokenizer train --corpus "$WORK/corpus" --kind word --vocab-size 100000 \
  --set tokenizer.min_frequency=1 --out "$WORK/tok" --overwrite --quiet
lmforge shards build --corpus "$WORK/corpus" --tokenizer "$WORK/tok" --out "$WORK/shards" --overwrite --quiet

COMMON=(--data "$WORK/shards" --overwrite --set runtime.num_threads=1 --set train.max_minutes="$MINUTES"
        --set train.log_every=20 --set train.eval_every=100 --set train.eval_batches=20
        --set train.save_every=0 --set train.progress=false)
lmforge pretrain --config rnn-lstm-wt2 --out "$WORK/lstm" "${COMMON[@]}" --set train.max_steps=100000 \
  --set model.d_embed=128 --set model.d_hidden=128 --set model.dropout=0.2 \
  > "$WORK/lstm.log" 2>&1 &
LSTM=$!
lmforge pretrain --config gpt-tiny --out "$WORK/gpt" "${COMMON[@]}" --set train.max_steps="$GPT_STEPS" \
  --set model.n_layer=2 --set model.d_model=128 --set model.n_head=4 --set model.context_len=64 \
  --set model.dropout=0.1 --set train.batch_size=16 --set optim.lr=2e-3 --set schedule.warmup_steps=30 \
  > "$WORK/gpt.log" 2>&1 &
GPT=$!
wait "$LSTM" "$GPT"
tail -n 1 "$WORK/lstm.log" "$WORK/gpt.log"

# The last checkpoint of each (the only one: save_every=0), over every window of each split; the two
# runs side by side again.
for run in lstm gpt; do
  for split in val test; do
    lmforge eval "$WORK/$run" --data "$WORK/shards" --split "$split" --checkpoint latest \
      --out "$WORK/$run/eval-$split.json" > /dev/null
  done &
done
wait
python - "$WORK" <<'PY'
import json, sys

import numpy as np

from lmforge.data import TokenShards

# The floor of "learned only word frequencies": a unigram model of train.txt, add-one smoothed.
train = TokenShards.open(f"{sys.argv[1]}/shards", "train")
vocab = json.load(open(f"{sys.argv[1]}/shards/manifest.json"))["vocab_size"]
counts = np.bincount(train.tokens(0, train.num_tokens), minlength=vocab) + 1.0
logp = np.log(counts / counts.sum())
for split in ("val", "test"):
    held = TokenShards.open(f"{sys.argv[1]}/shards", split)
    print(f"unigram: {split} ppl {np.exp(-logp[held.tokens(0, held.num_tokens)].mean()):.1f}")
for run in ("lstm", "gpt"):
    rows = [json.loads(l) for l in open(f"{sys.argv[1]}/{run}/metrics.jsonl")]
    last = [r for r in rows if "loss" in r][-1]
    ev = {s: json.load(open(f"{sys.argv[1]}/{run}/eval-{s}.json")) for s in ("val", "test")}
    print(f"{run}: {last['step']} steps, {last['tokens']:,} tokens, {last['elapsed'] / 60:.1f} min; "
          f"val ppl {ev['val']['perplexity']:.1f}, test ppl {ev['test']['perplexity']:.1f}")
PY

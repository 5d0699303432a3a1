#!/usr/bin/env bash
# The README's distillation evidence: a decoder-only teacher trained on synthqa with encore's own tools,
# distilled into a smaller encoder-decoder student (reverse KL, alpha 0.5, gold targets, online teacher),
# against the same student trained without KD (same data order, steps and seed). Validation EM / F1.
# Short worlds (max_entities=1: ~500-token contexts) keep it to ~45 min on a 2-core CPU.
# Usage: examples/synthqa_distill.sh [OUT]
set -euo pipefail
OUT=${1:-runs/synthqa_distill}
ENCORE=${ENCORE:-encore}
CFG=$(dirname "$0")/configs
TASK=(--task synthqa --task-option max_entities=1 --max-source-len 640 --max-target-len 16)
TRAIN=(--batch-size 16 --micro-batch-size 16 --seed 0)
EVAL=(--split validation --max-source-len 640 --max-new-tokens 16)

$ENCORE finetune --model $CFG/synthqa-teacher-deconly.json "${TASK[@]}" "${TRAIN[@]}" --max-steps 600 --lr 2e-2 \
  --out $OUT/teacher
$ENCORE eval --model $OUT/teacher/final "${TASK[@]:0:4}" "${EVAL[@]}" --out $OUT/teacher/validation.jsonl
$ENCORE finetune --model $CFG/synthqa-student-encdec.json --tokenizer $OUT/teacher/final "${TASK[@]}" "${TRAIN[@]}" \
  --max-steps 400 --lr 2e-2 --out $OUT/student-ce
$ENCORE eval --model $OUT/student-ce/final "${TASK[@]:0:4}" "${EVAL[@]}" --out $OUT/student-ce/validation.jsonl
$ENCORE distill --teacher $OUT/teacher/final --student $CFG/synthqa-student-encdec.json "${TASK[@]}" "${TRAIN[@]}" \
  --max-steps 400 --lr 2e-2 --alpha 0.5 --kind reverse_kl --targets gold --out $OUT/student-kd
$ENCORE eval --model $OUT/student-kd/final "${TASK[@]:0:4}" "${EVAL[@]}" --out $OUT/student-kd/validation.jsonl

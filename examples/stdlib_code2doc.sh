#!/usr/bin/env bash
# The README's small-scale result: pretrain a tiny encoder-decoder and a decoder-only model of matched
# size on the embedded stdlib corpus (same tokens), fine-tune both on code2doc (same examples, same
# steps), score both on the validation split. ~35 min on a 2-core CPU in all. Usage: examples/stdlib_code2doc.sh [OUT]
set -euo pipefail
OUT=${1:-runs/stdlib_code2doc}
ENCORE=${ENCORE:-encore}
for arch in encdec deconly; do
  $ENCORE pretrain --model $arch-tiny --data stdlib --seq-len 256 --max-steps 300 --batch-size 32 \
    --micro-batch-size 16 --lr 2e-2 --seed 0 --out $OUT/$arch-pretrain
  $ENCORE finetune --model $OUT/$arch-pretrain/final --task code2doc --max-source-len 384 --max-target-len 64 \
    --max-steps 300 --batch-size 32 --micro-batch-size 16 --lr 1e-2 --seed 0 --out $OUT/$arch-code2doc
  $ENCORE eval --model $OUT/$arch-code2doc/final --task code2doc --split validation --max-source-len 384 \
    --max-new-tokens 48 --out $OUT/$arch-code2doc/validation.jsonl
done

#!/usr/bin/env bash
# Produce the shipped Shapes bases (src/thinkpix/assets/shapes-t2i, shapes-class) and their scores.
# `make bases` runs this. Steps are resumable: rerunning continues from the last checkpoint.
# T2I_STEPS / T2I_CYCLE_ENDS / T2I_COOLDOWN_STEPS / CLASS_CYCLE_ENDS / CLASS_COOLDOWN_STEPS / THREADS override the
# budget (defaults: the shipped run).
set -euo pipefail
cd "$(dirname "$0")/.."
T2I_STEPS=${T2I_STEPS:-2000}      # phase 1: constant lr 1e-3, no EMA
# phase 2 (resumed): warmup-stable-decay cycles with an EMA (decay 0.999). Each cycle ends at one of these steps;
# it keeps lr 1e-3 until T2I_COOLDOWN_STEPS before its end, then decays linearly to 0. A later cycle jumps back
# to 1e-3 (lr is a pure function of the step, TrainConfig.lr_at). The EMA at the last end is shipped.
T2I_CYCLE_ENDS=${T2I_CYCLE_ENDS:-"9750 12750"}
T2I_COOLDOWN_STEPS=${T2I_COOLDOWN_STEPS:-1250}
# Class base: warmup-stable-decay cycles ending at these steps (lr 1e-3, the last CLASS_COOLDOWN_STEPS of each
# decaying linearly to 0); the EMA at the last end is shipped.
CLASS_CYCLE_ENDS=${CLASS_CYCLE_ENDS:-"3000 6000"}
CLASS_COOLDOWN_STEPS=${CLASS_COOLDOWN_STEPS:-1000}
export OMP_NUM_THREADS=${THREADS:-1} MKL_NUM_THREADS=${THREADS:-1}
TP=.venv/bin/thinkpix
OUT=runs/pretrain
mkdir -p "$OUT"

test -f $OUT/data-t2i/metadata.jsonl || $TP shapes make-dataset --out $OUT/data-t2i --n 20000 --seed 0 --variant caption --split train
test -d $OUT/data-class || $TP shapes make-dataset --out $OUT/data-class --n 20000 --seed 1 --variant class --split train

PROMPTS=(--validation-prompt "a photo of a red circle" --validation-prompt "a photo of two blue squares"
  --validation-prompt "a photo of a green triangle left of a yellow circle" --validation-prompt "a photo of a cyan diamond")
$TP pretrain --model mmdit-s --train-data-dir $OUT/data-t2i --output-dir $OUT/t2i --max-steps "$T2I_STEPS" \
  --batch-size 64 --checkpointing-steps 100 --validation-steps 300 --resume-from-checkpoint latest "${PROMPTS[@]}"
for END in $T2I_CYCLE_ENDS; do
  $TP pretrain --model mmdit-s --train-data-dir $OUT/data-t2i --output-dir $OUT/t2i --max-steps "$END" \
    --lr-scheduler linear --lr-decay-steps "$T2I_COOLDOWN_STEPS" \
    --ema-decay 0.999 --batch-size 64 --checkpointing-steps 250 --validation-steps 500 --resume-from-checkpoint latest \
    "${PROMPTS[@]}"
done
# Class base: rectified flow (DDIM noise prediction still drew noise after 1000 steps on this budget).
for END in $CLASS_CYCLE_ENDS; do
  $TP pretrain --model dit-s --scheduler flow --train-data-dir $OUT/data-class --output-dir $OUT/class-flow \
    --max-steps "$END" --lr-scheduler linear --lr-decay-steps "$CLASS_COOLDOWN_STEPS" --ema-decay 0.999 \
    --batch-size 64 --checkpointing-steps 200 --validation-steps 400 --resume-from-checkpoint latest
done

# Ship in fp16 (half the bytes in the repo); load_pipeline upcasts to fp32 on load.
ship() {
  .venv/bin/python -c "import sys, torch, thinkpix.pipelines as t; \
p = t.load_pipeline(sys.argv[1]); p.to(torch.float16); p.save_pretrained(sys.argv[2])" "$1" "$2"
}
rm -rf src/thinkpix/assets/shapes-t2i src/thinkpix/assets/shapes-class
mkdir -p src/thinkpix/assets
ship $OUT/t2i/pipeline src/thinkpix/assets/shapes-t2i
ship $OUT/class-flow/pipeline src/thinkpix/assets/shapes-class

# The noise levels where classifier-free guidance applies, chosen on training prompts and a selection seed
# (docs/results/guidance_interval.md) and written into the T2I base's model_index.json. The class base keeps
# guidance at every step, which its sweep chose.
.venv/bin/python -m benchmarks.guidance_interval --work $OUT/guidance-interval --ship t2i
# Shapes-GenEval and the class base's scores (docs/results/shapes_bases.md).
.venv/bin/python -m benchmarks.base_quality --work $OUT/base-quality

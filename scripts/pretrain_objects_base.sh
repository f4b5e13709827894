#!/usr/bin/env bash
# A text-to-image Shapes base that has never drawn a composition: pretrained on the `objects` recipe (single
# objects and colours only), as a base for a fine-tuning task with room to learn (docs/results/finetune_task.md:
# on the shipped base the compositional fine-tuning changes the loss by under 0.6%). Resumable: rerunning
# continues from the last checkpoint. The EMA of the last step is shipped in fp16 as `shapes-t2i-objects`
# (src/thinkpix/assets/shapes-t2i-objects), with the shipped base's guidance interval (not re-chosen: the
# interval sweep scores compositional prompts, which this base has never seen). CYCLE_ENDS / COOLDOWN_STEPS /
# THREADS override the budget: warmup-stable-decay cycles with an EMA, as the shipped base's, each keeping lr
# 1e-3 until COOLDOWN_STEPS before its end and decaying it linearly to 0 there. RECIPE=objects-pairs pretrains
# the same way on single objects, colours and two objects (runs/pretrain-objects-pairs, shipped as
# `shapes-t2i-objects-pairs`). NAME overrides the shipped name (default shapes-t2i-$RECIPE): give a longer
# schedule its own name, so that the shorter base it continues stays shipped as it was (a folder already past
# the schedule's end is refused: `make bases` trains the 7000-step base before the 12000-step one continues it).
set -euo pipefail
cd "$(dirname "$0")/.."
CYCLE_ENDS=${CYCLE_ENDS:-"4000 7000"}
COOLDOWN_STEPS=${COOLDOWN_STEPS:-1000}
export OMP_NUM_THREADS=${THREADS:-1} MKL_NUM_THREADS=${THREADS:-1}
TP=.venv/bin/thinkpix
RECIPE=${RECIPE:-objects}
NAME=${NAME:-shapes-t2i-$RECIPE}
OUT=runs/pretrain-$RECIPE
mkdir -p "$OUT"
# a run folder already past this schedule's end would ship its newer weights under this name (pretrain resumes
# the latest checkpoint and has nothing left to train; older checkpoints are pruned, so they cannot be rebuilt)
LAST_END=${CYCLE_ENDS##* }
AT=$( (ls "$OUT/t2i/checkpoints" 2>/dev/null || true) | sed -n 's/^checkpoint-\([0-9]*\)$/\1/p' | sort -n | tail -n 1)
if [ -n "$AT" ] && [ "$AT" -gt "$LAST_END" ]; then
  echo "pretrain_objects_base.sh: $OUT/t2i is at step $AT, past this schedule's end ($LAST_END): it cannot rebuild" \
    "$NAME; move $OUT away to train it from scratch" >&2
  exit 1
fi
test -f $OUT/data/metadata.jsonl || $TP shapes make-dataset --out $OUT/data --n 20000 --seed 0 --recipe "$RECIPE"
for END in $CYCLE_ENDS; do
  $TP pretrain --model mmdit-s --train-data-dir $OUT/data --output-dir $OUT/t2i --max-steps "$END" \
    --lr-scheduler linear --lr-decay-steps "$COOLDOWN_STEPS" --ema-decay 0.999 --batch-size 64 \
    --checkpointing-steps 250 --validation-steps 1000 --resume-from-checkpoint latest \
    --validation-prompt "a photo of a red circle" --validation-prompt "a photo of a cyan diamond"
done

.venv/bin/python - "$OUT/t2i/pipeline" "src/thinkpix/assets/$NAME" <<'PY'
import sys, torch, thinkpix.pipelines as t
pipe = t.load_pipeline(sys.argv[1])
pipe.register_to_config(guidance_interval=t.load_pipeline("shapes-t2i").config.guidance_interval)
pipe.to(torch.float16)
pipe.save_pretrained(sys.argv[2])
PY

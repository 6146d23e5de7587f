#!/usr/bin/env bash
# GPU checks of the trainer: an SD1.5-architecture model with random weights (no downloads),
# synthetic 512 px shards, DeepSpeed ZeRO-2 and ZeRO-3 in bf16, STEPS steps in two halves
# (checkpoint, resume=auto), export; then one table of samples/s, MFU and peak memory.
#
#   bash benchmarks/train_gpu.sh                        # all GPUs of this machine
#   STEPS=400 ARCH=sdxl RES=1024 bash benchmarks/train_gpu.sh
#
# Environment: PY (python), OUT (folder), STEPS, ARCH (sd15|sdxl), RES, BATCH (per GPU),
# BASE (default random:$ARCH), EXTRA (more key=value overrides, e.g. for a CPU smoke run).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-runs/gpu-check}
STEPS=${STEPS:-300}
ARCH=${ARCH:-sd15}
RES=${RES:-512}
BATCH=${BATCH:-2}
BASE=${BASE:-random:$ARCH}
HALF=$((STEPS / 2))

if [ ! -f "$OUT/shards/sizes.json" ]; then
  "$PY" -m train data synth "$OUT/shards" --samples 4000 --per-shard 500 --min-size "$RES" --max-size $((RES * 3 / 2))
fi
for stage in 2 3; do
  run="$OUT/zero$stage"
  args=(-c configs/sd15_segmentation.yaml -c "configs/deepspeed/zero$stage.yaml" "model.base=$BASE"
        "data.shards=$OUT/shards" "data.resolution=$RES" "data.batch_size=$BATCH" "output_dir=$run"
        logging.logger=csv samples.enabled=false "checkpoint.every_n_steps=$HALF" trainer.log_every_n_steps=25
        trainer.progress_bar=false ${EXTRA:-})
  "$PY" -m train fit "${args[@]}" "trainer.max_steps=$HALF"
  "$PY" -m train fit "${args[@]}" "trainer.max_steps=$STEPS"      # resume=auto: the second half
  "$PY" -m train export "$run" "$run/exported"
done
"$PY" benchmarks/summarize_runs.py "$OUT/zero2" "$OUT/zero3"

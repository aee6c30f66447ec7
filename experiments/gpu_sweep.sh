#!/usr/bin/env bash
# One device call: the prior sweep, one process per (category, configuration) sharing the GPU.
# Usage (device machine): OUT=<folder> bash experiments/gpu_sweep.sh
set -u
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name --format=csv,noheader
for category in brick grass gravel; do
  for config in s16c16b8 s16c8b16 s8c8b8; do
    python3 experiments/prior_sweep.py --category "$category" --data-root /tmp/data --out "$OUT/rows.jsonl" \
      --iterations 1000 --configs "$config" > "/tmp/log_${category}_$config.txt" 2>&1 &
  done
done
wait
grep -il error /tmp/log_*.txt && tail -n 5 $(grep -il error /tmp/log_*.txt)
wc -l "$OUT/rows.jsonl"

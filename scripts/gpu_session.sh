#!/usr/bin/env bash
# One GPU session in one device call (after scripts/gpu_prepare.sh here):
#   run(command="bash scripts/gpu_session.sh", carry=[".whl"], timeout_s=590)
# Installs what the machine lacks from .whl/, then runs scripts/gpu_session.py's phases (smoke,
# speed, campaign), each capped in time and writing its results under $OUT as it finishes; the
# whole log streams to $OUT/session.log.
#   DEVICE=cpu REHEARSAL=1 SKIP_INSTALL=1 OUT=/tmp/s bash scripts/gpu_session.sh   # the rehearsal, on the CPU
set -uo pipefail
export OUT=${OUT:-/tmp/gpu_session}; mkdir -p "$OUT"
export DEVICE=${DEVICE:-cuda} PYTHONUNBUFFERED=1
exec > >(tee -a "$OUT/session.log") 2>&1
cd "$(dirname "$0")/.."
echo "=== machine ($(date +%T))"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.device_count(), 'GPU(s)')"
if [ -z "${SKIP_INSTALL:-}" ]; then
  echo "=== install ($(date +%T))"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
  python3 -m pip install -q --no-deps --no-build-isolation --no-cache-dir --target /tmp/site . || exit 1
  export PATH=/tmp/site/bin:$PATH
  mkdir -p data/MNIST/raw && cp .whl/MNIST/raw/*.gz data/MNIST/raw/
fi
python3 scripts/gpu_session.py
echo "=== done ($(date +%T))"

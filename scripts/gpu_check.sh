#!/usr/bin/env bash
# The GPU checks in one call of a few minutes (after scripts/gpu_prepare.sh here):
#   run(command="bash scripts/gpu_check.sh", carry=[".whl"], timeout_s=540)
# Installs what the machine lacks from .whl/, then, each step logged to $OUT/check.log:
#   1. the gpu-marked tests;
#   2. a short trainer.device=cuda run of every sensitivity variant (fp32) and of spec in bf16,
#      fp16 and with torch.compile, each checked by `sensreg eval` of its model.pt on the device;
#   3. 2-process NCCL training where the machine has 2 GPUs (else it says so);
#   4. scripts/bench_train.py (LeNet-300-100, LeNet-5, ResNet-50 bf16) -> $OUT/bench_train.json.
# DEVICE=cpu SKIP_INSTALL=1 bash scripts/gpu_check.sh tries the script out without a GPU.
set -uo pipefail
OUT=${OUT:-/tmp/gpu_check}; mkdir -p "$OUT"
DEVICE=${DEVICE:-cuda}
LOG="$OUT/check.log"
exec > >(tee -a "$LOG") 2>&1
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.."
step() { echo; echo "=== $* ($(date +%T))"; }

step "machine"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.device_count(), 'GPU(s)')"

step "install"
if [ -z "${SKIP_INSTALL:-}" ]; then
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site
python3 -m pip install -q --no-deps --no-build-isolation --no-cache-dir --target /tmp/site . || exit 1
export PATH=/tmp/site/bin:$PATH
mkdir -p data/MNIST/raw && cp .whl/MNIST/raw/*.gz data/MNIST/raw/
fi

step "gpu-marked tests"
timeout 240 python3 -m pytest -m gpu -q -p no:cacheprovider tests 2>&1 | tee "$OUT/gpu_tests.log" | tail -30

step "a short CUDA run of every variant and precision, each checked by sensreg eval"
RUN=(~experiment data=mnist model=lenet300 trainer.epochs=2 trainer.device=$DEVICE prune.patience=0 trainer.progress=false)
check() {  # NAME OVERRIDES...
  local name=$1; shift
  local dir="/tmp/gpu_runs/$name"
  if timeout 120 python3 -m sensreg train "${RUN[@]}" "$@" "hydra.run.dir=$dir" > "/tmp/gpu_runs_$name.log" 2>&1 \
     && python3 -m sensreg eval "$dir/model.pt" trainer.device=$DEVICE --json > "/tmp/gpu_eval_$name.json" 2>&1; then
    python3 - "$name" "$dir" "/tmp/gpu_eval_$name.json" <<'PY'
import json, sys
name, run, ev = sys.argv[1], sys.argv[2], json.load(open(sys.argv[3]))
s = json.load(open(f"{run}/summary.json"))
print(f"{name:<14} ok  test error {100 * s['test_error']:.2f} %  remaining {s['remaining_pct']:.2f} %  "
      f"{s['wall_time_s']:.1f} s  eval matches summary: {ev.get('matches_summary', ev)}")
PY
  else
    echo "$name FAILED:"; tail -15 "/tmp/gpu_runs_$name.log"
  fi
}
for v in none l2 loss spec unspec; do check "$v" "sens=$v"; done
check spec_sample sens=spec sens.reduction=sample
check spec_bf16 sens=spec trainer.precision=bf16
check spec_fp16 sens=spec trainer.precision=fp16
check spec_compile sens=spec trainer.compile=true

step "2-process NCCL training"
if [ "$(python3 -c 'import torch; print(torch.cuda.device_count())')" -ge 2 ]; then
  timeout 180 torchrun --standalone --nproc_per_node=2 -m sensreg train "${RUN[@]}" sens=spec hydra.run.dir=/tmp/gpu_runs/ddp \
    && python3 -c "import json; s=json.load(open('/tmp/gpu_runs/ddp/summary.json')); print('ddp', s['status'], s['test_error'])"
else
  echo "this machine has fewer than 2 GPUs: 2-process NCCL training was not run"
fi

step "benchmark"
timeout 240 python3 scripts/bench_train.py --device "$DEVICE" ${BENCH_ARGS:-} --json "$OUT/bench_train.json"
step "done"

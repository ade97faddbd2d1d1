#!/usr/bin/env bash
# Rerun every MNIST reference preset over seeds 0, 1 and 2, check that each model.pt
# re-evaluates to its summary, and compare the runs (table, plot, README results table).
#
#   scripts/reproduce_mnist.sh                  # into outputs/reproduce/
#   scripts/reproduce_mnist.sh outputs/reference lenet300_spec lenet300_l2   # chosen presets
#
# The committed results in outputs/reference/ came from this script. Runtimes on a 2-core CPU:
# about 2-5 minutes per LeNet-300-100 run and 10-25 minutes per LeNet-5 run (see docs/tuning.md).
set -euo pipefail

out=${1:-outputs/reproduce}
shift || true
presets=("$@")
if [ ${#presets[@]} -eq 0 ]; then
  presets=(lenet300_spec lenet300_unspec lenet300_loss lenet300_l2
           lenet5_spec lenet5_unspec lenet5_loss lenet5_l2)
fi

for preset in "${presets[@]}"; do
  sensreg train -m "experiment=$preset" trainer.seed=0,1,2 \
    "hydra.sweep.dir=$out/$preset" 'hydra.sweep.subdir=seed${trainer.seed}'
  for run in "$out/$preset"/seed*; do
    sensreg eval "$run" --json | python -c \
      'import json, sys; r = json.load(sys.stdin); sys.exit(0 if r["matches_summary"] else f"{sys.argv[1]}: eval differs from summary.json")' "$run"
  done
done

sensreg compare "$out" --group
python "$(dirname "$0")/results_table.py" "$out" > "$out/results.md"
cat "$out/results.md"

#!/usr/bin/env bash
# Rerun the MNIST reference runs over seeds 0, 1 and 2, check that each model.pt re-evaluates
# to its summary, and compare the runs (table, plots, README results table).
#
#   scripts/reproduce_mnist.sh                                    # everything, into outputs/reproduce/
#   scripts/reproduce_mnist.sh outputs/reference lenet300_spec    # chosen runs, into the given folder
#   EXTRA='trainer.epochs=1' scripts/reproduce_mnist.sh /tmp/try lenet300_spec   # extra overrides for every run
#
# The committed results in outputs/reference/ came from this script's runs. Runtimes on a 2-core
# CPU, one thread a run: 2.5 minutes per 60-epoch LeNet-300-100 run (6 for unspec), 6-9 per
# 200-epoch one (lenet300_long_*) on an AMD EPYC, 5-12 per LeNet-5 run (about twice that for
# unspec); see docs/tuning.md.
set -euo pipefail

# folder | overrides. The presets, two more points on the error-sparsity curves of spec and of
# the l2 control, so that the two can be compared at about equal error, and the magnitude-pruning
# baselines (prune=gmp, no regularizer) at the spec presets' budget and compression (README "Results").
RUNS=(
  "lenet300_dense|experiment=lenet300_dense"
  "lenet300_spec|experiment=lenet300_spec"
  "lenet300_unspec|experiment=lenet300_unspec"
  "lenet300_loss|experiment=lenet300_loss"
  "lenet300_l2|experiment=lenet300_l2"
  "lenet300_spec_lam5e-4|experiment=lenet300_spec sens.lam=5e-4"
  "lenet300_l2_lam2e-3|experiment=lenet300_l2 sens.lam=2e-3"
  "lenet300_gmp|experiment=lenet300_gmp"
  "lenet300_neuron|experiment=lenet300_neuron"
  "lenet300_gmp_units|experiment=lenet300_gmp_units"
  "lenet300_long_spec|experiment=lenet300_long_spec"
  "lenet300_long_l2|experiment=lenet300_long_l2"
  "lenet300_long_gmp|experiment=lenet300_long_gmp"
  "lenet300_long80_spec|experiment=lenet300_long80_spec"
  "lenet300_long80_l2|experiment=lenet300_long80_l2"
  "lenet300_long80_gmp|experiment=lenet300_long80_gmp"
  "lenet5_dense|experiment=lenet5_dense"
  "lenet5_dense_start|experiment=lenet5_dense_start"
  "lenet5_spec|experiment=lenet5_spec"
  "lenet5_unspec|experiment=lenet5_unspec"
  "lenet5_loss|experiment=lenet5_loss"
  "lenet5_l2|experiment=lenet5_l2"
  "lenet5_gmp|experiment=lenet5_gmp"
  "lenet5_neuron|experiment=lenet5_neuron"
  "lenet5_gmp_units|experiment=lenet5_gmp_units"
  # 200 epochs from the dense start (about 75-130 minutes a run on one thread; seed 0 committed)
  "lenet5_long_gmp|experiment=lenet5_long_gmp"
  "lenet5_long_spec|experiment=lenet5_long_spec"
  "lenet5_long_l2|experiment=lenet5_long_l2"
  "lenet5_long_gmp_units|experiment=lenet5_long_gmp_units"
  "lenet5_long_neuron|experiment=lenet5_long_neuron"
)

out=${1:-outputs/reproduce}
shift || true
for entry in "${RUNS[@]}"; do
  name=${entry%%|*}
  overrides=${entry#*|}
  if [ $# -gt 0 ] && [[ ! " $* " =~ " $name " ]]; then
    continue
  fi
  # shellcheck disable=SC2086  # the overrides are meant to split into words
  sensreg train -m $overrides trainer.seed=0,1,2 ${EXTRA:-} "hydra.sweep.dir=$out/$name" 'hydra.sweep.subdir=seed${trainer.seed}'
  for run in "$out/$name"/seed*; do
    sensreg eval "$run" --json | python -c \
      'import json, sys; r = json.load(sys.stdin); sys.exit(0 if r["matches_summary"] else f"{sys.argv[1]}: eval differs from summary.json")' "$run"
  done
done

sensreg compare "$out" --group
python "$(dirname "$0")/results_table.py" "$out" > "$out/results.md"
cat "$out/results.md"

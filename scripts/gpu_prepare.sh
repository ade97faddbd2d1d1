#!/usr/bin/env bash
# Run here, before scripts/gpu_session.sh goes to a GPU machine: puts into .whl/ (git-ignored) the
# wheels that machine lacks (Python 3.12 there) and the four MNIST archives, so that the device
# call carries only `.whl`.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl/MNIST/raw
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform any -d .whl hydra-core==1.3.2 omegaconf==2.3.0
# antlr4's runtime is published as a source archive only: built here into a pure-Python wheel.
python3 -m pip wheel -q --no-deps -w .whl antlr4-python3-runtime==4.9.3
cp data/MNIST/raw/*.gz .whl/MNIST/raw/
du -sh .whl

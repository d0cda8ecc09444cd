#!/usr/bin/env bash
# FuseGuard's `paper` profile on a GPU machine that has no network (issue 11): training and scoring
# windows/s, peak GPU memory, and bf16 autocast against fp32, in one command.
#
# GPT-2's weights (548 MB) cannot travel to such a machine, so the benchmark builds GPT-2 small's
# architecture from its default config with seeded random weights (`bench train --random-backbone`):
# the compute and the memory are the real model's, the detection is not (and the JSON says so).
# The machine's own Python holds torch, transformers, peft and numpy; polars travels as wheels.
#
#   bash scripts/device_paper_profile.sh prepare      # here: polars wheels for Python 3.12 into .whl/
#   bash scripts/device_paper_profile.sh run OUT      # there (.whl carried): install, benchmark, JSON into OUT
#
# With the device tool: run(command="bash scripts/device_paper_profile.sh run $OUT", carry=[".whl"],
# timeout_s=600). Not yet run on a GPU (none lent so far); on this CPU, WINDOWS=16 runs it end to end.
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
  prepare)
    py=python3
    [ -x .venv/bin/python ] && py=.venv/bin/python
    version=$("$py" -c 'import importlib.metadata as m; print(m.version("polars"))')
    rm -rf .whl && mkdir -p .whl
    for name in polars polars-runtime-32; do
      python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl "$name==$version"
    done
    du -sh .whl
    ;;
  run)
    out=${2:?"usage: $0 run OUT"}
    mkdir -p "$out"
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
    (nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || echo "no nvidia-smi") | tee "$out/gpu.txt"
    python3 -c 'import torch, transformers, peft; print(torch.__version__, transformers.__version__, peft.__version__)' \
      | tee -a "$out/gpu.txt"
    # WINDOWS windows of 96 steps (1,024); on CUDA both runs, bf16 autocast then fp32, in one process
    python3 -m stages.bench train --detector fuseguard --profile paper --random-backbone --windows "${WINDOWS:-1024}" \
      --epochs 2 --batch-size 32 2>&1 | tee "$out/bench.log"
    cp bench/train_fuseguard_paper.json "$out/"
    ;;
  *)
    echo "usage: $0 prepare | run OUT" >&2
    exit 2
    ;;
esac

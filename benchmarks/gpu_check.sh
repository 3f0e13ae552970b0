#!/usr/bin/env bash
# The GPU check, for a machine with one NVIDIA GPU (run it whenever one is lent; never a test's dependency):
#   bash benchmarks/gpu_check.sh [OUT_DIR]
# 1. the GPU tests (tests/distributed/test_gpu.py: every stage's tensors on the GPU, bf16 autocast);
# 2. benchmarks/gpu_check.py: every stage with a GPT-2-medium-shaped model (355M), full-parameter and LoRA, on the GPU
#    in bf16: seconds, tokens/s and peak memory per stage, written to OUT_DIR/gpu_check_355m.json.
# The machine needs torch with CUDA, transformers, accelerate, peft, pydantic, pyyaml and pytest. Wheels of what is
# missing can be carried in .whl/ (see the device tool's notes); they are installed into /tmp/site first.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-benchmarks/results}}"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -m pytest tests/distributed/test_gpu.py -q -p no:cacheprovider -n 0 -o addopts="" 2>&1 | tee "$out/gpu_tests.log"
python3 benchmarks/gpu_check.py --shape 355m --variants full lora --out "$out" 2>&1 | tee "$out/gpu_check.log"

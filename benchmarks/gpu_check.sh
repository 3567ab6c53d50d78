#!/usr/bin/env bash
# One prepared GPU check (H100/H200-class, one GPU, no network, no Ray):
#   1) DPO step on the Qwen2.5-1.5B shape, ours vs a plain PyTorch loop (benchmarks/gpu_train.py)
#   2) with SAMPLING=1, the HF sampling backend on the same shape (benchmarks/gpu_sampling.py)
# Wheels for deepspeed/pydantic/math-verify come from ../shared/gpu/wheelhouse.sh, built into .whl/.
# Usage: OUT=/some/dir bash benchmarks/gpu_check.sh
set -uo pipefail
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, transformers, deepspeed; print('torch', torch.__version__, 'transformers', transformers.__version__, 'deepspeed', deepspeed.__version__)" 2>&1 | tail -1 | tee -a "$OUT/gpu.txt"
# rows: plain loop, ours as configured by default, then single changes aimed at the ZeRO-2 gap and the
# kernels (see docs/benchmarks.md); --profile writes where the device time goes, plain vs ours
timeout 520 python3 benchmarks/gpu_train.py --out "$OUT/gpu_train.json" --profile 3 \
  --variant 'compile:{"compile": true}' \
  --variant 'one bucket:{"deepspeed": {"zero_optimization": {"reduce_bucket_size": 2e9, "allgather_bucket_size": 2e9}}}' \
  --variant 'no contiguous grads:{"deepspeed": {"zero_optimization": {"contiguous_gradients": false}}}' \
  --variant 'compile + one bucket:{"compile": true, "deepspeed": {"zero_optimization": {"reduce_bucket_size": 2e9, "allgather_bucket_size": 2e9}}}' \
  2>&1 | tee "$OUT/gpu_train.log" | grep -v Warning
# the sampling figure is already recorded; SAMPLING=1 measures it again
if [ "${SAMPLING:-0}" = 1 ]; then
  timeout 150 python3 benchmarks/gpu_sampling.py --out "$OUT/gpu_sampling.json" 2>&1 | tee "$OUT/gpu_sampling.log" | grep -v Warning
fi

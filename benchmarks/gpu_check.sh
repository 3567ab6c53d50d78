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
# rows: plain loop and ours as configured by default; then where the device time goes (--profile);
# then single changes aimed at the ZeRO-2 gap and the kernels (docs/benchmarks.md). Each runs in a
# process of its own, so no engine of an earlier row holds GPU memory or skews the allocator.
timeout 150 python3 benchmarks/gpu_train.py --out "$OUT/gpu_train.json" 2>&1 | tee "$OUT/gpu_train.log" | grep -v Warning
timeout 150 python3 benchmarks/gpu_train.py --skip-plain --skip-default --profile 3 --out "$OUT/gpu_profile.json" \
  2>&1 | tee -a "$OUT/gpu_train.log" | grep -v Warning
i=0
for v in 'compile:{"compile": true}' \
         'one bucket:{"deepspeed": {"zero_optimization": {"reduce_bucket_size": 2e9, "allgather_bucket_size": 2e9}}}' \
         'compile + one bucket:{"compile": true, "deepspeed": {"zero_optimization": {"reduce_bucket_size": 2e9, "allgather_bucket_size": 2e9}}}'; do
  i=$((i + 1))
  timeout 150 python3 benchmarks/gpu_train.py --skip-plain --skip-default --variant "$v" \
    --out "$OUT/gpu_train_variant$i.json" 2>&1 | tee -a "$OUT/gpu_train.log" | grep -v Warning
done
# the sampling figure is already recorded; SAMPLING=1 measures it again
if [ "${SAMPLING:-0}" = 1 ]; then
  timeout 150 python3 benchmarks/gpu_sampling.py --out "$OUT/gpu_sampling.json" 2>&1 | tee "$OUT/gpu_sampling.log" | grep -v Warning
fi

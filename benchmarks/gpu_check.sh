#!/usr/bin/env bash
# One prepared GPU check (H100/H200-class, one GPU, no network, no Ray):
#   1) DPO step on the Qwen2.5-1.5B shape, ours vs a plain PyTorch loop (benchmarks/gpu_train.py)
#   2) with SAMPLING=1, the HF sampling backend on the same shape (benchmarks/gpu_sampling.py)
# Wheels for deepspeed/pydantic/math-verify come from ../shared/gpu/wheelhouse.sh, built into .whl/.
# Usage: OUT=/some/dir bash benchmarks/gpu_check.sh
# A dry run of every row on CPU, tiny model (checks the script, measures nothing):
#   WHEELS= OUT=/tmp/dry GPU_TRAIN_ARGS="--preset micro --device cpu --steps 2 --warmup 1 --pairs 4 --seq 64" bash benchmarks/gpu_check.sh
set -uo pipefail
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
WHEELS=${WHEELS-.whl}  # WHEELS= (empty): use what this python has
if [ -n "$WHEELS" ] && [ -d "$WHEELS" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
read -r -a EXTRA <<< "${GPU_TRAIN_ARGS:-}"
(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || echo "no GPU") | tee "$OUT/gpu.txt"
python3 -c "import torch, transformers, deepspeed; print('torch', torch.__version__, 'transformers', transformers.__version__, 'deepspeed', deepspeed.__version__)" 2>&1 | tail -1 | tee -a "$OUT/gpu.txt"
# rows: plain loop and ours as configured by default; then single changes aimed at the ZeRO-2 gap
# and the kernels, most likely first; then where the device time goes (--profile); then the changes
# together. Each runs in a process of its own, so no engine of an earlier row holds GPU memory or
# skews the allocator, and a timeout keeps every row already written (docs/benchmarks.md).
#   compile      torch.compile of each decoder layer and of the log-softmax chunk
#   fp32 accum   DeepSpeed's fp32 gradient partition (data_types.grad_accum_dtype): gradients are
#                reduced straight into fp32, with no flatten + cast of all of them at the step
#   bf16 states  bf16 master weights and Adam states: the plain loop's precision under DeepSpeed,
#                to tell the fp32 optimiser traffic apart from the rest of ZeRO-2's overhead
#   one bucket   one reduce / all-gather bucket for the whole model
timeout 150 python3 benchmarks/gpu_train.py "${EXTRA[@]}" --out "$OUT/gpu_train.json" 2>&1 | tee "$OUT/gpu_train.log" | grep -v Warning
i=0
variant() {
  i=$((i + 1))
  timeout "$1" python3 benchmarks/gpu_train.py "${EXTRA[@]}" --skip-plain --skip-default --variant "$2" \
    --out "$OUT/gpu_train_variant$i.json" 2>&1 | tee -a "$OUT/gpu_train.log" | grep -v Warning
}
variant 200 'compile:{"compile": true}'
variant 100 'fp32 accum:{"deepspeed": {"data_types": {"grad_accum_dtype": "fp32"}}}'
variant 100 'bf16 states:{"deepspeed": {"bf16": {"bf16_master_weights_and_grads": true, "bf16_optimizer_states": true}}}'
timeout 150 python3 benchmarks/gpu_train.py "${EXTRA[@]}" --skip-plain --skip-default --profile 3 --out "$OUT/gpu_profile.json" \
  2>&1 | tee -a "$OUT/gpu_train.log" | grep -v Warning
variant 100 'one bucket:{"deepspeed": {"zero_optimization": {"reduce_bucket_size": 2e9, "allgather_bucket_size": 2e9}}}'
variant 200 'compile + fp32 accum + one bucket:{"compile": true, "deepspeed": {"data_types": {"grad_accum_dtype": "fp32"}, "zero_optimization": {"reduce_bucket_size": 2e9, "allgather_bucket_size": 2e9}}}'
python3 benchmarks/gpu_train.py --table "$OUT"/gpu_train.json "$OUT"/gpu_train_variant*.json 2>&1 | tee "$OUT/gpu_table.txt"
# the sampling figure is already recorded; SAMPLING=1 measures it again
if [ "${SAMPLING:-0}" = 1 ]; then
  timeout 150 python3 benchmarks/gpu_sampling.py --out "$OUT/gpu_sampling.json" 2>&1 | tee "$OUT/gpu_sampling.log" | grep -v Warning
fi

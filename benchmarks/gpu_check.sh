#!/usr/bin/env bash
# One prepared GPU check (H100/H200-class, one GPU, no network, no Ray):
#   1) DPO step on the Qwen2.5-1.5B shape, ours vs a plain PyTorch loop (benchmarks/gpu_train.py)
#   2) with SAMPLING=1, the HF sampling backend on the same shape (benchmarks/gpu_sampling.py)
# Wheels for deepspeed/pydantic/math-verify come from ../shared/gpu/wheelhouse.sh, built into .whl/.
# Usage: OUT=/some/dir [DEADLINE=seconds] [ROWS="plain all profile ..."] bash benchmarks/gpu_check.sh
# Rows run in the order given while time is left before DEADLINE (default 540 s): a row that would
# not fit is skipped, and every row already measured is kept (one process and one JSON a row).
# A dry run of every row on CPU, tiny model (checks the script, measures nothing):
#   WHEELS= OUT=/tmp/dry GPU_TRAIN_ARGS="--preset micro --device cpu --steps 2 --warmup 1 --pairs 4 --seq 64" bash benchmarks/gpu_check.sh
set -uo pipefail
OUT=${OUT:-/tmp/gpu_out}
DEADLINE=${DEADLINE:-540}
ROWS=${ROWS:-"plain compile_norecomp classic_best profile compile classic compile_nocoal compile_bf16states nocoal norecomp fp32accum bucket all"}
mkdir -p "$OUT/rows"
WHEELS=${WHEELS-.whl}  # WHEELS= (empty): use what this python has
if [ -n "$WHEELS" ] && [ -d "$WHEELS" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
read -r -a EXTRA <<< "${GPU_TRAIN_ARGS:-}"
(nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || echo "no GPU") | tee "$OUT/gpu.txt"
python3 -c "import torch, transformers, deepspeed; print('torch', torch.__version__, 'transformers', transformers.__version__, 'deepspeed', deepspeed.__version__)" 2>&1 | tail -1 | tee -a "$OUT/gpu.txt"

# The rows. hsdpo rows are DPOConfig changes over the default (ZeRO-2, bf16, cached reference):
#   compile     torch.compile of each decoder layer and of the log-softmax chunk
#   nocoal      coalesce_grad_reduction=false: ZeRO-2's per-parameter gradient hooks during backward
#               (the default reduces once after backward in a world of one)
#   norecomp    logp_recompute=false: backward keeps each LM-head chunk's log-softmax instead of
#               running the chunk's forward again
#   fp32accum   DeepSpeed's fp32 gradient partition (data_types.grad_accum_dtype): gradients are
#               reduced straight into fp32, with no flatten + cast of all of them at the step
#   bucket      one reduce / all-gather bucket for the whole model
#   bf16states  bf16 master weights and Adam states: the plain loop's precision under DeepSpeed, a
#               diagnostic that tells the fp32 optimiser traffic apart from the rest of ZeRO-2's cost
#   all         compile + norecomp + fp32accum + bucket
#   compile_X   compile and X together
#   classic     fused_clip=false and DeepSpeed's throughput timer on: DeepSpeed's per-parameter
#               gradient norm and bf16 inf/NaN check (read on the host before each step) and the
#               timer's device synchronize at every forward and step -- the default before fused_clip
#   classic_best compile + norecomp, classic: the best row of the runs before fused_clip
ALL='{"compile": true, "logp_recompute": false, "deepspeed": {"data_types": {"grad_accum_dtype": "fp32"}, "zero_optimization": {"reduce_bucket_size": 2e9, "allgather_bucket_size": 2e9}}}'
declare -A VARIANT=(
  [compile]='{"compile": true}'
  [norecomp]='{"logp_recompute": false}'
  [fp32accum]='{"deepspeed": {"data_types": {"grad_accum_dtype": "fp32"}}}'
  [bucket]='{"deepspeed": {"zero_optimization": {"reduce_bucket_size": 2e9, "allgather_bucket_size": 2e9}}}'
  [bf16states]='{"deepspeed": {"bf16": {"bf16_master_weights_and_grads": true, "bf16_optimizer_states": true}}}'
  [all]="$ALL"
  [nocoal]='{"coalesce_grad_reduction": false}'
  [compile_nocoal]='{"compile": true, "coalesce_grad_reduction": false}'
  [compile_norecomp]='{"compile": true, "logp_recompute": false}'
  [classic]='{"fused_clip": false, "deepspeed": {"timers": {"throughput": {"enabled": true}}}}'
  [classic_best]='{"compile": true, "logp_recompute": false, "fused_clip": false, "deepspeed": {"timers": {"throughput": {"enabled": true}}}}'
  [compile_bf16states]='{"compile": true, "deepspeed": {"bf16": {"bf16_master_weights_and_grads": true, "bf16_optimizer_states": true}}}'
)
# seconds a row is given (and needs left before DEADLINE to start)
declare -A BUDGET=([plain]=200 [profile]=110 [compile]=90 [all]=100 [compile_nocoal]=90 [compile_norecomp]=90 [compile_bf16states]=90 [classic_best]=90 [classic]=60 [norecomp]=60 [nocoal]=60 [fp32accum]=60 [bucket]=60 [bf16states]=60)

row() {  # row NAME: run it if it fits
  local name=$1 need=${BUDGET[$1]:-60} left=$((DEADLINE - SECONDS))
  if [ "$left" -lt "$need" ]; then echo "skip $name: ${left}s left, needs ${need}s"; return; fi
  case $name in
    plain)   # the plain loop, hsdpo as configured by default, the plain loop under torch.compile
      set -- --plain-compile --out "$OUT/rows/0_plain.json" ;;
    profile) # where device and host time go: 3 steps each of the plain loop and of hsdpo's best so far
      set -- --skip-plain --skip-default --profile 3 --profile-changes "${VARIANT[compile_norecomp]}" --out "$OUT/rows/profile.json" ;;
    *)
      set -- --skip-plain --skip-default --variant "$name:${VARIANT[$name]}" --out "$OUT/rows/1_$name.json" ;;
  esac
  timeout "$need" python3 benchmarks/gpu_train.py "${EXTRA[@]}" "$@" 2>&1 | tee -a "$OUT/gpu_train.log" | grep -v Warning
}
for r in $ROWS; do row "$r"; done
mv "$OUT"/rows/profile.profile_*.txt "$OUT"/ 2>/dev/null
if ls "$OUT"/rows/[0-9]_*.json >/dev/null 2>&1; then
  python3 benchmarks/gpu_train.py --table "$OUT"/rows/[0-9]_*.json 2>&1 | tee "$OUT/gpu_table.txt"
fi
# the sampling figure is already recorded; SAMPLING=1 measures it again
if [ "${SAMPLING:-0}" = 1 ]; then
  timeout 150 python3 benchmarks/gpu_sampling.py --out "$OUT/rows/gpu_sampling.json" 2>&1 | tee "$OUT/gpu_sampling.log" | grep -v Warning
fi
# few files come back from some machines: the per-row JSON in one archive
tar czf "$OUT/rows.tgz" -C "$OUT" rows && rm -rf "$OUT/rows"
echo "gpu_check done in ${SECONDS}s"

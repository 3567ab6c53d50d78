"""All DeepSpeed and torch.distributed code: process group, DeepSpeed config and engine, checkpoint
save/load, ZeRO-3 consolidation and the plain-HF export. Nothing else in hsdpo imports either.

Same code on a laptop CPU (gloo, fp32) and on GPU nodes (NCCL, bf16). Under Ray Train the process
group already exists; as a plain process (`benchmarks/gpu_train.py`) `init_distributed` creates a
world of one from MASTER_ADDR/MASTER_PORT/RANK/WORLD_SIZE (defaults: localhost, one rank).

Optimiser: a client `torch.optim.AdamW` (fused on CUDA) and a warmup + cosine `LambdaLR`, handed
to `deepspeed.initialize`, so no DeepSpeed op is compiled at start (nor, on CPU, the comm backend's:
`skip_shm_comm_op`); with `offload=True` DeepSpeed's own CPU Adam is used instead (ZeRO-Offload
needs it; also on a CPU-only machine). DeepSpeed compiles that op on first use (a C++ compiler and
ninja; a few minutes, then cached in ~/.cache/torch_extensions, once for each environment).

Clipping (`fused_clip`, ZeRO-2 without offload): DeepSpeed hands the optimizer one flat fp32
gradient partition per rank, so the global norm is one reduction over it (and one all-reduce of a
scalar across ranks); the clip factor and the inf/NaN skip go into the fused AdamW kernel as its
`grad_scale` and `found_inf` (the arguments torch's GradScaler uses), all on the device. DeepSpeed's
own path takes a norm per parameter and, under bf16, tests every gradient for inf/NaN, then reads
both results back to the host: with the 338 tensors of Qwen2.5-1.5B about 5,100 small kernels and
four device reads a step (`benchmarks/step_overhead.py`).
DeepSpeed's throughput timer, which synchronises the device at every forward and step, is off.

Checkpoints: `engine.save_checkpoint` (every rank writes its shard). A checkpoint written by N ranks
resumes on M != N ranks through DeepSpeed's universal checkpoint: each node's local rank 0 converts
it (`ds_to_universal`) into a scratch folder of its own, and the engine is built with `load_universal`.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
from datetime import timedelta
from typing import Any, Iterator

import torch
import torch.distributed as dist

from hsdpo.train.config import TrainConfig


def init_distributed(use_gpu: bool) -> None:
    """Join the existing process group (Ray Train) or start a world of one (plain process)."""
    import deepspeed

    backend = "nccl" if use_gpu else "gloo"
    if not dist.is_initialized():
        for key, value in (("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "29533"), ("RANK", "0"),
                           ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0")):
            os.environ.setdefault(key, value)
        dist.init_process_group(backend, timeout=timedelta(minutes=30))
    if not use_gpu:
        skip_shm_comm_op()
    deepspeed.init_distributed(dist_backend=backend)
    if use_gpu:
        torch.cuda.set_device(local_rank())


def skip_shm_comm_op() -> None:
    """On CPU, DeepSpeed's comm backend compiles its shared-memory all-reduce (`deepspeed_shm_comm`)
    as it starts: about 90 s of both cores of the build machine, at the first run in each new
    environment (the build is keyed to the venv's paths), for the all-reduce of inference's
    tensor-parallel layers (`inference_all_reduce`, deepspeed.module_inject), which training never
    calls. Marked incompatible, the backend starts without it, as where the op cannot be built, and
    every all-reduce goes through gloo as before. On GPUs no such op is built."""
    import deepspeed.ops

    ops = getattr(deepspeed.ops, "__compatible_ops__", None)  # DeepSpeed: edits to this dict persist
    if isinstance(ops, dict):
        ops["deepspeed_shm_comm"] = False


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def use_bf16(t: TrainConfig) -> bool:
    return t.precision == "bf16" or (t.precision == "auto" and t.use_gpu)


def ds_config(t: TrainConfig, micro_batch: int, accum: int) -> dict[str, Any]:
    """Our config in DeepSpeed's terms. `micro_batch` counts forward rows per rank."""
    zero: dict[str, Any] = {
        "stage": t.zero_stage,
        "contiguous_gradients": True,
        "overlap_comm": world_size() > 1,
        "reduce_bucket_size": 5e8,
        "allgather_bucket_size": 5e8,
    }
    if t.zero_stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    if t.offload:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": t.use_gpu}
        if t.zero_stage == 3:
            zero["offload_param"] = {"device": "cpu", "pin_memory": t.use_gpu}
    cfg: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": accum,
        "gradient_clipping": t.max_grad_norm,
        "zero_optimization": zero,
        "bf16": {"enabled": use_bf16(t)},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
        # on by default, and it synchronises the device at each forward and step; we time steps ourselves
        "timers": {"throughput": {"enabled": False}},
    }
    if fused_clip(t):  # clipping and the inf/NaN skip run in the optimizer (`ClipHook`)
        cfg["gradient_clipping"] = 0.0
        zero["compute_grad_norm"] = False
        if use_bf16(t):
            cfg["bf16"]["check_grad_overflow"] = False
    if t.offload:
        cfg["optimizer"] = {"type": "AdamW", "params": {"lr": t.lr, "betas": list(t.adam_betas),
                                                        "weight_decay": t.weight_decay}}
    return deep_merge(cfg, t.deepspeed)


def check_ds_config(kind: str, t: TrainConfig, accum: int) -> None:
    """The merged DeepSpeed config read by DeepSpeed itself on the driver, so that what `deepspeed`
    passes through fails there on one line and not in every worker: a section DeepSpeed validates
    (`zero_optimization.bogus`, a bucket size that is not a number) and a top-level key it never
    reads (`bogsu`: DeepSpeed ignores it silently). The keys it reads are the ones it asks its
    config dict for while parsing it."""
    from deepspeed.runtime.config import DeepSpeedConfig

    from hsdpo.config import ConfigError
    from hsdpo.configbase import first_line

    read: set[str] = set()

    class Keys(set):
        def __contains__(self, key) -> bool:
            read.add(key)
            return super().__contains__(key)

    class Seen(dict):
        def get(self, key, *default):
            read.add(key)
            return super().get(key, *default)

        def __getitem__(self, key):
            read.add(key)
            return super().__getitem__(key)

        def __contains__(self, key) -> bool:
            read.add(key)
            return super().__contains__(key)

        def keys(self):
            return Keys(super().keys())

    try:
        DeepSpeedConfig(Seen(ds_config(t, t.micro_batch_size, accum)))
    except Exception as err:  # noqa: BLE001 -- pydantic's ValidationError, DeepSpeed's asserts and TypeErrors
        errors = getattr(err, "errors", None)
        if callable(errors) and errors():
            e = errors()[0]
            where = ".".join(str(x) for x in e.get("loc", ()))
            why = f"{type(err).__name__} in {getattr(err, 'title', 'a section')}: {where}: {e.get('msg')}"
        else:
            why = first_line(err)
        raise ConfigError(f"{kind}.deepspeed: DeepSpeed refuses the merged config ({why})") from None
    unknown = sorted(k for k in t.deepspeed if k not in read)
    if unknown:
        import deepspeed

        raise ConfigError(f"{kind}.deepspeed.{unknown[0]}: DeepSpeed {deepspeed.__version__} reads no such key"
                          " (it would be ignored); see its config documentation")


def fused_clip(t: TrainConfig) -> bool:
    """Whether gradient norm, clipping and the inf/NaN skip run in the fused AdamW (module docstring)."""
    return t.fused_clip and t.zero_stage == 2 and not t.offload


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """`extra` over `base`, recursively for nested dicts; neither is modified."""
    out = dict(base)
    for k, v in extra.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def lr_lambda(t: TrainConfig):
    """Multiplier of the peak lr at step s (0-based): linear warmup, then cosine to min_lr_ratio."""
    def f(step: int) -> float:
        if step < t.warmup_steps:
            return (step + 1) / t.warmup_steps
        span = max(1, t.steps - t.warmup_steps)
        progress = min(1.0, (step - t.warmup_steps) / span)
        return t.min_lr_ratio + (1 - t.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return f


def initialize(module: torch.nn.Module, t: TrainConfig, micro_batch: int, accum: int, universal: bool = False):
    """A DeepSpeed engine around `module` (already on the right device/dtype for ZeRO-2)."""
    import deepspeed

    params = [p for p in module.parameters() if p.requires_grad]
    cfg = ds_config(t, micro_batch, accum)
    if universal:
        cfg["checkpoint"] = {"load_universal": True}
    optimizer = None
    if not t.offload:
        optimizer = torch.optim.AdamW(params, lr=t.lr, betas=tuple(t.adam_betas), weight_decay=t.weight_decay,
                                      fused=t.use_gpu or fused_clip(t))
        if fused_clip(t):
            optimizer.hsdpo_clip = ClipHook(t.max_grad_norm)
            optimizer.register_step_pre_hook(optimizer.hsdpo_clip)
    engine, _, _, _ = deepspeed.initialize(
        model=module, model_parameters=params, optimizer=optimizer, config=cfg,
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(t)),  # stepped by engine.step()
    )
    return engine


class ClipHook:
    """Step pre-hook of the client AdamW under `fused_clip`. DeepSpeed's ZeRO-2 calls the optimizer with
    this rank's flat fp32 gradient partition (one parameter a group, one group); the squares of the
    partitions sum to the global norm across ranks. The kernel divides the gradient by `grad_scale`
    = max(1, (norm + 1e-6) / max_norm), DeepSpeed's own clip factor, and leaves parameters, moments
    and step count untouched when `found_inf` is 1. Nothing is read back to the host: `norm` and
    `skipped` stay on the device until the metrics are logged (`grad_norm`, `skipped_steps`)."""

    def __init__(self, max_norm: float):
        self.max_norm = max_norm
        self.norm: torch.Tensor | None = None
        self.skipped: torch.Tensor | None = None

    def __call__(self, opt: torch.optim.Optimizer, args, kwargs) -> None:
        grads = [p.grad for g in opt.param_groups for p in g["params"] if p.grad is not None]
        if not grads:
            return
        sq = torch.stack([torch.linalg.vector_norm(g, dtype=torch.float32) for g in grads]).square().sum()
        norm = all_reduce_sum(sq).sqrt()
        found_inf = (~torch.isfinite(norm)).float()
        opt.found_inf = found_inf
        if self.max_norm > 0:
            opt.grad_scale = torch.clamp((norm + 1e-6) / self.max_norm, min=1.0)
        self.norm = norm
        self.skipped = found_inf if self.skipped is None else self.skipped + found_inf


def clip_hook(engine) -> ClipHook | None:
    return getattr(getattr(engine.optimizer, "optimizer", engine.optimizer), "hsdpo_clip", None)


def grad_norm(engine) -> float:
    """The last step's global gradient norm, before clipping (reads the device)."""
    hook = clip_hook(engine)
    norm = hook.norm if hook is not None else engine.get_global_grad_norm()
    return float(norm) if norm is not None else 0.0


def take_skipped_steps(engine) -> int:
    """Steps skipped for an inf/NaN gradient since the last call (reads the device). With `fused_clip`
    the scheduler still advances on such a step; DeepSpeed's own check counts `engine.skipped_steps`."""
    hook = clip_hook(engine)
    if hook is None:
        n = int(engine.skipped_steps)
        seen = getattr(engine, "_hsdpo_skipped_seen", 0)
        engine._hsdpo_skipped_seen = n
        return n - seen
    n = int(hook.skipped.item()) if hook.skipped is not None else 0
    hook.skipped = None
    return n


def grad_reduction(engine, t: TrainConfig, accum: int):
    """Context for one optimizer step's backward. In a world of one with one micro-batch a step there
    is no communication to overlap with backward, so gradients are reduced into ZeRO's partition in
    one pass after it (DeepSpeed's `coalesce_grad_reduction`) rather than by a Python hook on every
    parameter while backward runs, which left the GPU waiting on the host (an H200 profile: ~200 us
    of hook a parameter, 340 parameters a step). Elsewhere (several ranks: overlap_comm; gradient
    accumulation: one with-block would span several micro-batches; ZeRO-3; offload; or
    `coalesce_grad_reduction: false`) the per-parameter hooks stay."""
    import contextlib

    if (t.coalesce_grad_reduction and world_size() == 1 and accum == 1 and t.zero_stage == 2 and not t.offload
            and hasattr(engine, "coalesce_grad_reduction")):
        return engine.coalesce_grad_reduction()
    return contextlib.nullcontext()


def checkpoint_world(path: str) -> int:
    """Data-parallel ranks that wrote the latest DeepSpeed checkpoint under `path`: one optimizer-state
    file a rank, `zero_pp_rank_<r>_mp_rank_00_optim_states.pt`, prefixed `bf16_` (or `fp16_`) under
    those precisions; ZeRO-3's `zero_pp_rank_<r>_mp_rank_00_model_states.pt` files are not counted."""
    import re

    with open(os.path.join(path, "latest")) as f:
        tag = f.read().strip()
    pattern = re.compile(r"(?:bf16_|fp16_)?zero_pp_rank_(\d+)_mp_rank_00_optim_states\.pt")
    ranks = {int(m.group(1)) for name in os.listdir(os.path.join(path, tag)) if (m := pattern.fullmatch(name))}
    if not ranks:
        raise RuntimeError(f"no ZeRO optimizer states in {os.path.join(path, tag)}")
    return len(ranks)


def local_rank() -> int:
    """This process's rank on its node (Ray Train and torchrun set LOCAL_RANK)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


@contextlib.contextmanager
def universal_copy(path: str) -> Iterator[str]:
    """The latest checkpoint under `path` in DeepSpeed's universal format (any world size), in a
    scratch folder of this node, removed when the block ends. Each node's local rank 0 converts the
    copy it sees (its own download from cloud storage, or the shared folder), so no node needs files
    another node wrote, and the stored checkpoint is left as it was written."""
    import hashlib
    import shutil
    import subprocess
    import sys
    import tempfile

    with open(os.path.join(path, "latest")) as f:
        tag = f.read().strip()
    key = hashlib.sha256(f"{os.path.realpath(path)}\0{tag}".encode()).hexdigest()[:16]
    out = os.path.join(tempfile.gettempdir(), f"hsdpo_universal_{key}")
    if local_rank() == 0:
        shutil.rmtree(out, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder",
                        os.path.join(path, tag), "--output_folder", os.path.join(out, tag), "--num_extract_workers",
                        "1", "--num_merge_workers", "1", "--inject_missing_state"], check=True,
                       stdout=subprocess.DEVNULL)
        with open(os.path.join(out, "latest"), "w") as f:
            f.write(tag)
    barrier()
    try:
        yield out
        barrier()  # every rank on this node has loaded it
    finally:
        if local_rank() == 0:
            shutil.rmtree(out, ignore_errors=True)


def save_checkpoint(engine, path: str, step: int, client_state: dict[str, Any]) -> None:
    # universal checkpoints need the step in param_groups (torch's AdamW keeps it per parameter)
    inner = getattr(engine.optimizer, "optimizer", engine.optimizer)
    for group in inner.param_groups:
        group["step"] = step
    engine.save_checkpoint(path, tag=f"step{step}", client_state=client_state)


def load_checkpoint(engine, path: str) -> dict[str, Any]:
    """Load the latest tag under `path`; returns the client state saved with it."""
    _, client_state = engine.load_checkpoint(path, load_optimizer_states=True, load_lr_scheduler_states=True)
    if client_state is None:
        raise RuntimeError(f"no DeepSpeed checkpoint could be loaded from {path}")
    return client_state


def full_state_dict(engine) -> dict[str, torch.Tensor] | None:
    """The whole model's weights on rank 0 (ZeRO-3: gathered from the shards; every rank must call)."""
    if engine.zero_optimization_stage() == 3:
        state = engine._zero3_consolidated_16bit_state_dict()
        return state if rank() == 0 else None
    return {k: v.detach().cpu() for k, v in engine.module.state_dict().items()} if rank() == 0 else None


def export_hf(engine, out_dir: str, base_model_path: str, tokenizer: Any, lora: bool) -> None:
    """Consolidate and write a plain HF folder (config, generation config, safetensors, tokenizer);
    LoRA merged."""
    from transformers import AutoModelForCausalLM

    state = full_state_dict(engine)  # collective under ZeRO-3
    if rank() == 0:
        inner = engine.module.model  # LogpModel.model: the HF (or peft) model
        prefix = "model."
        state = {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state.items()}
        hf_config = (inner.get_base_model() if lora else inner).config
        # a model with its own code (auto_map) was loaded with model.trust_remote_code: the same class here
        model = AutoModelForCausalLM.from_config(hf_config, dtype=torch.float32,
                                                 trust_remote_code=bool(getattr(hf_config, "auto_map", None)))
        if lora:
            from peft import get_peft_model

            model = get_peft_model(model, inner.peft_config["default"])
        missing, unexpected = model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
        missing = [k for k in missing if "lm_head" not in k]  # tied to the embeddings
        if missing or unexpected:
            raise RuntimeError(f"export: missing {missing[:3]}, unexpected {unexpected[:3]}")
        if lora:
            model = model.merge_and_unload()
        # the base model's generation_config.json as it was loaded (its extra eos ids: an Instruct
        # model's end-of-turn token; its sampling defaults), not one derived from config.json
        base = inner.get_base_model() if lora else inner
        if getattr(base, "generation_config", None) is not None:
            model.generation_config = copy.deepcopy(base.generation_config)
        # training turns the KV cache off (build_policy); the exported model is for inference
        model.config.use_cache = True
        if model.generation_config is not None:
            model.generation_config.use_cache = True
        dtype = torch.bfloat16 if any(v.dtype == torch.bfloat16 for v in state.values()) else torch.float32
        model.to(dtype).save_pretrained(out_dir)
        tokenizer.save_pretrained(out_dir)
    barrier()

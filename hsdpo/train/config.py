"""Training configs: SFT, reference log-probs, DPO.

Batching: `batch_size` is the *global* batch (examples or pairs per optimizer step); each of the
`num_workers` workers runs micro-batches of `micro_batch_size`, and gradient accumulation is derived:
`accum = batch_size / (micro_batch_size * num_workers)`. Changing workers or micro-batch size
therefore leaves the optimisation unchanged (the invariance tests hold the code to that).
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from hsdpo.configbase import RUN_ONLY, StrictModel


DEFAULT_STEPS = 100
ATTENTION = ("sdpa", "eager", "flex_attention", "flash_attention_2", "flash_attention_3")  # transformers' names


class LoraConfig(StrictModel):
    enabled: bool = Field(False, description="train LoRA adapters (peft) instead of all weights; merged at export")
    r: int = Field(16, ge=1, description="LoRA rank")
    alpha: int = Field(32, ge=1, description="LoRA alpha (scale = alpha / r)")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="LoRA dropout")
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        description="module names that get adapters",
    )


class TrainConfig(StrictModel):
    """What SFT and DPO share: topology, optimiser, schedule, precision, checkpoints, logging."""

    output: str = Field("train", description="run-dir folder written")
    num_workers: int = Field(1, ge=1, description="Ray Train workers (data-parallel ranks)")
    use_gpu: bool = Field(False, description="one GPU a worker (NCCL, bf16) instead of CPU (gloo, fp32)")
    cpus_per_worker: float = Field(1.0, gt=0, description="logical CPUs a worker reserves; on CPU, also its torch threads")
    steps: int | None = Field(
        None, ge=1, description=f"optimizer steps ({DEFAULT_STEPS} when neither steps nor epochs is set)")
    epochs: float | None = Field(
        None, gt=0, description="passes over the training rows instead of a step count: steps = ceil(epochs x rows /"
        " batch_size), rows counted after rejects and the held-out split (the last batch runs into the next pass)")
    batch_size: int = Field(32, ge=1, description="global batch: examples (SFT) or pairs (DPO) per optimizer step")
    micro_batch_size: int = Field(8, ge=1, description="examples/pairs a worker runs per forward")
    max_length: int = Field(256, ge=8, description="prompt + completion tokens; longer examples are truncated and counted")
    lr: float = Field(1e-3, gt=0, description="peak learning rate")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="cosine decays to lr * min_lr_ratio")
    warmup_steps: int = Field(0, ge=0, description="linear warmup steps before the cosine decay")
    warmup_ratio: float = Field(0.0, ge=0, lt=1, description="warmup as a share of the run's steps (rounded up) instead of"
                                " warmup_steps: what a run by epochs knows before its step count")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    adam_betas: tuple[float, float] = Field((0.9, 0.95), description="AdamW betas")
    max_grad_norm: float = Field(1.0, ge=0, description="gradient clipping (0 = off)")
    zero_stage: Literal[2, 3] = Field(2, description="DeepSpeed ZeRO stage")
    offload: bool = Field(False, description="ZeRO CPU offload of optimizer states (and params at stage 3); DeepSpeed's CPU Adam, compiled on first use")
    precision: Literal["auto", "bf16", "fp32"] = Field("auto", description="auto = bf16 on GPU, fp32 on CPU")
    gradient_checkpointing: bool = Field(False, description="recompute activations in backward (saves memory)")
    compile: bool = Field(False, description="torch.compile each decoder layer (torchtune style) and the LM-head log-softmax chunk; the first steps pay the compile; ZeRO-2 only")
    compile_backend: Literal["inductor", "cudagraphs", "aot_eager"] = Field("inductor", description="torch.compile backend with compile=true: inductor generates fused kernels; aot_eager captures the same forward and backward graphs and runs them eagerly (no codegen, for debugging a graph break or a numerical difference)")
    coalesce_grad_reduction: bool = Field(True, description="one rank, one micro-batch a step, ZeRO-2: reduce gradients in one pass after backward (DeepSpeed's coalesce_grad_reduction) instead of a hook a parameter during it; ignored elsewhere")
    fused_clip: bool = Field(True, description="ZeRO-2 without offload: gradient norm, clipping and the inf/NaN step skip run on the device in the fused AdamW over ZeRO's flat fp32 partition, instead of DeepSpeed's per-parameter norm and overflow checks (thousands of small kernels and four device reads a step); ignored elsewhere")
    deepspeed: dict[str, Any] = Field(
        default_factory=dict,
        description="extra DeepSpeed config, deep-merged over the one built from these fields (e.g. zero_optimization"
                    " bucket sizes); keys set from our own fields (batch sizes, clipping, bf16.enabled, optimizer, ZeRO stage"
                    " and offload) are refused",
    )
    packing: bool = Field(False, description="lay a micro-batch's examples end to end in rows of max_length"
                          " tokens (balanced), each attending to itself only, instead of one padded row"
                          " each: the same examples and gradient, fewer tokens computed where lengths vary"
                          " (docs/training.md)")
    attn_implementation: str = Field(
        "sdpa", description="transformers attention kernel: sdpa, eager, flex_attention, flash_attention_2 / _3 (GPU,"
        " the flash-attn package), or a hub kernel `org/repo`")
    logp_chunk: int = Field(128, ge=1, description="positions per sequence in a chunk of the LM head and log-softmax (chunk x batch scored rows; never full [B,T,V] fp32 logits)")
    logp_recompute: bool = Field(True, description="recompute each LM-head chunk in backward, keeping one chunk's logits at a time; false keeps every chunk's log-softmax for backward (faster, about 4 bytes x scored positions x vocab more memory)")
    seed: int = Field(0, description="added to the run's seed: the data order and LoRA's initial adapters")
    eval_fraction: float = Field(
        0.0, ge=0, lt=1, description="share of problems held out of training (chosen by a hash of problem_id, so a"
        " problem's rows stay on one side) and scored without gradients: eval_* metrics (0 = no held-out set)")
    eval_every: int = Field(
        0, ge=0, description="steps between held-out evaluations (0 = at the last step only); needs eval_fraction",
        json_schema_extra=RUN_ONLY)
    checkpoint_every: int = Field(
        0, ge=0, description="report a Ray Train checkpoint every k steps before the last (0 = none: a failure restarts from step 0)", json_schema_extra=RUN_ONLY)
    keep_checkpoints: int = Field(2, ge=1, description="checkpoints kept in storage", json_schema_extra=RUN_ONLY)
    max_failures: int = Field(
        0, ge=-1, description="Ray Train FailureConfig.max_failures (-1 = forever)", json_schema_extra=RUN_ONLY)
    fail_at_step: int | None = Field(
        None, description="TESTING AID: rank 0 raises once on reaching this step (marker file in the checkpoint dir)",
        json_schema_extra=RUN_ONLY)
    log_every: int = Field(1, ge=1, description="metrics line every k steps (rank 0)", json_schema_extra=RUN_ONLY)
    report_interval_s: float = Field(
        5.0, ge=0, description="least seconds between metrics-only ray.train.report calls: Ray Train takes one"
        " report per controller poll (every 0.5 s as hsdpo sets it, 2 s as Ray does) and blocks the next until then;"
        " checkpoints and the last step always report, metrics.jsonl gets every line; 0 = report every line",
        json_schema_extra=RUN_ONLY)
    tensorboard: bool = Field(False, description="also write TensorBoard events to <output>/tb")
    wandb_project: str | None = Field(None, description="also log to this W&B project (rank 0)")
    lora: LoraConfig = Field(default_factory=LoraConfig)

    def total_steps(self, rows: int) -> int:
        """Optimizer steps of a run over `rows` training examples or pairs: `steps`, or `epochs` passes."""
        if self.epochs is not None:
            return max(1, math.ceil(self.epochs * rows / self.batch_size))
        return self.steps if self.steps is not None else DEFAULT_STEPS

    def for_rows(self, rows: int) -> "TrainConfig":
        """This config with its schedule in steps for a table of `rows`: `epochs` and `warmup_ratio`
        turned into `steps` and `warmup_steps` (what the loop and the lr schedule read)."""
        steps = self.total_steps(rows)
        warmup = math.ceil(self.warmup_ratio * steps) if self.warmup_ratio else self.warmup_steps
        return self.model_copy(update={"steps": steps, "epochs": None, "warmup_steps": warmup, "warmup_ratio": 0.0})

    @field_validator("adam_betas")
    @classmethod
    def _betas(cls, v: tuple[float, float]) -> tuple[float, float]:
        # torch's AdamW refuses these only inside each worker; DeepSpeed's CPU Adam (offload) takes
        # them and the weights turn NaN
        for i, b in enumerate(v):
            if not 0.0 <= b < 1.0:
                raise ValueError(f"adam_betas[{i}] is {b:g}; each beta must be in [0, 1)")
        return v

    @field_validator("deepspeed")
    @classmethod
    def _own_keys(cls, v: dict[str, Any]) -> dict[str, Any]:
        clash = [k for k in OWN_DS_KEYS if k in v]
        clash += [f"{section}.{k}" for section, keys in OWN_DS_SUBKEYS.items() for k in keys
                  if isinstance(v.get(section), dict) and k in v[section]]
        if clash:
            raise ValueError(f"{clash[0]} is set from hsdpo's own fields (OWN_DS_KEYS in hsdpo/train/config.py);"
                             " set those instead")
        return v

    @model_validator(mode="after")
    def _compile_zero2(self) -> "TrainConfig":
        if self.compile and self.zero_stage != 2:
            raise ValueError("compile=true needs zero_stage 2 (ZeRO-3 gathers parameters in hooks a compiled layer skips)")
        if self.steps is not None and self.epochs is not None:
            raise ValueError(f"steps {self.steps} and epochs {self.epochs:g} are both set; give one (steps=null to"
                             " train by epochs)")
        if self.warmup_steps and self.warmup_ratio:
            raise ValueError(f"warmup_steps {self.warmup_steps} and warmup_ratio {self.warmup_ratio:g} are both set;"
                             " give one")
        attn = self.attn_implementation
        if "/" not in attn and attn not in ATTENTION:
            raise ValueError(f"attn_implementation {attn!r} is none of {', '.join(ATTENTION)}"
                             " (or a hub kernel org/repo)")
        if attn.startswith("flash_attention") and not self.use_gpu:
            raise ValueError(f"attn_implementation {attn} runs on GPUs only; set use_gpu=true or use sdpa")
        if self.compile and self.compile_backend == "cudagraphs" and not self.use_gpu:
            raise ValueError("compile_backend cudagraphs runs on GPUs only; set use_gpu=true or use inductor")
        if self.eval_every and not self.eval_fraction:
            raise ValueError("eval_every needs eval_fraction > 0 (the held-out share of problems)")
        return self


# DeepSpeed keys built from TrainConfig fields: an override would silently disagree with them
# (fp16 is not offered: bf16 or fp32). Other keys of these sections, e.g. bf16.immediate_grad_update,
# zero_optimization.reduce_bucket_size, are the user's.
OWN_DS_KEYS = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps",
               "gradient_clipping", "fp16", "optimizer", "scheduler")
OWN_DS_SUBKEYS = {"zero_optimization": ("stage", "offload_optimizer", "offload_param", "compute_grad_norm"),
                  "bf16": ("enabled",)}


class SFTConfig(TrainConfig):
    output: str = Field("sft", description="run-dir folder written")
    data_from: str = Field("problems", description='"problems" (gold solutions) or a pairs folder (its chosen column, RFT)')
    init_from: str | None = Field(None, description="None = cfg.model (or build from preset); else a run-dir stage folder (e.g. sft), a model path or a hub id")
    split: str = Field("train", description="problems split trained on")


class RefLogpConfig(StrictModel):
    output: str = Field("ref_logps", description="run-dir folder written")
    model_from: str = Field("sft", description="stage folder (or path) of the frozen reference model")
    pairs_from: str = Field("pairs", description="pairs folder")
    max_length: int = Field(256, ge=8, description="must equal dpo.max_length (checked by dpo)")
    batch_size: int = Field(16, ge=1, description="pairs per Ray Data batch")
    concurrency: int = Field(1, ge=1, description="reference-model actors")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per actor (0 = CPU, fp32)")
    logp_chunk: int = Field(128, ge=1, description="positions per sequence in a chunk of the LM head and log-softmax")


class DPOConfig(TrainConfig):
    output: str = Field("dpo", description="run-dir folder written")
    init_from: str = Field("sft", description="stage folder (or path) of the starting policy")
    pairs_from: str = Field("ref_logps", description="pairs with ref_chosen_logp/ref_rejected_logp (runs reflogp if it is cfg.reflogp.output)")
    weighting: Literal["verifier", "uniform"] = Field("verifier", description="verifier = the pairs' weight column; uniform = 1")
    beta: float = Field(0.1, gt=0, description="DPO temperature")
    nll_coef: float = Field(0.0, ge=0, description="weight of the chosen-completion NLL term (DPO+NLL, iterative RPO)")
    loss_type: Literal["sigmoid", "robust", "hinge", "ipo"] = Field(
        "sigmoid", description="per-pair loss of the margin: sigmoid (DPO), robust (unbiased under label noise,"
        " Chowdhury et al. 2024), hinge (SLiC), ipo (Azar et al. 2023, on per-token mean log-probs);"
        " weighted alike (losses.py)")
    label_smoothing: float = Field(
        0.0, ge=0, lt=0.5, description="assumed share of pairs the verifier got the wrong way round: conservative DPO"
        " with the sigmoid loss, the noise rate of the robust one; not with hinge or ipo")
    lr: float = Field(5e-5, gt=0, description="peak learning rate")
    batch_size: int = Field(16, ge=1, description="global batch of pairs per optimizer step")
    micro_batch_size: int = Field(4, ge=1, description="pairs a worker runs per forward (chosen+rejected concatenated)")

    @model_validator(mode="after")
    def _smoothing_has_a_loss(self) -> "DPOConfig":
        if self.loss_type in ("hinge", "ipo") and self.label_smoothing:
            raise ValueError(f"label_smoothing applies to loss_type sigmoid or robust, not {self.loss_type}")
        return self

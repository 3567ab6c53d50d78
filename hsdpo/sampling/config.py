"""Sampling config: which model, how many samples, decoding, backend, and the resources of the
sampler and verifier actor pools (so one recipe drives a laptop and an autoscaling cluster)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, model_validator

from hsdpo.configbase import RUN_ONLY, StrictModel
from hsdpo.prompts import STOP_STRINGS


def _check_pool(v: int | tuple[int, int]) -> int | tuple[int, int]:
    low, high = (v, v) if isinstance(v, int) else v
    if low < 1 or high < low:
        raise ValueError("a pool is n >= 1 actors or [min, max] with 1 <= min <= max")
    return v


# An actor pool: a fixed size n, or an autoscaling range [min, max].
Pool = Annotated[int | tuple[int, int], AfterValidator(_check_pool)]

VLLM_MAX_TEMPERATURE = 2.0  # vllm.SamplingParams refuses a higher one


class VLLMConfig(StrictModel):
    """Engine settings of the `vllm` backend (ray.data.llm vLLM processor)."""

    tensor_parallel_size: int = Field(1, ge=1, description="GPUs one engine replica spans")
    max_num_seqs: int = Field(256, ge=1, description="sequences one engine decodes at once")
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description="share of GPU memory vLLM may take")
    max_model_len: int | None = Field(None, ge=1, description="context length (None = the model's)")
    dtype: Literal["auto", "half", "float16", "bfloat16", "float", "float32"] = Field(
        "auto", description="weights/activations dtype passed to vLLM")
    accelerator_type: str | None = Field(None, description="Ray accelerator type of the replicas (e.g. H100)")
    engine_kwargs: dict[str, Any] = Field(default_factory=dict, description="extra vLLM engine kwargs, merged last")


class SampleConfig(StrictModel):
    output: str = Field("samples", description="run-dir folder written")
    model_from: str = Field("sft", description="run-dir stage folder or model path sampled from")
    backend: Literal["hf", "vllm"] = Field("hf", description="hf (CPU/GPU, dev) or vllm (GPU, production)")
    split: str = Field("train", description="problems/ split sampled")
    limit: int | None = Field(None, ge=1, description="sample at most this many problems (None = all)")
    n: int = Field(8, ge=1, description="samples per problem")
    temperature: float = Field(1.0, ge=0.0, allow_inf_nan=False, description="sampling temperature; 0 = greedy")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="nucleus sampling mass")
    max_new_tokens: int = Field(256, ge=1, description="generated tokens per sample at most")
    stop_strings: list[str] = Field(default_factory=lambda: list(STOP_STRINGS),
                                    description="strings that end a sample (besides eos); cut from the completion")

    # --- sampler actors
    batch_size: int = Field(64, ge=1, description="prompts a sampler actor decodes together (one Ray Data batch)")
    concurrency: Pool = Field(1, description="sampler actors (replicas): n, or [min, max] to autoscale")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per hf sampler actor (0 = CPU); vllm uses tensor_parallel_size")
    num_cpus: float = Field(1.0, ge=0, description="logical CPUs per sampler actor")
    torch_threads: int | None = Field(None, ge=1, description="torch threads in an hf sampler actor (None = torch's default)")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="hf model dtype: auto (bf16 on GPU, fp32 on CPU), float32, bfloat16, float16")
    vllm: VLLMConfig = Field(default_factory=VLLMConfig)

    # --- verifier actors (in the same stream)
    verify: bool = Field(True, description="verify each sample in the stream (verdict columns); False = raw samples")
    verify_concurrency: Pool = Field(
        1, description="verifier actors: n, or [min, max] to autoscale", json_schema_extra=RUN_ONLY)
    verify_num_cpus: float = Field(1.0, ge=0, description="logical CPUs per verifier actor", json_schema_extra=RUN_ONLY)
    verify_batch_size: int = Field(
        64, ge=1, description="rows a verifier actor checks per call", json_schema_extra=RUN_ONLY)

    # --- fault tolerance
    max_restarts: int = Field(
        3, ge=-1, description="restarts of a dead sampler/verifier actor (-1 = unlimited)", json_schema_extra=RUN_ONLY)
    max_task_retries: int = Field(
        3, ge=-1, description="retries of a batch whose actor died (-1 = unlimited)", json_schema_extra=RUN_ONLY)
    crash_once_marker: str | None = Field(
        None, description="testing aid: the hf sampler process exits on its first batch if this file does not exist "
                          "(and creates it), to exercise actor restarts", json_schema_extra=RUN_ONLY)

    @model_validator(mode="after")
    def _vllm_temperature(self) -> "SampleConfig":
        if self.backend == "vllm" and self.temperature > VLLM_MAX_TEMPERATURE:
            raise ValueError(f"temperature {self.temperature:g}: vLLM samples at temperatures up to "
                             f"{VLLM_MAX_TEMPERATURE:g} (backend vllm)")
        return self

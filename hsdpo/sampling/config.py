"""Sampling config: backend, decoding, resources."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from hsdpo.configbase import StrictModel


class SampleConfig(StrictModel):
    output: str = Field("samples", description="run-dir folder written")
    model_from: str = Field("sft", description="run-dir stage folder or model path sampled from")
    backend: Literal["hf", "vllm"] = Field("hf", description="hf (CPU/GPU, dev) or vllm (GPU, production)")
    split: str = Field("train", description="problems/ split sampled")
    limit: int | None = Field(None, description="sample at most this many problems")
    n: int = Field(8, ge=1, description="samples per problem")
    temperature: float = Field(1.0, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_new_tokens: int = Field(256, ge=1)

"""Training configs: SFT, reference log-probs, DPO."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from hsdpo.configbase import StrictModel


class SFTConfig(StrictModel):
    output: str = Field("sft", description="run-dir folder written")
    num_workers: int = Field(1, ge=1)
    use_gpu: bool = False
    lr: float = 1e-3
    steps: int = 100
    batch_size: int = 32
    max_length: int = 256


class RefLogpConfig(StrictModel):
    output: str = Field("ref_logps", description="run-dir folder written")
    model_from: str = "sft"
    pairs_from: str = "pairs"


class DPOConfig(StrictModel):
    output: str = Field("dpo", description="run-dir folder written")
    init_from: str = "sft"
    pairs_from: str = "ref_logps"
    weighting: Literal["verifier", "uniform"] = "verifier"
    beta: float = 0.1
    lr: float = 5e-5
    steps: int = 100
    batch_size: int = 16

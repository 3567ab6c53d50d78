"""Preference pairs from verified samples (pure Python): selection and verifier weights."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from hsdpo.configbase import StrictModel


class PairsConfig(StrictModel):
    output: str = Field("pairs", description="run-dir folder written")
    pairs_per_problem: int = Field(2, ge=1)
    weighting: Literal["verifier", "uniform"] = "verifier"
    negatives: Literal["hard", "random"] = "hard"
    use_gold: bool = Field(True, description="use the gold solution as chosen when no sample is correct")
    lam: float = Field(1.0, description="λ in w = clip(1 + λ(1-absurdity)(1-numeric), w_min, w_max)")
    w_min: float = 0.1
    w_max: float = 3.0

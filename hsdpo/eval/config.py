"""Evaluation config: which models, which problems, how they are decoded."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, field_validator, model_validator

from hsdpo.configbase import StrictModel


class EvalConfig(StrictModel):
    output: str = Field("eval", description="run-dir folder of the evaluation")
    models: dict[str, str] = Field(
        default_factory=lambda: {"sft": "sft"},
        description="name -> run-dir stage folder (its model/) or a model path / hub id; names key summary.json",
    )
    split: str = Field("test", description="problems/ split evaluated")
    limit: int | None = Field(None, ge=1, description="evaluate at most this many problems")
    max_new_tokens: int = Field(256, ge=1, description="generation budget of one solution")
    n: int = Field(0, ge=0, description="extra sampled solutions per problem for pass@k / majority vote (0 = greedy only)")
    temperature: float = Field(1.0, ge=0.0, allow_inf_nan=False, description="temperature of the n-sample pass")
    pass_k: list[Annotated[int, Field(ge=1)]] = Field(
        default_factory=lambda: [1, 4, 8],
        description="k of pass@k reported (1 <= k <= n; of the default, those <= n)")
    near_miss_ref: str | None = Field(
        "sft", description="model whose wrong answers define the near-miss subset (hard negatives); None = no subset"
    )
    plots: bool = Field(True, description="write report.md PNG plots (matplotlib, Agg)")

    @field_validator("models")
    @classmethod
    def _some_models(cls, v: dict[str, str]) -> dict[str, str]:
        if not v:
            raise ValueError("at least one model to evaluate")
        return v

    @model_validator(mode="after")
    def _pass_k_within_n(self) -> "EvalConfig":
        # The default [1, 4, 8] reports the k a run's n allows; k written out must all be reportable.
        too_big = [k for k in self.pass_k if k > self.n]
        if self.n and too_big and "pass_k" in self.model_fields_set:
            raise ValueError(f"pass_k {too_big[0]} needs at least {too_big[0]} samples a problem; n is {self.n}")
        return self

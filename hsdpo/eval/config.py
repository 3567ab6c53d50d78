"""Evaluation config."""

from __future__ import annotations

from pydantic import Field

from hsdpo.configbase import StrictModel


class EvalConfig(StrictModel):
    output: str = Field("eval", description="run-dir folder of the evaluation")
    models: dict[str, str] = Field(default_factory=lambda: {"sft": "sft"}, description="name -> run-dir stage folder or model path")
    split: str = Field("test", description="problems/ split evaluated")
    limit: int | None = Field(None, description="evaluate at most this many problems")

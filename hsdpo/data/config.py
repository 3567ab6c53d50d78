"""Data-source config: which problem sets make up `problems/`."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from hsdpo.configbase import Location, StrictModel

Op = Literal["add", "sub", "mul", "div", "double", "half"]


class SyntheticConfig(StrictModel):
    num_problems: int = Field(1000, ge=1, description="problems generated")
    min_steps: int = Field(1, ge=1, le=4, description="fewest computation steps in a problem")
    max_steps: int = Field(2, ge=1, le=4, description="most computation steps in a problem")
    min_value: int = Field(1, ge=0, description="smallest number a problem states")
    max_value: int = Field(20, ge=1, description="largest number a problem states")
    ops: list[Op] = Field(default_factory=lambda: ["add", "sub", "double"], min_length=1, description="operations used")

    @model_validator(mode="after")
    def _ranges(self) -> "SyntheticConfig":
        if self.min_steps > self.max_steps:
            raise ValueError(f"min_steps {self.min_steps} is above max_steps {self.max_steps}")
        if self.min_value > self.max_value:
            raise ValueError(f"min_value {self.min_value} is above max_value {self.max_value}")
        return self


class SourceConfig(StrictModel):
    name: Literal["gsm8k", "math", "metamathqa", "synthetic"] = Field(description="source format")
    path: Location | None = Field(None, description="JSON/JSONL file, a local path or a URI (s3://, gs://); None = the hub dataset")
    hub_id: str | None = Field(None, description="hub dataset id (default per source)")
    hub_split: str = Field("train", description="split of the hub dataset (to be given when `split` is not train)")
    split: str = Field("train", description="split label written to problems/ (train, test, ...)")
    limit: int | None = Field(None, ge=1, description="keep at most this many rows (after reading)")
    seed: int = Field(0, description="added to the run seed (synthetic draws)")
    synthetic: SyntheticConfig = Field(default_factory=SyntheticConfig)

    @model_validator(mode="after")
    def _hub_split_given(self) -> "SourceConfig":
        # `{name: gsm8k, split: test}` would label the hub's train split as test problems; checked where
        # the YAML is read (a config rebuilt from a dump sets every field)
        if (self.name != "synthetic" and self.path is None and self.split != "train"
                and "hub_split" not in self.model_fields_set):
            raise ValueError(f"split {self.split!r} from the hub needs hub_split (the hub's own split, e.g."
                             f" hub_split: {self.split}); without it the hub's train split would be read")
        return self


class DataConfig(StrictModel):
    output: str = Field("problems", description="run-dir folder written")
    sources: list[SourceConfig] = Field(default_factory=list, description="problem sources, concatenated")
    drop_test_overlap: bool = Field(True, description="drop non-train rows whose question also appears in train")

"""Base class for every config model: strict (unknown keys are errors), typed, validated."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """A config section: unknown keys and wrong types are one-line errors naming the key."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())

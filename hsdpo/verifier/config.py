"""Verifier weights and thresholds (documented in docs/verifier.md)."""

from __future__ import annotations

from pydantic import Field

from hsdpo.configbase import StrictModel


class VerifierConfig(StrictModel):
    timeout_s: float = Field(1.0, description="time budget of one verify() call, seconds")

"""`VerifyBatch`: the verifier as a Ray Data `map_batches` callable (batch_format="numpy").

    ds.map_batches(VerifyBatch, fn_constructor_kwargs={"cfg": cfg.verifier.model_dump()},
                   compute=ray.data.ActorPoolStrategy(size=4), batch_format="numpy")

Needs columns `completion` and `gold_answer` (str); reads `question` and `finish_reason` when
present. Keeps every input column and adds VERDICT_COLUMNS, one value per row: no row is
dropped or duplicated, and a row that cannot be verified gets the flag `verifier_error`.
This module does not import ray; Ray only needs the class.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from hsdpo.verifier.config import VerifierConfig
from hsdpo.verifier.core import Verdict, error_verdict, verify
from hsdpo.verifier.scores import PROFILE_FIELDS
from hsdpo.verifier.symbolic import warmup

_LOG = logging.getLogger(__name__)
REQUIRED_COLUMNS = ("completion", "gold_answer")
VERDICT_COLUMNS = [
    "correct",
    "pred_answer",
    "wrongness",
    "absurdity",
    "hard_negative",
    "first_error_step",
    "num_steps",
    "flags",
    "answer_rule",
    *(f"err_{f}" for f in PROFILE_FIELDS),
]


def _optional_str(batch: dict[str, np.ndarray], column: str, i: int) -> str | None:
    if column not in batch:
        return None
    value = batch[column][i]
    return value if isinstance(value, str) else None


def _row(verdict: Verdict) -> dict[str, Any]:
    row: dict[str, Any] = {
        "correct": verdict.correct,
        "pred_answer": verdict.pred_answer,
        "wrongness": verdict.wrongness,
        "absurdity": verdict.absurdity,
        "hard_negative": verdict.hard_negative,
        "first_error_step": -1 if verdict.first_error_step is None else verdict.first_error_step,
        "num_steps": verdict.num_steps,
        "flags": ",".join(verdict.flags),
        "answer_rule": verdict.answer_rule,
    }
    for name, value in zip(PROFILE_FIELDS, verdict.profile.as_tuple()):
        row[f"err_{name}"] = value
    return row


_DTYPES = {
    "correct": bool, "hard_negative": bool, "first_error_step": np.int64, "num_steps": np.int64,
    "pred_answer": object, "flags": object, "answer_rule": object,
}  # the rest: float64


class VerifyBatch:
    """Adds the verdict columns to a numpy batch; one instance per Ray Data actor."""

    def __init__(self, cfg: VerifierConfig | dict[str, Any] | None = None) -> None:
        self.cfg = cfg if isinstance(cfg, VerifierConfig) else VerifierConfig.model_validate(cfg or {})
        self.rows, self.seconds = 0, 0.0  # throughput of this actor (solutions/s = rows / seconds)
        # The math-verify child's start-up (~1-3 s) is paid here, not by the first rows.
        if not warmup():
            _LOG.warning("math-verify child did not start: LaTeX answers get symbolic_* flags")

    def verify_row(self, batch: dict[str, np.ndarray], i: int) -> Verdict:
        try:
            completion, gold = batch["completion"][i], batch["gold_answer"][i]
            if not isinstance(completion, str) or not isinstance(gold, str):
                return error_verdict()
            question = _optional_str(batch, "question", i)
            finish = _optional_str(batch, "finish_reason", i)
            return verify(completion, gold, question, finish_reason=finish, cfg=self.cfg)
        except Exception:  # noqa: BLE001 - one bad row is a flag, never a failed batch
            return error_verdict()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = [c for c in REQUIRED_COLUMNS if c not in batch]
        if missing:
            raise ValueError(f"VerifyBatch needs columns {missing}; got {sorted(batch)}")
        n = len(batch["completion"])
        start = time.perf_counter()
        rows = [_row(self.verify_row(batch, i)) for i in range(n)]
        self.rows, self.seconds = self.rows + n, self.seconds + time.perf_counter() - start
        _LOG.debug("verified %d rows, %.0f solutions/s so far", self.rows, self.rows / max(self.seconds, 1e-9))
        out = dict(batch)
        for col in VERDICT_COLUMNS:
            out[col] = np.array([r[col] for r in rows], dtype=_DTYPES.get(col, np.float64))
        if any(len(v) != n for v in out.values()):
            raise RuntimeError("VerifyBatch lost or duplicated rows")
        return out

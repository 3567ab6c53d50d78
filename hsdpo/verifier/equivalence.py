"""Is a predicted final answer equivalent to the gold one?

Plain numbers and numeric expressions compare as exact rationals in-process (`1/2` = `0.5`,
`$1,000` = `1000`, `-0` = `0`, `50%` = `50`); identical spellings compare as strings; the rest
(LaTeX: radicals, intervals, tuples, matrices, symbols) goes to math-verify in its child
process under the caller's deadline. Oversized answers never reach math-verify.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from fractions import Fraction

from hsdpo.verifier.answers import normalize
from hsdpo.verifier.exact import Limits, LimitExceeded, parse_number
from hsdpo.verifier.symbolic import symbolic_equal


@dataclass(frozen=True)
class Equivalence:
    equal: bool
    method: str  # "string" | "exact" | "symbolic" | "none"
    pred_value: Fraction | None = None
    gold_value: Fraction | None = None
    flags: tuple[str, ...] = ()


def safe_number(text: str, limits: Limits) -> tuple[Fraction | None, bool]:
    """(exact value or None, whether a size limit was hit)."""
    try:
        return parse_number(text, limits), False
    except LimitExceeded:
        return None, True


def answers_equivalent(
    pred: str, gold: str, deadline: float, limits: Limits, max_symbolic_chars: int = 600, memory_mb: int = 2048
) -> Equivalence:
    pv, pred_limit = safe_number(pred, limits)
    gv, _ = safe_number(gold, limits)
    if not pred.strip() or not gold.strip():
        return Equivalence(False, "none", pv, gv)
    if normalize(pred) == normalize(gold):
        return Equivalence(True, "string", pv, gv)
    if pv is not None and gv is not None:
        return Equivalence(pv == gv, "exact", pv, gv)
    if pred_limit:
        return Equivalence(False, "none", pv, gv, ("answer_too_large",))
    if len(pred) > max_symbolic_chars or len(gold) > max_symbolic_chars:
        return Equivalence(False, "none", pv, gv, ("answer_too_long",))
    if time.monotonic() >= deadline:
        return Equivalence(False, "none", pv, gv, ("symbolic_timeout",))
    res = symbolic_equal(gold, pred, deadline, memory_mb)
    flags: tuple[str, ...] = ()
    if res.status != "ok":
        flags = (f"symbolic_{res.status}",)
    elif not res.pred_parsed and pv is None:
        flags = ("unparseable_answer",)
    return Equivalence(res.equal, "symbolic", pv, gv, flags)

"""The six-dimensional error profile and the scores built from it (formulas: docs/verifier.md)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from fractions import Fraction

from hsdpo.verifier.config import VerifierConfig


@dataclass(frozen=True)
class ErrorProfile:
    """Six error dimensions in [0, 1], 0 = no error."""

    answer: float = 0.0
    numeric: float = 0.0
    arithmetic: float = 0.0
    logic: float = 0.0
    format: float = 0.0
    implausibility: float = 0.0

    def as_tuple(self) -> tuple[float, ...]:
        return (self.answer, self.numeric, self.arithmetic, self.logic, self.format, self.implausibility)


PROFILE_FIELDS = ("answer", "numeric", "arithmetic", "logic", "format", "implausibility")


def _log(v: Fraction) -> float:
    """Natural log of a positive Fraction of any size (float() would overflow past 1e308)."""
    return math.log(v.numerator) - math.log(v.denominator)


def numeric_distance(pred: Fraction | None, gold: Fraction | None, cfg: VerifierConfig) -> float:
    """min(1, ln(1 + |p-g|/s) / ln(1 + far)) with s = max(|g|, floor); 1 when either is missing."""
    if pred is None or gold is None:
        return 1.0
    if pred == gold:
        return 0.0
    scale = max(abs(gold), Fraction(cfg.numeric_scale_floor))
    rel = abs(pred - gold) / scale
    # ln(1 + rel) without float overflow: for huge rel it is ln(rel) to double precision.
    ln = math.log1p(float(rel)) if rel < 10**300 else _log(rel)
    return min(1.0, ln / math.log1p(cfg.numeric_far))


def _ramp(x: float, start: float, full: float) -> float:
    return min(1.0, max(0.0, (x - start) / (full - start)))


def magnitude_gap(pred: Fraction, gold: Fraction) -> float:
    """|log10(|p| / |g|)|, 0 when either is 0."""
    if pred == 0 or gold == 0:
        return 0.0
    return abs(_log(abs(pred) / abs(gold))) / math.log(10)


_WORDS = re.compile(r"\S+")


def repetition(text: str, n: int = 6, max_words: int = 4000) -> float:
    """Share of word n-grams that already occurred earlier in the text (0 for normal prose)."""
    words = _WORDS.findall(text[: max_words * 12])[:max_words]
    if len(words) < 4 * n:
        return 0.0
    seen: set[tuple[str, ...]] = set()
    repeats = 0
    for i in range(len(words) - n + 1):
        gram = tuple(words[i : i + n])
        repeats += gram in seen
        seen.add(gram)
    return repeats / (len(words) - n + 1)


def implausibility_parts(
    pred: Fraction | None, gold: Fraction | None, text_len: int, rep: float, cfg: VerifierConfig,
    *, has_answer: bool = False, too_large: bool = False,
) -> dict[str, float]:
    """Weighted implausibility components; the dimension is their maximum. `has_answer`: a final
    answer was found (`pred` None then means it has no numeric value); `too_large`: its value hit
    the evaluator's size limits (`1e999999`, `10^{10^{10}}`)."""
    parts = {
        "repetition": cfg.i_repetition * _ramp(rep, cfg.repetition_start, cfg.repetition_full),
        "length": cfg.i_length * _ramp(text_len, cfg.length_start, cfg.length_full),
    }
    if gold is not None and too_large:
        parts["magnitude"] = cfg.i_magnitude
    elif gold is not None and pred is None and has_answer:
        parts["wrong_kind"] = cfg.i_kind
    if pred is not None and gold is not None:
        parts["wrong_sign"] = cfg.i_sign * float(pred < 0 <= gold)
        parts["fraction"] = cfg.i_fraction * float(gold.denominator == 1 and pred.denominator != 1)
        gap = magnitude_gap(pred, gold)
        parts["magnitude"] = cfg.i_magnitude * _ramp(gap, cfg.magnitude_orders_start, cfg.magnitude_orders_full)
    return parts


def weighted_mean(values: tuple[float, ...], weights: tuple[float, ...]) -> float:
    return sum(v * w for v, w in zip(values, weights)) / sum(weights)


def wrongness(p: ErrorProfile, cfg: VerifierConfig) -> float:
    """How wrong: weighted mean of answer, numeric, arithmetic, logic."""
    return weighted_mean(
        (p.answer, p.numeric, p.arithmetic, p.logic), (cfg.w_answer, cfg.w_numeric, cfg.w_arithmetic, cfg.w_logic)
    )


def absurdity(p: ErrorProfile, cfg: VerifierConfig) -> float:
    """How obviously broken: weighted mean of format, implausibility, numeric."""
    return weighted_mean((p.format, p.implausibility, p.numeric), (cfg.a_format, cfg.a_implausibility, cfg.a_numeric))


def is_hard_negative(
    correct: bool, has_answer: bool, p: ErrorProfile, absurd: float, error_steps: int, cfg: VerifierConfig
) -> bool:
    """A wrong answer yet plausible and near: absurdity <= τ_A and (numeric <= τ_n or one localised
    step error). A right answer that is not correct (cut at the token limit under `require_complete`)
    is no hard negative: its flaw is the run-on text, not a near miss."""
    near = p.numeric <= cfg.tau_numeric or error_steps == 1
    return not correct and p.answer > 0 and has_answer and absurd <= cfg.tau_absurdity and near

"""Preference pairs from verified samples (pure Python: no ray, no torch): selection and weights.

Per problem (its samples, each a dict with the verdict columns):
- usable samples: those with a verdict the verifier reached and text. Every other sample is
  excluded, with a reason (`EXCLUDE_REASONS`) the stage counts as a reject: `error` (generation or
  verification failed), `verifier_error` (the verifier crashed on it: its `correct=False` says
  nothing), `verifier_undecided` (the symbolic answer check timed out or failed: a possibly right
  answer), `empty_completion`, `not_verified` (no verdict) and `non_finite_score` (a NaN or
  infinite wrongness / absurdity / err_numeric: a broken verdict, not the worst one, so it is
  neither ranked nor weighted);
- chosen: the best correct sample, lowest `wrongness`, then shortest completion, then lowest
  sample_id. When none is correct and `use_gold` is set, the gold solution (pair kind "gold");
- rejected (negatives="hard"): hard negatives first (kind "hard"), then the other wrong samples
  (kind "easy"), each group nearest-miss first (lowest wrongness, then absurdity, then
  sample_id), identical completions (stripped) once, up to `pairs_per_problem`. Samples with the right answer
  that are not correct (cut at the token limit, `verifier.require_complete`) come after every wrong
  answer, as the least wrong. A wrong sample whose text
  is the chosen text (stripped) is never a rejected one (excluded as `same_as_chosen`);
  (negatives="random"): a seeded uniform draw from all wrong samples, the ablation of mining;
  kind still says whether the drawn sample is a hard negative;
- a problem gives no pair when all usable samples are correct ("all_correct"), when none is
  correct and there is no gold to fall back on ("all_wrong_no_gold"), when it has no usable
  sample ("no_usable_samples"), or when every wrong sample is the chosen text
  ("no_distinct_negative").

Weight of a pair, from the rejected sample's verdict (ours; the paper gives no formula):
    w = clip(1 + λ · (1 − absurdity_r) · (1 − numeric_r), w_min, w_max)
a near-miss that is not absurd weighs up to 1 + λ, an absurd or far-off one 1. Then all weights
are divided by their mean, so the set averages 1 and the learning rate keeps its meaning.
`weighting="uniform"` gives every pair 1.

Rejected span (`rejected_span`). A hard negative is usually right up to one slip, and every token
after the slip is consistent with it: `27-5 = <<27-5=23>>23` then `23*2 = <<23*2=46>>46`. With the
whole rejected text in the loss, DPO lowers the probability of `23*2=46` — correct arithmetic on
the wrong number — and of copying `23` on, so a small model unlearns arithmetic and copying.
`rejected_span="first_error"` cuts the rejected completion after its first error, located by the
verifier (`first_error_step`): at the end of that step, or, when the chosen solution shares the
text up to a point inside that step past an `=` (both compute the same thing and part in the
result), right after the word (number) where the two first differ (`... <<27-5=23`). The tokens before the cut that both share cancel in the DPO margin, so the
preference lands on the slip itself. A cut completion gets no eos (`rejected_cut` is True). A
negative without a located step error (a wrong final answer only) keeps its whole text. Another
trainer reading these pairs must leave out the eos where `rejected_cut` is True: TRL's
`DPOTrainer`, which appends one to every rejected text, would train on "stop after the slip"
instead of the slip (pass `rejected_full`, or `rejected_span: full`, for it).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import Field, model_validator

from hsdpo.configbase import StrictModel

Row = dict[str, Any]
NO_PAIR_REASONS = ("all_correct", "all_wrong_no_gold", "no_usable_samples", "no_distinct_negative")
EXCLUDE_REASONS = ("error", "verifier_error", "verifier_undecided", "empty_completion", "not_verified",
                   "non_finite_score", "same_as_chosen")
SCORE_COLUMNS = ("wrongness", "absurdity", "err_numeric")  # what ranks and weighs a sample
UNDECIDED_FLAGS = {"symbolic_timeout", "symbolic_unavailable", "symbolic_error"}


class PairsConfig(StrictModel):
    output: str = Field("pairs", description="run-dir folder written")
    pairs_per_problem: int = Field(2, ge=1, description="rejected samples (pairs) per problem at most")
    weighting: Literal["verifier", "uniform"] = Field("verifier", description="verifier weights, or all 1 (ablation)")
    negatives: Literal["hard", "random"] = Field("hard", description="hard negatives first, or a random draw of wrong samples (ablation)")
    use_gold: bool = Field(True, description="use the gold solution as chosen when no sample is correct")
    lam: float = Field(1.0, ge=0, allow_inf_nan=False,
                       description="λ in w = clip(1 + λ(1-absurdity)(1-numeric), w_min, w_max)")
    w_min: float = Field(0.1, gt=0, allow_inf_nan=False, description="lower clip of a raw pair weight")
    w_max: float = Field(3.0, gt=0, allow_inf_nan=False, description="upper clip of a raw pair weight")
    rejected_span: Literal["full", "first_error"] = Field(
        "full", description="the whole rejected completion, or only up to its first error (verifier-located)")

    @model_validator(mode="after")
    def _clip_range(self) -> "PairsConfig":
        if self.w_min > self.w_max:
            raise ValueError("pairs.w_min must not exceed pairs.w_max")
        return self


@dataclass
class Pair:
    chosen: Row
    rejected: Row
    kind: str  # "hard" | "easy" | "gold"
    weight: float = 1.0
    rejected_text: str | None = None  # the rejected completion as trained on (None = in full)

    @property
    def rejected_cut(self) -> bool:
        return self.rejected_text is not None


@dataclass
class ProblemPairs:
    pairs: list[Pair] = field(default_factory=list)
    reason: str | None = None  # why there is no pair, one of NO_PAIR_REASONS
    excluded: list[tuple[Row, str]] = field(default_factory=list)  # (sample, one of EXCLUDE_REASONS)


def raw_weight(rejected: Row, cfg: PairsConfig) -> float:
    """clip(1 + λ(1 − absurdity)(1 − numeric), w_min, w_max) of the rejected sample; 1 when uniform."""
    if cfg.weighting == "uniform":
        return 1.0
    absurdity, numeric = float(rejected["absurdity"]), float(rejected["err_numeric"])
    if not (math.isfinite(absurdity) and math.isfinite(numeric)):
        raise ValueError(f"pair weight of a non-finite score (absurdity {absurdity}, err_numeric {numeric})")
    return min(cfg.w_max, max(cfg.w_min, 1.0 + cfg.lam * (1.0 - absurdity) * (1.0 - numeric)))


def normalise(weights: list[float]) -> list[float]:
    """Scale to mean 1 (an empty list stays empty)."""
    if not weights:
        return []
    mean = sum(weights) / len(weights)
    return [w / mean for w in weights]


def _finite(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def row_flags(row: Row) -> set[str]:
    """A verdict row's flags as a set (stored as a comma-joined string or a list)."""
    flags = row.get("flags")
    if isinstance(flags, str):
        return {f.strip() for f in flags.split(",")}
    return {str(f) for f in flags} if isinstance(flags, (list, tuple)) else set()


def unusable_reason(row: Row) -> str | None:
    """Why a sample can be neither chosen nor rejected (one of EXCLUDE_REASONS), or None."""
    if row.get("error"):
        return "error"
    flags = row_flags(row)
    if "verifier_error" in flags:
        return "verifier_error"
    if not row.get("correct") and flags & UNDECIDED_FLAGS:
        return "verifier_undecided"
    if not str(row.get("completion") or "").strip():
        return "empty_completion"
    if row.get("correct") is None:
        return "not_verified"
    if not all(_finite(row.get(c)) for c in SCORE_COLUMNS):
        return "non_finite_score"
    return None


def usable(row: Row) -> bool:
    return unusable_reason(row) is None


def best_correct(samples: list[Row]) -> Row | None:
    correct = [r for r in samples if r["correct"]]
    return min(correct, key=lambda r: (r["wrongness"], len(r["completion"]), r["sample_id"]), default=None)


def gold_row(problem: Row) -> Row | None:
    """The gold solution as a chosen sample (sample_id -1), or None without a gold solution."""
    solution = str(problem.get("gold_solution") or "").strip()
    if not solution:
        return None
    return {"sample_id": -1, "completion": solution, "correct": True, "pred_answer": problem.get("gold_answer"),
            "flags": "gold"}


def _nearest_first(r: Row) -> tuple:
    return (r["wrongness"], r["absurdity"], r["sample_id"])


def _distinct(rows: list[Row]) -> list[Row]:
    """The first row of each completion text (stripped, as `same_as_chosen` compares), in order: a
    text twice would make the same pair twice."""
    out, seen = [], set()
    for r in rows:
        text = str(r["completion"]).strip()
        if text not in seen:
            seen.add(text)
            out.append(r)
    return out


def pick_negatives(wrong: list[Row], cfg: PairsConfig, rng: random.Random) -> list[Row]:
    if cfg.negatives == "random":  # a draw among distinct texts, as the mined ones are
        distinct = _distinct(wrong)
        return rng.sample(distinct, min(len(distinct), cfg.pairs_per_problem))
    hard = sorted((r for r in wrong if r["hard_negative"]), key=_nearest_first)
    # a right answer that is not correct (cut at the token limit) has the lowest wrongness of all,
    # and is the least wrong: after every wrong answer
    easy = sorted((r for r in wrong if not r["hard_negative"]), key=lambda r: (_right_answer(r), *_nearest_first(r)))
    return _distinct(hard + easy)[: cfg.pairs_per_problem]


def _right_answer(r: Row) -> bool:
    return _finite(r.get("err_answer")) and float(r["err_answer"]) == 0.0


def first_error_cut(rejected: str, chosen: str, first_error_step: int) -> str | None:
    """The rejected completion up to its first error (see the module docstring), or None to keep
    it whole (no located step error, or the cut would keep everything)."""
    from hsdpo.verifier.steps import split_steps

    steps = split_steps(rejected)
    if not 0 <= first_error_step < len(steps):
        return None
    step = steps[first_error_step]
    end = step.start + len(step.text)
    shared = 0
    for a, b in zip(rejected, chosen):
        if a != b:
            break
        shared += 1
    if step.start <= shared < end and "=" in rejected[step.start:shared]:
        # they agree on what the step computes and part in its result: cut after the word they part at
        end = shared + 1
        while end < len(rejected) and rejected[end - 1].isalnum() and rejected[end].isalnum():
            end += 1
    cut = rejected[:end].rstrip()
    return cut if cut and cut != rejected.rstrip() else None


def select_pairs(problem: Row, samples: list[Row], cfg: PairsConfig, seed: int = 0) -> ProblemPairs:
    """The pairs of one problem (weights raw, not yet normalised), or the reason there are none;
    either way the samples left out, each with its reason."""
    reasons = [unusable_reason(r) for r in samples]
    excluded = [(r, why) for r, why in zip(samples, reasons) if why is not None]
    samples = [r for r, why in zip(samples, reasons) if why is None]
    if not samples:
        return ProblemPairs(reason="no_usable_samples", excluded=excluded)
    wrong = sorted((r for r in samples if not r["correct"]), key=lambda r: r["sample_id"])
    chosen = best_correct(samples)
    if chosen is None and cfg.use_gold:
        chosen = gold_row(problem)
    if not wrong:
        return ProblemPairs(reason="all_correct", excluded=excluded)
    if chosen is None:
        return ProblemPairs(reason="all_wrong_no_gold", excluded=excluded)
    same = str(chosen["completion"]).strip()  # chosen == rejected carries no preference
    excluded += [(r, "same_as_chosen") for r in wrong if str(r["completion"]).strip() == same]
    wrong = [r for r in wrong if str(r["completion"]).strip() != same]
    if not wrong:
        return ProblemPairs(reason="no_distinct_negative", excluded=excluded)
    rng = random.Random(f"{seed}/{problem['problem_id']}")
    pairs = []
    for r in pick_negatives(wrong, cfg, rng):
        kind = "gold" if chosen["sample_id"] == -1 else ("hard" if r["hard_negative"] else "easy")
        text = None
        if cfg.rejected_span == "first_error":
            step = r.get("first_error_step")
            text = first_error_cut(str(r["completion"]), str(chosen["completion"]), -1 if step is None else int(step))
        pairs.append(Pair(chosen=chosen, rejected=r, kind=kind, weight=raw_weight(r, cfg), rejected_text=text))
    return ProblemPairs(pairs=pairs, excluded=excluded)


def normalise_pairs(pairs: list[Pair]) -> None:
    """Set each pair's weight so that the set averages 1, in place."""
    for p, w in zip(pairs, normalise([p.weight for p in pairs])):
        p.weight = w


def weight_stats(pairs: list[Pair]) -> dict[str, float]:
    ws = [p.weight for p in pairs]
    if not ws:
        return {"weight_min": 0.0, "weight_mean": 0.0, "weight_max": 0.0}
    return {"weight_min": min(ws), "weight_mean": sum(ws) / len(ws), "weight_max": max(ws)}

"""Preference pairs from verified samples (pure Python: no ray, no torch): selection and weights.

Per problem (its samples, each a dict with the verdict columns):
- usable samples: those without an `error` (generation or verification failed) and with text;
- chosen: the best correct sample, lowest `wrongness`, then shortest completion, then lowest
  sample_id. When none is correct and `use_gold` is set, the gold solution (pair kind "gold");
- rejected (negatives="hard"): hard negatives first (kind "hard"), then the other wrong samples
  (kind "easy"), each group nearest-miss first (lowest wrongness, then absurdity, then
  sample_id), identical completions once, up to `pairs_per_problem`.
  (negatives="random"): a seeded uniform draw from all wrong samples, the ablation of mining;
  kind still says whether the drawn sample is a hard negative;
- a problem gives no pair when all usable samples are correct ("all_correct"), when none is
  correct and there is no gold to fall back on ("all_wrong_no_gold"), or when it has no usable
  sample ("no_usable_samples").

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
negative without a located step error (a wrong final answer only) keeps its whole text.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import Field, model_validator

from hsdpo.configbase import StrictModel

Row = dict[str, Any]
NO_PAIR_REASONS = ("all_correct", "all_wrong_no_gold", "no_usable_samples")


class PairsConfig(StrictModel):
    output: str = Field("pairs", description="run-dir folder written")
    pairs_per_problem: int = Field(2, ge=1, description="rejected samples (pairs) per problem at most")
    weighting: Literal["verifier", "uniform"] = Field("verifier", description="verifier weights, or all 1 (ablation)")
    negatives: Literal["hard", "random"] = Field("hard", description="hard negatives first, or a random draw of wrong samples (ablation)")
    use_gold: bool = Field(True, description="use the gold solution as chosen when no sample is correct")
    lam: float = Field(1.0, ge=0, description="λ in w = clip(1 + λ(1-absurdity)(1-numeric), w_min, w_max)")
    w_min: float = Field(0.1, gt=0, description="lower clip of a raw pair weight")
    w_max: float = Field(3.0, gt=0, description="upper clip of a raw pair weight")
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


def raw_weight(rejected: Row, cfg: PairsConfig) -> float:
    """clip(1 + λ(1 − absurdity)(1 − numeric), w_min, w_max) of the rejected sample; 1 when uniform."""
    if cfg.weighting == "uniform":
        return 1.0
    absurdity, numeric = float(rejected["absurdity"]), float(rejected["err_numeric"])
    return min(cfg.w_max, max(cfg.w_min, 1.0 + cfg.lam * (1.0 - absurdity) * (1.0 - numeric)))


def normalise(weights: list[float]) -> list[float]:
    """Scale to mean 1 (an empty list stays empty)."""
    if not weights:
        return []
    mean = sum(weights) / len(weights)
    return [w / mean for w in weights]


def usable(row: Row) -> bool:
    return not row.get("error") and bool(str(row.get("completion") or "").strip())


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


def pick_negatives(wrong: list[Row], cfg: PairsConfig, rng: random.Random) -> list[Row]:
    if cfg.negatives == "random":
        return rng.sample(wrong, min(len(wrong), cfg.pairs_per_problem))
    hard = sorted((r for r in wrong if r["hard_negative"]), key=_nearest_first)
    easy = sorted((r for r in wrong if not r["hard_negative"]), key=_nearest_first)
    out, seen = [], set()
    for r in hard + easy:
        if r["completion"] not in seen and len(out) < cfg.pairs_per_problem:
            seen.add(r["completion"])
            out.append(r)
    return out


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
    """The pairs of one problem (weights raw, not yet normalised), or the reason there are none."""
    samples = [r for r in samples if usable(r)]
    if not samples:
        return ProblemPairs(reason="no_usable_samples")
    wrong = sorted((r for r in samples if not r["correct"]), key=lambda r: r["sample_id"])
    chosen = best_correct(samples)
    if chosen is None and cfg.use_gold:
        chosen = gold_row(problem)
    if not wrong:
        return ProblemPairs(reason="all_correct")
    if chosen is None:
        return ProblemPairs(reason="all_wrong_no_gold")
    rng = random.Random(f"{seed}/{problem['problem_id']}")
    pairs = []
    for r in pick_negatives(wrong, cfg, rng):
        kind = "gold" if chosen["sample_id"] == -1 else ("hard" if r["hard_negative"] else "easy")
        text = None
        if cfg.rejected_span == "first_error":
            step = r.get("first_error_step")
            text = first_error_cut(str(r["completion"]), str(chosen["completion"]), -1 if step is None else int(step))
        pairs.append(Pair(chosen=chosen, rejected=r, kind=kind, weight=raw_weight(r, cfg), rejected_text=text))
    return ProblemPairs(pairs=pairs)


def normalise_pairs(pairs: list[Pair]) -> None:
    """Set each pair's weight so that the set averages 1, in place."""
    for p, w in zip(pairs, normalise([p.weight for p in pairs])):
        p.weight = w


def weight_stats(pairs: list[Pair]) -> dict[str, float]:
    ws = [p.weight for p in pairs]
    if not ws:
        return {"weight_min": 0.0, "weight_mean": 0.0, "weight_max": 0.0}
    return {"weight_min": min(ws), "weight_mean": sum(ws) / len(ws), "weight_max": max(ws)}

"""`verify(solution, gold, question=None) -> Verdict`: the MathVerifier entry point.

One call extracts the final answer, checks every computation in the chain of thought exactly,
grounds its operands in the question, scores the six error dimensions and aggregates them
into wrongness, absurdity and the hard-negative decision. It never raises on model text and
finishes within `cfg.timeout_s` on any thread (a timeout is a flag on the verdict).

    from hsdpo.verifier import verify
    v = verify(completion, "72", question)   # v.correct, v.profile.arithmetic, v.hard_negative
"""

from __future__ import annotations

import functools
import re
import time
from dataclasses import dataclass, field
from fractions import Fraction

from hsdpo.verifier.answers import MARKER_RULES, answer_candidates, extract_answer, normalize
from hsdpo.verifier.config import VerifierConfig
from hsdpo.verifier.equivalence import Equivalence, answers_equivalent, safe_number
from hsdpo.verifier.exact import Limits
from hsdpo.verifier.grounding import is_grounded, question_quantities
from hsdpo.verifier.scores import (
    ErrorProfile,
    absurdity,
    implausibility_parts,
    is_hard_negative,
    numeric_distance,
    repetition,
    wrongness,
)
from hsdpo.verifier.steps import Computation, Step, check_step, named_values, result_matches, split_steps


@dataclass(frozen=True)
class Verdict:
    correct: bool
    pred_answer: str | None
    profile: ErrorProfile
    wrongness: float
    absurdity: float
    hard_negative: bool
    first_error_step: int | None
    num_steps: int
    flags: tuple[str, ...]
    answer_rule: str = "none"  # the extraction rule that found pred_answer (answers.Extraction.rule)


@dataclass
class _Analysis:
    """What the chain of thought says, step by step."""

    steps: list[Step]
    comps: list[Computation] = field(default_factory=list)
    error_steps: set[int] = field(default_factory=set)
    stated: dict[int, tuple[Fraction, ...]] = field(default_factory=dict)  # step -> numbers after `=`
    logic_breaks: int = 0
    logic_checks: int = 0
    flags: list[str] = field(default_factory=list)


_DEFAULT_CFG = VerifierConfig()
_LIMITS: dict[tuple[int, ...], Limits] = {}
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")
_SENTENCE_END = re.compile(r"[.!?][\"'”’)\]}]*\s*$")


def _limits(cfg: VerifierConfig) -> Limits:
    key = (cfg.max_expr_tokens, cfg.max_depth, cfg.max_exponent, cfg.max_bits)
    if key not in _LIMITS:
        _LIMITS[key] = Limits(max_tokens=key[0], max_depth=key[1], max_exponent=key[2], max_bits=key[3])
    return _LIMITS[key]


@functools.lru_cache(maxsize=8)
def _constants(values: tuple[float, ...]) -> frozenset[Fraction]:
    return frozenset(abs(Fraction(str(v))) for v in values)  # via str: 0.1 is 1/10, not the float


def sanitize(text: str) -> str:
    """Lone surrogates become U+FFFD, control characters (but tab and newline) vanish."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if _SURROGATE.search(text):
        text = _SURROGATE.sub("\ufffd", text)
    return _CONTROL.sub("", text)


def _flag_step(a: _Analysis, step: int, flag: str) -> None:
    a.error_steps.add(step)
    a.flags.append(flag)


def _check_named_values(a: _Analysis, limits: Limits) -> None:
    """`Total = 50` in one step and `Total = 60` in another: one quantity, two values."""
    named: dict[str, Fraction] = {}
    for step in a.steps:
        for name, value in named_values(step, limits):
            if name in named:
                a.logic_checks += 1
                if named[name] != value:
                    a.logic_breaks += 1
                    _flag_step(a, step.index, "conflicting_values")
            named[name] = value


def _analyse_steps(text: str, question: str | None, cfg: VerifierConfig, limits: Limits, deadline: float) -> _Analysis:
    a = _Analysis(split_steps(text))
    known: set[Fraction] | None = None
    if question is not None and cfg.check_grounding:
        known = set(question_quantities(question, limits)) | _constants(tuple(cfg.constants))
    for step in a.steps:
        if time.monotonic() > deadline:
            a.flags.append("timeout")
            break
        check = check_step(step, limits, cfg.step_tolerance_ulps)
        if check.stated:
            a.stated[step.index] = check.stated
        for c in check.computations:
            a.comps.append(c)
            if not c.ok:
                _flag_step(a, step.index, "arithmetic_error")
            if known is not None:
                a.logic_checks += 1
                if not all(is_grounded(o.value, o.decimals, known) for o in c.operands):
                    a.logic_breaks += 1
                    _flag_step(a, step.index, "ungrounded_operand")
                known.update((abs(c.value), abs(c.shown), *(abs(v) for v in c.partials)))
        if known is not None:  # a quantity stated in a step grounds the steps after it
            known.update(abs(v) for v in check.quantities)
    _check_named_values(a, limits)
    return a


def _check_final(a: _Analysis, pred: str, pred_value: Fraction | None, answer_at: int) -> None:
    """The final answer should be a result of the last step that computes (possibly x100: cents, %),
    or be written after an `=` between that step and the answer: an equation we cannot check
    (`3 green hats + 16 pink hats = 19 hats`) still computes it."""
    if pred_value is None or not a.comps:
        return
    last_step = a.comps[-1].step
    answer_step = max((s.index for s in a.steps if s.start <= answer_at), default=len(a.steps) - 1)
    scales = (1, 100, Fraction(1, 100))
    results = {v * k for c in a.comps if c.step == last_step for v in (c.shown, c.value) for k in scales}
    results.update(v * k for i, vs in a.stated.items() if last_step <= i <= answer_step for v in vs for k in scales)
    a.logic_checks += 1
    rounded = any(result_matches(c.value * k, pred_value, _decimals(pred)) for c in a.comps[-1:] for k in (1, 100))
    if pred_value in results or rounded:
        return
    a.logic_breaks += 1
    _flag_step(a, max(answer_step, 0), "final_not_last_result")


def _decimals(answer: str) -> int:
    tail = answer.rsplit(".", 1)[1] if "." in answer else ""
    return len(tail) if tail.isdigit() else 0


def _format_parts(
    text: str, rule: str, pred: str | None, eq: Equivalence | None, finish_reason: str | None, cfg: VerifierConfig,
    limits: Limits, deadline: float,
) -> dict[str, float]:
    parts: dict[str, float] = {}
    if pred is None:
        parts["no_answer"] = cfg.f_no_answer
    elif rule not in MARKER_RULES:
        parts["no_answer_marker"] = cfg.f_no_marker
    tail = text.rstrip()
    cut = rule not in MARKER_RULES and (not _SENTENCE_END.search(tail[-8:]) or tail.rfind("<<") > tail.rfind(">>"))
    if finish_reason == "length" or cut:
        parts["truncated"] = cfg.f_truncated
    if eq is not None and "unparseable_answer" in eq.flags:
        parts["unparseable_answer"] = cfg.f_unparseable
    if pred is not None and rule in MARKER_RULES and _conflicting(text, pred, eq, cfg, limits, deadline):
        parts["conflicting_answers"] = cfg.f_conflicting
    return parts


def _conflicting(
    text: str, pred: str, eq: Equivalence | None, cfg: VerifierConfig, limits: Limits, deadline: float
) -> bool:
    """Another marked answer that differs from the final one. A numeric answer is only compared
    with numeric candidates: prose after "the answer is" ("therefore 3") is no second answer."""
    others = {normalize(c): c for c in answer_candidates(text) if normalize(c) != normalize(pred)}
    pred_value = eq.pred_value if eq is not None else None
    for other in list(others.values())[:3]:
        if pred_value is not None:
            value, _ = safe_number(other, limits)
            if value is not None and value != pred_value:
                return True
        elif not _equivalent(other, pred, cfg, limits, deadline).equal:
            return True
    return False


def _equivalent(pred: str, gold: str, cfg: VerifierConfig, limits: Limits, deadline: float) -> Equivalence:
    return answers_equivalent(pred, gold, deadline, limits, cfg.max_symbolic_chars, cfg.symbolic_memory_mb)


def _verify(
    solution: str, gold: str, question: str | None, finish_reason: str | None, cfg: VerifierConfig, deadline: float
) -> Verdict:
    limits = _limits(cfg)
    text, gold = sanitize(solution), sanitize(gold).strip()
    question = sanitize(question[: cfg.max_question_chars]) if question is not None else None
    flags: list[str] = []
    analysed = text
    if len(text) > cfg.max_chars:
        analysed = text[: cfg.max_chars]
        flags.append("input_truncated")
    ext = extract_answer(text)
    pred = ext.answer
    # Steps get half the budget at most, the symbolic check the rest.
    a = _analyse_steps(analysed, question, cfg, limits, time.monotonic() + (deadline - time.monotonic()) / 2)
    eq = None
    # The symbolic check stops a little before the deadline: killing a late child takes a moment.
    symbolic_deadline = deadline - min(0.05, 0.05 * cfg.timeout_s)
    if pred is not None:
        eq = _equivalent(pred, gold, cfg, limits, symbolic_deadline)
        flags += eq.flags
        if cfg.final_must_be_last_result:
            _check_final(a, pred, eq.pred_value, ext.start)
    equal = eq is not None and eq.equal
    gold_value = eq.gold_value if eq is not None else safe_number(gold, limits)[0]
    pred_value = eq.pred_value if eq is not None else None

    fmt = _format_parts(text, ext.rule, pred, eq, finish_reason, cfg, limits, symbolic_deadline)
    impl = implausibility_parts(pred_value, gold_value, len(text), repetition(analysed), cfg,
                                has_answer=pred is not None and not equal,
                                too_large=not equal and eq is not None and "answer_too_large" in eq.flags)
    arithmetic = sum(not c.ok for c in a.comps) / len(a.comps) if a.comps else 0.0
    profile = ErrorProfile(
        answer=0.0 if equal else 1.0,
        numeric=0.0 if equal else numeric_distance(pred_value, gold_value, cfg),
        arithmetic=arithmetic,
        logic=min(1.0, a.logic_breaks / a.logic_checks) if a.logic_checks else 0.0,
        format=max(fmt.values(), default=0.0),
        implausibility=0.0 if equal else max(impl.values(), default=0.0),
    )
    if equal:  # a right answer can still come with a runaway, repetitive text
        profile = ErrorProfile(*profile.as_tuple()[:5], max(impl["repetition"], impl["length"]))
    correct = equal and not (cfg.require_complete and finish_reason == "length")
    absurd = absurdity(profile, cfg)
    flags += a.flags + list(fmt) + [k for k, v in impl.items() if v > 0]
    if not gold:
        flags.append("empty_gold")
    return Verdict(
        correct=correct,
        pred_answer=pred,
        profile=profile,
        wrongness=wrongness(profile, cfg),
        absurdity=absurd,
        hard_negative=is_hard_negative(correct, pred is not None, profile, absurd, len(a.error_steps), cfg),
        first_error_step=min(a.error_steps) if a.error_steps else None,
        num_steps=len(a.steps),
        flags=tuple(dict.fromkeys(flags)),
        answer_rule=ext.rule if pred is not None else "none",
    )


def error_verdict(flag: str = "verifier_error") -> Verdict:
    """The verdict of a solution that could not be verified: wrong, unexplained, never a hard negative."""
    profile = ErrorProfile(answer=1.0, numeric=1.0, format=1.0)
    cfg = _DEFAULT_CFG
    return Verdict(False, None, profile, wrongness(profile, cfg), absurdity(profile, cfg), False, None, 0, (flag,))


def verify(
    solution: str,
    gold: str,
    question: str | None = None,
    *,
    finish_reason: str | None = None,
    cfg: VerifierConfig | None = None,
) -> Verdict:
    """Verify one solution against the gold final answer (e.g. "72" or "\\frac{\\pi}{2}")."""
    if not isinstance(solution, str) or not isinstance(gold, str):
        raise TypeError("verify() needs str solution and gold")
    if question is not None and not isinstance(question, str):
        raise TypeError("verify() needs a str question or None")
    cfg = cfg or _DEFAULT_CFG
    deadline = time.monotonic() + cfg.timeout_s
    try:
        return _verify(solution, gold, question, finish_reason, cfg, deadline)
    except Exception:  # noqa: BLE001 - a bug on odd input must cost one row, not a pipeline
        return error_verdict()

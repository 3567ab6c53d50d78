"""Chain-of-thought steps and the checkable computations inside them.

A step is a non-empty line (long lines are split at sentence ends). A computation is either a
GSM8K calculator annotation `<<48/2=24>>` or an inline equality found in the visible text:
a run of numbers, operators and parentheses (`$`, `%`, thousands separators, mixed numbers,
`plus`/`times`/`equals` and LaTeX such as `\\frac`, `\\cdot`, `\\times`, `\\sqrt` allowed) split
at `=`. Each adjacent pair of sides where one side is a computation is checked exactly; a result
shown with fewer digits than its exact value needs counts as right when it is a rounding or
truncation of it (`10/3 = 3.33`).

Prose is not maths, so a few readings keep true statements from being flagged: unit words
between a number and an operator are dropped (`23 meters – 13 meters = 10`); a number glued to
a letter is algebra (`2x + 3 = 7`), one after a word that opens a chain is a label
(`Week 2 = 35 + 35 = 70`); `50 - 20 = 30%` may mean 30 percent points and `25 / 1/3` 25 / (1/3).
What remains unreadable is skipped, never guessed as wrong.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction
from typing import NamedTuple

from hsdpo.verifier.exact import (
    DEFAULT_LIMITS,
    LimitExceeded,
    Limits,
    NotExact,
    Tok,
    evaluate_partials,
    evaluate_tokens,
    has_operator,
    tokenize,
)

MAX_STEP_CHARS = 400  # longer lines are split at sentence ends
MAX_CHUNK_CHARS = 1_000  # and sentences longer than this into chunks
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\\$])")
_ANNOTATION = re.compile(r"<<([^<>\n]{0,200})>>")


@dataclass(frozen=True)
class Step:
    index: int
    start: int  # offset in the solution text
    text: str


class Operand(NamedTuple):
    value: Fraction
    decimals: int


@dataclass(frozen=True)
class Computation:
    step: int
    expr: str  # the computation as written
    value: Fraction  # exact value of the computed side
    shown: Fraction  # the value it is said to equal
    decimals: int  # digits shown in `shown`
    operands: tuple[Operand, ...]
    ok: bool
    source: str  # "annotation" | "inline"
    partials: tuple[Fraction, ...] = ()  # value of each operation of the computed side (`2*23 - 4`: 46, 42)


def split_steps(text: str) -> list[Step]:
    """Non-empty lines; a line over MAX_STEP_CHARS is split at sentence ends, and what is still
    over MAX_CHUNK_CHARS into chunks, so that the time budget is checked between bounded steps."""
    steps: list[Step] = []
    for line in re.finditer(r"[^\n]+", text):
        if len(line.group()) <= MAX_STEP_CHARS:
            parts = [(line.start(), line.group())]
        else:
            bounds = [0] + [m.end() for m in _SENTENCE_END.finditer(line.group())] + [len(line.group())]
            parts = [(line.start() + a, line.group()[a:b]) for a, b in zip(bounds, bounds[1:])]
        for at, part in parts:
            for k in range(0, len(part), MAX_CHUNK_CHARS):
                chunk = part[k : k + MAX_CHUNK_CHARS]
                if chunk.strip():
                    steps.append(Step(len(steps), at + k, chunk))
    return steps


def result_matches(value: Fraction, shown: Fraction, decimals: int, ulps: float = 1.0) -> bool:
    """Exact equality, or a rounding/truncation of `value` to the `decimals` digits shown."""
    if value == shown:
        return True
    unit = Fraction(1, 10**decimals)
    if (value / unit).denominator == 1:  # exactly representable at the shown precision: must be equal
        return False
    return abs(value - shown) < unit * Fraction(ulps)


def _side_result(toks: list[Tok]) -> tuple[Fraction, int] | None:
    """(value, decimals) of a side that is a lone, possibly signed, number."""
    if len(toks) == 1 and toks[0].kind == "NUM":
        return toks[0].value, toks[0].decimals  # type: ignore[return-value]
    if len(toks) == 2 and toks[0].kind == "OP" and toks[0].text in "+-" and toks[1].kind == "NUM":
        v = toks[1].value
        return (-v if toks[0].text == "-" else v), toks[1].decimals  # type: ignore[operator,return-value]
    return None


def _operands(toks: list[Tok]) -> tuple[Operand, ...]:
    return tuple(Operand(t.value, t.decimals) for t in toks if t.kind == "NUM" and t.value is not None)


_GLUE = Tok("BREAK", "", 0, 0)
_GLUE_CHARS = set(":,._'’@#&|~\\")


def _is_word(t: Tok) -> bool:
    return t.text[:1].isalnum() or t.text[:1] == "\\"


_ORDINALS = frozenset(("st", "nd", "rd", "th"))
_NOT_UNITS = frozenset(
    "times more less fewer than as of and or is are was were be equals plus minus by because so then thus "
    "which that since if to from for in on at with when while but after before".split()
)


def _is_unit(w: Tok, prev: Tok) -> bool:
    """A word that can name a unit: `apples`, `kg` (also glued: `7kg`), not `5A`, `3rd` or `because`."""
    if w.kind != "BREAK" or len(w.text) < 2 or not w.text.isalpha() or w.text.lower() in _NOT_UNITS:
        return False
    return w.start > prev.end or w.text.lower() not in _ORDINALS


def _unit_words(toks: list[Tok], j: int) -> tuple[int, str]:
    """End index and key (last word, no plural s) of the unit words starting at toks[j]:
    at most two words, plus `per X` / `/X`."""
    n, words, key = len(toks), 0, ""
    while j < n:
        w = toks[j]
        if w.kind == "BREAK" and w.text.lower() == "per" and j + 1 < n and toks[j + 1].kind == "BREAK":
            j += 2
        elif w.text == "/" and j + 1 < n and toks[j + 1].kind == "BREAK" and toks[j + 1].text.isalpha():
            j += 2  # `miles/hour`, `$5400/week`
        elif words < 2 and _is_unit(w, toks[j - 1]):
            words, key = words + 1, w.text.lower().rstrip("s")
            j += 1
        else:
            break
    return j, key


def _drop_units(toks: list[Tok]) -> list[Tok]:
    """Remove unit words after a number, before an operator or `=`: `23 total meters – 13 meters = 10`
    -> `23 – 13 = 10`, `$5400/week * 4 weeks` -> `5400 * 4`. `14 hours = 14 * 60` keeps its words (a
    conversion, not a sum), and a sum of different units (`4 pounds - 6 ounces`) is marked BAD."""
    out: list[Tok] = []
    units: set[str] = set()
    additive = False
    i, n = 0, len(toks)
    while i < n:
        t = toks[i]
        if t.kind in ("EQ", "BREAK"):
            if additive and len(units) > 1:
                out.append(Tok("BAD", "", t.start, t.start))
            units, additive = set(), False
        additive |= t.kind == "OP" and t.text in "+-"
        out.append(t)
        i += 1
        if t.kind not in ("NUM", "RP") or i >= n:
            continue
        j, key = _unit_words(toks, i)
        if j == i or j >= n or toks[j].kind not in ("OP", "EQ"):
            continue
        if toks[j].kind == "EQ" and not _side_has_op(out):
            continue
        if key:
            units.add(key)
        i = j
    if additive and len(units) > 1:
        out.append(Tok("BAD", "", 0, 0))
    return out


def _side_has_op(out: list[Tok]) -> bool:
    for t in reversed(out):
        if t.kind in ("EQ", "BREAK"):
            return False
        if t.kind == "OP":
            return True
    return False


def _glues(brk: Tok, before: Tok | None, after: Tok | None) -> tuple[bool, bool]:
    """Whether BREAK `brk` makes the token right before / right after it part of something that is
    not a quantity: algebra (`5A`, `2x`, `S+`, `2\\pi`), ordinals (`3rd`), times and typos (`6:48`,
    `16,0000`). Multi-letter words glued to a number are units (`7kg`) and glue nothing."""
    touch_b = before is not None and before.end == brk.start
    touch_a = after is not None and after.start == brk.end and after.kind != "BREAK"
    text = brk.text
    if text[:1] == "\\" or text[:1].isdigit() or len(text) == 1 and text.isalpha():
        return touch_b, touch_a
    if text.isalpha():
        return touch_b and text.lower() in _ORDINALS, False
    if text == "_":  # a subscript index (`a_1`) is a name, not a quantity
        return touch_b, touch_a
    if text in _GLUE_CHARS and touch_b and touch_a:
        return True, True
    return False, False


def _runs(toks: list[Tok]) -> list[list[Tok]]:
    """Maximal runs of tokens without a BREAK, with glue tokens marking what is not a quantity
    (see `_glues`); a run starting with an operator after a word (`S + 143 = ...`) lacks its first
    operand, and a lone number after a word opening a chain (`Week 2 = 35 + 35 = 70`) is a label."""
    runs: list[list[Tok]] = []
    cur: list[Tok] = []
    prev: Tok | None = None  # the BREAK before the current run
    for i, t in enumerate(toks):
        if t.kind != "BREAK":
            if not cur and prev is not None and _is_word(prev) and t.kind == "OP":
                cur.append(_GLUE)
            cur.append(t)
            continue
        nxt = toks[i + 1] if i + 1 < len(toks) else None
        glue_before, glue_after = _glues(t, cur[-1] if cur else None, nxt)
        if glue_before:
            cur.append(_GLUE)
        if cur:
            runs.append(cur)
        cur = [_GLUE] if glue_after else []
        prev = t
        if not cur and _is_word(t) and nxt is not None and nxt.kind == "NUM":
            cur = [Tok("LABEL", "", t.end, t.end)]
    if cur:
        runs.append(cur)
    return runs


def _sides(run: list[Tok]) -> list[list[Tok] | None]:
    """Split a run at `=`; a side holding a glue token becomes None (not checkable)."""
    sides: list[list[Tok] | None] = [[]]
    label = bool(run) and run[0].kind == "LABEL"
    for t in run[label:]:
        if t.kind == "EQ":
            sides.append([])
        elif t.kind in ("BREAK", "BAD"):
            sides[-1] = None
        elif sides[-1] is not None:
            sides[-1].append(t)
    if label and len(sides) >= 3 and sides[0] is not None and _side_result(sides[0]) is not None:
        sides[0] = None
    return sides


def _plain_percent(toks: list[Tok]) -> list[Tok]:
    """`20%` read as 20: writers mix "= 50%" with the 50 they computed."""
    return [
        t._replace(value=t.value * 100, decimals=max(0, t.decimals - 2)) if "%" in t.text else t  # type: ignore[operator]
        for t in toks
    ]


def _tight_fractions(toks: list[Tok]) -> list[Tok]:
    """`25 / 1/3` read as 25 / (1/3): an unspaced a/b is one number to its writer."""
    out: list[Tok] = []
    i = 0
    while i < len(toks):
        a = toks[i]
        if i + 2 < len(toks) and a.kind == "NUM" and toks[i + 1].text == "/" and toks[i + 2].kind == "NUM":
            if a.end == toks[i + 1].start and toks[i + 1].end == toks[i + 2].start:
                out += [Tok("LP", "(", a.start, a.start), a, toks[i + 1], toks[i + 2], Tok("RP", ")", a.end, a.end)]
                i += 3
                continue
        out.append(a)
        i += 1
    return out


def _variants(comp: list[Tok], shown: tuple[Fraction, int]) -> list[tuple[list[Tok], tuple[Fraction, int]]]:
    pct_shown = (shown[0] * 100, max(0, shown[1] - 2))
    tight = _tight_fractions(comp)
    return [(c, s) for c in (comp, _plain_percent(comp), tight, _plain_percent(tight)) for s in (shown, pct_shown)]


def _check_pair(
    step: int, lhs: list[Tok], rhs: list[Tok], text: str, source: str, limits: Limits, ulps: float
) -> Computation | None:
    lres, rres = _side_result(lhs), _side_result(rhs)
    if lres is not None and rres is not None:
        return None  # `x = 5`-style restatement: nothing computed
    comp, shown_toks, shown_res = (rhs, lhs, lres) if lres is not None else (lhs, rhs, rres)
    if not has_operator(comp):
        return None
    try:
        value, partials = evaluate_partials(comp, limits)
        shown, decimals = shown_res if shown_res is not None else (evaluate_tokens(shown_toks, limits), 0)
    except (NotExact, LimitExceeded):
        return None
    # A shown expression (`a = b*c`) must match exactly; a shown number may be rounded.
    tol = ulps if shown_res is not None else 0.0
    ok = result_matches(value, shown, decimals, tol)
    carried_on = len(shown_toks) > 2 and shown_toks[0].kind == "NUM" and shown_toks[1].kind == "OP"
    if not ok and shown_res is None and carried_on:
        # `7 x 60 = 420 + 23 = 443`: the writer carried on from the result.
        ok = result_matches(value, shown_toks[0].value, shown_toks[0].decimals, ulps)  # type: ignore[arg-type]
    if not ok and any("%" in t.text or t.text == "/" for t in comp + shown_toks):
        ok = any(_matches_variant(c, s, limits, tol) for c, s in _variants(comp, (shown, decimals))[1:])
    # A shown expression may use what the computed side works out: `2 * 23 - 4 = 46 - 4` (46 = 2 * 23).
    shown_operands: tuple[Operand, ...] = ()
    if shown_res is None:
        worked_out = set(partials)
        shown_operands = tuple(o for o in _operands(shown_toks) if o.value not in worked_out)
    return Computation(
        step, text[comp[0].start : comp[-1].end], value, shown, decimals, _operands(comp) + shown_operands, ok, source,
        partials,
    )


def _matches_variant(comp: list[Tok], shown: tuple[Fraction, int], limits: Limits, ulps: float) -> bool:
    try:
        return result_matches(evaluate_tokens(comp, limits), shown[0], shown[1], ulps)
    except (NotExact, LimitExceeded):
        return False


def _computations(step: int, toks: list[Tok], text: str, source: str, limits: Limits, ulps: float) -> list[Computation]:
    if not any(t.kind == "EQ" for t in toks):
        return []
    comps = []
    for run in _runs(_drop_units(toks)):
        sides = _sides(run)
        for lhs, rhs in zip(sides, sides[1:]):
            if lhs and rhs and (c := _check_pair(step, lhs, rhs, text, source, limits, ulps)) is not None:
                comps.append(c)
    return comps


@dataclass(frozen=True)
class StepCheck:
    computations: list[Computation]
    quantities: tuple[Fraction, ...]  # every number written in the step's visible text
    # numbers written right after an `=`, checkable or not (`3 green hats + 16 pink hats = 19 hats`)
    stated: tuple[Fraction, ...] = ()


def _stated(toks: list[Tok]) -> tuple[Fraction, ...]:
    """Each lone (possibly signed) number right after an `=`: `= 19 hats`, `= $135/person`, not the
    3 of `= 3 + 4`."""
    out = []
    n = len(toks)
    for i in range(n - 1):
        if toks[i].kind != "EQ":
            continue
        j = i + 2 if toks[i + 1].kind == "OP" else i + 1  # the number's index
        side = _side_result(toks[i + 1 : j + 1])
        if side is None:
            continue
        nxt, unit = toks[j + 1] if j + 1 < n else None, toks[j + 2] if j + 2 < n else None
        per_unit = nxt is not None and nxt.text == "/" and unit is not None and unit.text.isalpha()
        if nxt is None or nxt.kind in ("EQ", "BREAK") or per_unit:
            out.append(side[0])
    return tuple(out)


def check_step(step: Step, limits: Limits = DEFAULT_LIMITS, ulps: float = 1.0) -> StepCheck:
    """Every checkable computation of one step (calculator annotations first, duplicates removed)."""
    comps: list[Computation] = []
    for m in _ANNOTATION.finditer(step.text):
        comps += _computations(step.index, tokenize(m.group(1), limits), m.group(1), "annotation", limits, ulps)
    visible = _ANNOTATION.sub(" ", step.text) if "<<" in step.text else step.text
    toks = tokenize(visible, limits)
    seen = {(c.value, c.shown) for c in comps}
    for c in _computations(step.index, toks, visible, "inline", limits, ulps):
        if (c.value, c.shown) not in seen:
            seen.add((c.value, c.shown))
            comps.append(c)
    quantities = tuple(t.value for t in toks if t.kind == "NUM" and t.value is not None)
    return StepCheck(comps, quantities, _stated(toks))


def step_computations(step: Step, limits: Limits = DEFAULT_LIMITS, ulps: float = 1.0) -> list[Computation]:
    return check_step(step, limits, ulps).computations


_NAME = re.compile(r"(?:^|(?<=[.;:!?]\s))\s*((?:[A-Za-z][A-Za-z']*[ \t]){0,2}[A-Za-z][A-Za-z']{1,20})[ \t]*=")


def named_values(step: Step, limits: Limits = DEFAULT_LIMITS) -> list[tuple[str, Fraction]]:
    """`Total = 5 + 3 = 8` at the start of a sentence names a quantity: ("total", 8)."""
    out = []
    for m in _NAME.finditer(step.text):
        runs = _runs(_drop_units(tokenize(step.text[m.end() - 1 : m.end() + 200], limits)))
        sides = _sides(runs[0]) if runs else []
        last = sides[-1] if len(sides) >= 2 else None
        result = _side_result(last) if last else None
        if result is not None:
            out.append((" ".join(m.group(1).lower().split()), result[0]))
    return out

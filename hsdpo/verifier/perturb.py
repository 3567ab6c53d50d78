"""Controlled corruptions of a GSM8K-format gold solution, for calibrating and benchmarking the
verifier: each returns the corrupted text and what the verifier should find in it.

    alter_intermediate   one calculator result (and its visible copy) changed: arithmetic error
    final_off_by_one     `#### N` -> `#### N+1`: a near miss, the typical hard negative
    absurd_final         `#### N` -> `#### -5000` (or any value): an obviously broken answer
    truncate_mid_step    the text cut inside a reasoning line: a format error
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from fractions import Fraction

_ANNOTATION = re.compile(r"<<([^<>=]*\d[)\s]*[-+*/][^<>=]*)=([-\d.]+)>>([-\d.,]+)")  # a binary operation
_HASH = re.compile(r"####[ \t]*([^\n]*)\s*$")


@dataclass(frozen=True)
class Perturbed:
    text: str
    step: int  # index of the corrupted step (non-empty lines before it), -1 for the final answer


def _fmt(v: Fraction) -> str:
    return str(v.numerator) if v.denominator == 1 else format(float(v), "g")


def _line_index(text: str, pos: int) -> int:
    return sum(1 for line in text[:pos].split("\n")[:-1] if line.strip())


def alter_intermediate(solution: str, rng: random.Random) -> Perturbed | None:
    """Add 1 to the result of a calculator annotation other than the last one (None if none)."""
    anns = list(_ANNOTATION.finditer(solution))[:-1]
    if not anns:
        return None
    m = rng.choice(anns)
    try:
        new = _fmt(Fraction(m.group(2)) + 1)
    except (ValueError, ZeroDivisionError):
        return None
    text = solution[: m.start()] + f"<<{m.group(1)}={new}>>{new}" + solution[m.end() :]
    return Perturbed(text, _line_index(text, m.start()))


def _replace_final(solution: str, value: str) -> str | None:
    m = _HASH.search(solution)
    return None if m is None else solution[: m.start()] + f"#### {value}"


def final_off_by_one(solution: str) -> Perturbed | None:
    m = _HASH.search(solution)
    if m is None:
        return None
    try:
        gold = Fraction(m.group(1).replace(",", "").strip())
    except (ValueError, ZeroDivisionError):
        return None
    text = _replace_final(solution, _fmt(gold + 1))
    return None if text is None else Perturbed(text, -1)


def absurd_final(solution: str, value: str = "-5000") -> Perturbed | None:
    text = _replace_final(solution, value)
    return None if text is None else Perturbed(text, -1)


def truncate_mid_step(solution: str, rng: random.Random) -> Perturbed | None:
    """Cut the text 20-80% of the way into a random reasoning line (never the `####` line)."""
    lines = [(m.start(), m.group()) for m in re.finditer(r"[^\n]+", solution) if not m.group().startswith("####")]
    lines = [(at, line) for at, line in lines if len(line.strip()) >= 5]
    if not lines:
        return None
    at, line = rng.choice(lines)
    cut = at + max(1, int(len(line) * rng.uniform(0.2, 0.8)))
    return Perturbed(solution[:cut], _line_index(solution, at))

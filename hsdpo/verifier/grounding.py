"""Grounding: which quantities a solution may use without computing them first.

A quantity is grounded when it is written in the question (digits, `1/4`, `20%`, `$1.50`, or
words: "three", "twenty-five", "a dozen", "twice", "half", "a third"), follows from one by a
percent or unit-of-100 conversion, is an earlier result, or is a common constant (60, 24, 7,
12, 100, 1000, ...). A value rounded as shown (3.33 for 10/3) counts as its exact source.
"""

from __future__ import annotations

import functools
import re
from fractions import Fraction

from hsdpo.verifier.exact import DEFAULT_LIMITS, Limits, tokenize

_UNITS = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
    "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15,
    "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19,
}
_TENS = {"twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90}
_SCALES = {"hundred": 100, "thousand": 1000, "million": 10**6, "billion": 10**9}
# Words that name a count, a multiple or a fraction: each grounds n and 1/n.
_MULTIPLES = {
    "dozen": 12, "dozens": 12, "twice": 2, "double": 2, "doubled": 2, "doubles": 2, "half": 2, "halves": 2,
    "halved": 2, "thrice": 3, "triple": 3, "tripled": 3, "triples": 3, "quadruple": 4, "quadrupled": 4,
    "quarter": 4, "quarters": 4, "pair": 2, "pairs": 2, "couple": 2, "score": 20, "gross": 144,
    "third": 3, "thirds": 3, "fourth": 4, "fourths": 4, "fifth": 5, "fifths": 5, "sixth": 6, "sixths": 6,
    "seventh": 7, "eighth": 8, "eighths": 8, "ninth": 9, "tenth": 10, "tenths": 10, "twentieth": 20,
    "hundredth": 100, "thousandth": 1000, "once": 1, "single": 1, "both": 2, "weekly": 7, "daily": 1,
    "monthly": 12, "annual": 12, "annually": 12, "decade": 10, "decades": 10, "century": 100,
    "dime": 10, "dimes": 10, "nickel": 20, "nickels": 20, "penny": 100, "pennies": 100, "cents": 100,
}
_WORD = re.compile(r"[a-z]+")


def number_words(text: str) -> set[Fraction]:
    """Values named in words: "twenty-five" -> 25 (and 20, 5), "three hundred" -> 300, "a dozen" -> 12, 1/12."""
    found: set[Fraction] = set()
    total = current = 0
    active = False
    for w in _WORD.findall(text.lower()) + [""]:
        if w in _UNITS or w in _TENS:
            v = _UNITS.get(w, _TENS.get(w, 0))
            found.add(Fraction(v))
            current, active = current + v, True
        elif w == "hundred" and active:
            current = max(current, 1) * 100
        elif w in _SCALES and active:
            total, current = total + max(current, 1) * _SCALES[w], 0
        else:
            if active:
                found.add(Fraction(total + current))
                total = current = 0
                active = False
            if w in _MULTIPLES:
                found.update((Fraction(_MULTIPLES[w]), Fraction(1, _MULTIPLES[w])))
            elif w in _SCALES:
                found.add(Fraction(_SCALES[w]))
    return found


def question_quantities(question: str, limits: Limits = DEFAULT_LIMITS) -> frozenset[Fraction]:
    """Every value the question grounds, with percent / cents conversions (20 -> 0.2, 1.5 -> 150)."""
    if len(question) <= 4096:  # N samples per problem share one question: cache the usual ones
        return _cached_quantities(question, limits)
    return _quantities(question, limits)


def _quantities(question: str, limits: Limits) -> frozenset[Fraction]:
    values: set[Fraction] = set()
    toks = tokenize(question, limits)
    for i, t in enumerate(toks):
        if t.kind != "NUM" or t.value is None:
            continue
        v = t.value
        values.update((v, v * 100, v / 100))
        if "%" in t.text:
            values.add(v * 100)  # "20%" is 0.2 and 20
        if i + 2 < len(toks) and toks[i + 1].text == "/" and toks[i + 2].kind == "NUM" and toks[i + 2].value:
            values.add(v / toks[i + 2].value)  # "1/4 of"
    for v in number_words(question):
        values.update((v, v * 100, v / 100))
    # "60% drive" grounds the 40% who don't, and "20% more" the factor 1.2.
    values.update([1 - v for v in values if 0 < v < 1] + [1 + v for v in values if 0 < v < 1])
    return frozenset(abs(v) for v in values)


_cached_quantities = functools.lru_cache(maxsize=4096)(_quantities)


def is_grounded(value: Fraction, decimals: int, known: set[Fraction]) -> bool:
    """`value` (as written, with `decimals` shown) is in `known` (absolute values), exactly or as a
    rounding of one."""
    value = abs(value)
    if value in known:
        return True
    if decimals == 0:
        return False
    unit = Fraction(1, 10**decimals)
    return any(abs(k - value) < unit for k in known)

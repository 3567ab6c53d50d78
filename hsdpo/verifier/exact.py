"""Exact rational arithmetic over untrusted text: a tokenizer and a whitelisted evaluator.

Nothing here calls `eval`, `exec`, `sympify` or `parse_expr`. Text becomes tokens (numbers,
`+ - * / ^`, `x × ÷ ·`, parentheses, braces, `\\frac`, `\\sqrt`, `\\times`, `\\cdot`, `\\div`,
`%`, `$` and thousands separators); a recursive-descent parser evaluates them with
`fractions.Fraction` under hard limits on token count, nesting depth, exponent size and the
bit length of every intermediate value, so hostile input fails fast instead of hanging.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import NamedTuple


class NotExact(ValueError):
    """Not an exactly evaluable numeric expression (syntax outside the grammar, irrational root...)."""


class LimitExceeded(ValueError):
    """The expression breaks a size limit (exponent, digits, depth, tokens)."""


@dataclass(frozen=True)
class Limits:
    max_tokens: int = 256  # tokens in one expression
    max_depth: int = 48  # nesting of parentheses / braces / \frac / powers
    max_exponent: int = 4096  # |n| in a^n
    max_bits: int = 8192  # bit length of numerator + denominator of any intermediate value
    max_literal_digits: int = 400  # digits of one number literal


DEFAULT_LIMITS = Limits()


class Tok(NamedTuple):  # a NamedTuple: tokenizing builds many, and these are cheap to make
    kind: str  # NUM OP LP RP LB RB EQ FRAC SQRT BREAK
    text: str
    start: int
    end: int
    value: Fraction | None = None
    decimals: int = 0  # digits after the decimal point as written (precision shown)
    root: int = 2  # index of \sqrt[n]


_NUM = r"(?!0\d)(?:\d{1,3}(?:,\d{3}(?!\d))+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)"
# Whitespace, `$` and LaTeX spacing before a token, matched atomically (lookahead + backreference):
# without it, trailing whitespace is rescanned from every position, quadratic in its length.
_SKIP = r"(?=((?:\s|\\?\$|\\[,!;: ]|\\q?quad\b|\\displaystyle\b|\\left\.|\\right\.)*))\1"
_ALTERNATIVES = (
    r"(?P<MIXED>(?<![\d.,/])[1-9]\d{0,2}(?:\s+and)?\s+\d{1,2}/\d{1,2}(?![\d.,/]))",
    rf"(?P<NUM>{_NUM}(?:\.\.\.|…)?(?:\s*\\?%)?)",
    # A word operator needs an operand after it: "55 times." and "3 times a week" are words.
    r"(?P<WOP>(?:plus|minus|times|divided\s+by|multiplied\s+by)(?![A-Za-z])(?=\s*(?:[-\d($]|\.\d|\\\$)))"
    r"|(?P<WEQ>equals(?![A-Za-z]))",
    r"(?P<OP>\*\*|//|[-+*/^×÷·−–]|\\(?:times|cdot|ast|div)(?![A-Za-z])|(?<=\s)x(?=\s))",
    r"(?P<LP>\\left\s*[(\[]|\()|(?P<RP>\\right\s*[)\]]|\))|(?P<LB>\{)|(?P<RB>\})|(?P<EQ>=)",
    r"(?P<FRAC>\\[dt]?frac(?![A-Za-z]))|(?P<SQRT>\\sqrt(?:\s*\[\s*(?P<ROOT>\d{1,2})\s*\])?(?![A-Za-z]))",
    r"(?P<BREAK>0\d+(?:\.\d+)?|[A-Za-z]+|\\[A-Za-z]+|\S)",
    r"(?P<END>\Z)",
)
_TOKEN = re.compile(_SKIP + "(?:" + "|".join(_ALTERNATIVES) + ")", re.S)
_TOKEN_NO_MIXED = re.compile(_SKIP + "(?:" + "|".join(_ALTERNATIVES[1:]) + ")", re.S)
_OPS = {
    "**": "^", "×": "*", "÷": "/", "·": "*", "−": "-", "–": "-", "x": "*",
    "\\times": "*", "\\cdot": "*", "\\ast": "*", "\\div": "/",
}
_WORD_OPS = {"plus": "+", "minus": "-", "times": "*", "divided": "/", "multiplied": "*"}
_FRAC_DIGITS = re.compile(r"\\([dt]?frac)\s*(\d)\s*(\d)")
_LATEX_THOUSANDS = re.compile(r"(?<=\d)(?:,\\!|\{,\})\s*(?=\d{3}(?!\d))")
_POW10 = [10**k for k in range(64)]


def literal(text: str, limits: Limits = DEFAULT_LIMITS) -> tuple[Fraction, int]:
    """Exact value and shown decimals of a numeral like `1,234.50` (no sign, no exponent)."""
    digits = text.replace(",", "") if "," in text else text
    if len(digits) > limits.max_literal_digits:
        raise LimitExceeded("number literal too long")
    whole, _, frac = digits.partition(".")
    if not frac:
        return Fraction(int(whole)), 0
    scale = _POW10[len(frac)] if len(frac) < 64 else 10 ** len(frac)
    return Fraction(int(whole or "0") * scale + int(frac), scale), len(frac)


def _number(text: str, start: int, end: int, limits: Limits) -> Tok:
    if text.isdigit() and len(text) <= limits.max_literal_digits:  # the common case, fast
        return Tok("NUM", text, start, end, Fraction(int(text)))
    body = text.rstrip("%").rstrip().rstrip("\\").rstrip(".…")
    try:
        value, decimals = literal(body, limits)
    except LimitExceeded:
        return Tok("BREAK", text, start, end)
    if text.endswith("%"):
        value, decimals = value / 100, decimals + 2
    return Tok("NUM", text, start, end, value, decimals)


def tokenize(text: str, limits: Limits = DEFAULT_LIMITS, _pattern: re.Pattern[str] = _TOKEN) -> list[Tok]:
    """Tokens of `text`; whitespace, `$` and LaTeX spacing vanish, anything unknown is a BREAK."""
    text = _FRAC_DIGITS.sub(r"\\\1{\2}{\3}", text) if "frac" in text else text
    if "\\!" in text or "{,}" in text:  # LaTeX thousands: 729,\!000, 11,\! 111, 1{,}000
        text = _LATEX_THOUSANDS.sub(",", text)
    toks: list[Tok] = []
    for m in _pattern.finditer(text):
        kind = m.lastgroup
        if kind is None or kind == "END":
            continue
        tok, start, end = m.group(kind), m.start(kind), m.end()
        if kind == "NUM":
            toks.append(_number(tok, start, end, limits))
        elif kind == "OP":
            toks.append(Tok("OP", _OPS.get(tok, tok), start, end))
        elif kind == "MIXED":  # "2 1/2", "1 and 1/4"
            parts = tok.split()
            num, den = parts[-1].split("/")
            if int(den) > 1 and int(num) < int(den):
                toks.append(Tok("NUM", tok, start, end, int(parts[0]) + Fraction(int(num), int(den)), 3))
            else:  # not a proper fraction: plain tokens
                sub = tokenize(tok, limits, _TOKEN_NO_MIXED)
                toks += [t._replace(start=t.start + start, end=t.end + start) for t in sub]
        elif kind == "WOP":  # "2 times 7 equals 14"
            toks.append(Tok("OP", _WORD_OPS[tok.split()[0]], start, end))
        elif kind == "WEQ":
            toks.append(Tok("EQ", "=", start, end))
        elif kind == "SQRT":
            toks.append(Tok("SQRT", tok, start, end, root=int(m.group("ROOT") or 2)))
        else:
            toks.append(Tok(kind, tok, start, end))
    return toks


def _check_size(v: Fraction, limits: Limits) -> Fraction:
    if v.numerator.bit_length() + v.denominator.bit_length() > limits.max_bits:
        raise LimitExceeded("intermediate value too large")
    return v


def _int_root(n: int, k: int) -> int | None:
    """Exact k-th root of n >= 0, or None."""
    if k == 2:
        r = math.isqrt(n)
        return r if r * r == n else None
    r = round(n ** (1.0 / k)) if n.bit_length() < 1000 else None
    if r is None:
        return None
    for c in (r - 1, r, r + 1):
        if c >= 0 and c**k == n:
            return c
    return None


def power(base: Fraction, exp: Fraction, limits: Limits = DEFAULT_LIMITS) -> Fraction:
    if exp.denominator != 1:
        raise NotExact("non-integer exponent")
    e = exp.numerator
    if abs(e) > limits.max_exponent:
        raise LimitExceeded("exponent too large")
    if base == 0:
        if e < 0:
            raise NotExact("zero to a negative power")
        return Fraction(1) if e == 0 else Fraction(0)
    bits = max(base.numerator.bit_length(), base.denominator.bit_length())
    if abs(e) * bits > limits.max_bits:
        raise LimitExceeded("power too large")
    return _check_size(base**e, limits)


def root(value: Fraction, k: int) -> Fraction:
    if k < 2 or value < 0:
        raise NotExact("root of a negative number")
    num, den = _int_root(value.numerator, k), _int_root(value.denominator, k)
    if num is None or den is None:
        raise NotExact("irrational root")
    return Fraction(num, den)


class _Parser:
    """expr := term (± term)*;  term := unary ((*|/|implicit) unary)*;  unary := ± unary | pow;
    pow := primary (^ unary)?;  primary := NUM | (expr) | {expr} | \\frac G G | \\sqrt G."""

    def __init__(self, toks: list[Tok], limits: Limits) -> None:
        if len(toks) > limits.max_tokens:
            raise LimitExceeded("expression too long")
        self.toks, self.limits, self.i, self.depth = toks, limits, 0, 0
        self.partials: list[Fraction] = []  # the value of every operation, in evaluation order

    def peek(self) -> Tok | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self, kind: str, text: str | None = None) -> Tok:
        t = self.peek()
        if t is None or t.kind != kind or (text is not None and t.text != text):
            raise NotExact("unexpected token")
        self.i += 1
        return t

    def parse(self) -> Fraction:
        if not self.toks:
            raise NotExact("empty")
        v = self.expr()
        if self.i != len(self.toks):
            raise NotExact("trailing tokens")
        return v

    def enter(self) -> None:
        self.depth += 1
        if self.depth > self.limits.max_depth:
            raise LimitExceeded("nesting too deep")

    def expr(self) -> Fraction:
        self.enter()
        v = self.term()
        while (t := self.peek()) is not None and t.kind == "OP" and t.text in "+-":
            self.i += 1
            rhs = self.term()
            v = _check_size(v + rhs if t.text == "+" else v - rhs, self.limits)
            self.partials.append(v)
        self.depth -= 1
        return v

    def term(self) -> Fraction:
        v = self.unary()
        while (t := self.peek()) is not None:
            if t.kind == "OP" and t.text in ("*", "/", "//"):
                self.i += 1
                rhs = self.unary()
                if t.text != "*" and rhs == 0:
                    raise NotExact("division by zero")
                v = v * rhs if t.text == "*" else v / rhs if t.text == "/" else Fraction(v // rhs)
            elif t.kind in ("LP", "FRAC", "SQRT"):  # implicit product: 3(4), 2\sqrt{9}
                v = v * self.unary()
            else:
                break
            v = _check_size(v, self.limits)
            self.partials.append(v)
        return v

    def unary(self) -> Fraction:
        t = self.peek()
        if t is not None and t.kind == "OP" and t.text in "+-":
            self.i += 1
            self.enter()
            v = self.unary()
            self.depth -= 1
            return -v if t.text == "-" else v
        return self.pow()

    def pow(self) -> Fraction:
        base = self.primary()
        t = self.peek()
        if t is not None and t.kind == "OP" and t.text == "^":
            self.i += 1
            self.enter()
            exp = self.unary()
            self.depth -= 1
            v = power(base, exp, self.limits)
            self.partials.append(v)
            return v
        return base

    def group(self) -> Fraction:
        t = self.peek()
        if t is not None and t.kind == "NUM":
            self.i += 1
            return t.value  # type: ignore[return-value]
        self.take("LB")
        v = self.expr()
        self.take("RB")
        return v

    def primary(self) -> Fraction:
        t = self.peek()
        if t is None:
            raise NotExact("missing operand")
        if t.kind == "NUM":
            self.i += 1
            nxt = self.peek()
            if nxt is not None and nxt.kind == "FRAC" and t.value.denominator == 1:  # type: ignore[union-attr]
                frac = self.primary()  # `4\frac{5}{8}` is the mixed number 4 5/8
                if 0 <= frac < 1:
                    return t.value + frac  # type: ignore[operator]
                return t.value * frac  # type: ignore[operator]
            return t.value  # type: ignore[return-value]
        if t.kind in ("LP", "LB"):
            self.i += 1
            v = self.expr()
            self.take("RP" if t.kind == "LP" else "RB")
            return v
        if t.kind == "FRAC":
            self.i += 1
            self.enter()
            num, den = self.group(), self.group()
            self.depth -= 1
            if den == 0:
                raise NotExact("division by zero")
            v = _check_size(num / den, self.limits)
            self.partials.append(v)
            return v
        if t.kind == "SQRT":
            self.i += 1
            self.enter()
            v = root(self.group(), t.root)
            self.depth -= 1
            return v
        raise NotExact("unexpected token")


def evaluate_tokens(toks: list[Tok], limits: Limits = DEFAULT_LIMITS) -> Fraction:
    """Exact value of a token list; raises NotExact or LimitExceeded."""
    return _Parser(toks, limits).parse()


def evaluate_partials(toks: list[Tok], limits: Limits = DEFAULT_LIMITS) -> tuple[Fraction, tuple[Fraction, ...]]:
    """Exact value of a token list and the value of each operation in it (`2*3 + 4*5`: 6, 20, 26)."""
    parser = _Parser(toks, limits)
    value = parser.parse()
    return value, tuple(parser.partials)


def has_operator(toks: list[Tok]) -> bool:
    """True for a computation (`3+4`, `\\frac{1}{2}`, `86(2)`), false for a lone, possibly signed number."""
    for i, t in enumerate(toks):
        if t.kind in ("FRAC", "SQRT") or (t.kind == "OP" and (i > 0 or t.text != "-")):
            return True
        if t.kind == "LP" and i > 0 and toks[i - 1].kind in ("NUM", "RP"):
            return True
    return False


_SCI = re.compile(r"([-+]?)(\d+(?:\.\d+)?|\.\d+)[eE]([-+]?\d{1,12})")
# Unit words after the number: `72 clips`, `5 \\text{ cm}`; a word of two or more letters, or metres'
# `m`, may go on with `/` and a power (`5 km/h`, `5 cm^2`, `9.8 m/s^2`), another lone letter may not
# (`2 x^2`, `3 a/b` are algebra).
# Each word matches in one way only (no run of letters can be split between two quantifiers), so a
# tail that is no unit fails in linear time per start.
_UNITS_TAIL = re.compile(r"(?:\s*\\(?:text|mbox|mathrm)\{[^{}]*\}|\s+(?:m(?=[/^])|[A-Za-z][A-Za-z.'’]*"
                         r"(?<=[A-Za-z.'’][A-Za-z.'’]))(?:/[A-Za-z]+)*(?:\^\{?\d\}?)?|\s+[A-Za-z])+\s*$")
# A scale word right after the number multiplies it (`$2 million`, `3.5 thousand`); other words are units.
_SCALE = re.compile(r"(?<=\d)((?:\s*(?:hundred|thousand|million|billion|trillion)\b)+)", re.I)
SCALES = {"hundred": 100, "thousand": 1000, "million": 10**6, "billion": 10**9, "trillion": 10**12}
_STRIP = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|°|\\%|%|\\!|\\,|\\;|\\ |\\\$|\$|\\left\.|\\right\.")
_ASSIGN = re.compile(r"^\s*[A-Za-z](?:_\{?\w+\}?)?\s*=\s*")
_WRAPPED = re.compile(r"\\(?:text|textbf|mathbf|mathrm|mbox)\s*\{([^{}]*)\}")  # `\text{73}`, `\mathbf{72}`


def parse_number(text: str, limits: Limits = DEFAULT_LIMITS) -> Fraction | None:
    """Exact value of a final answer written as a number or numeric expression, else None.

    Handles `1,000`, `10,\\!080`, `$5`, `50%`, `72 clips`, `5 km/h`, `$2 million`, `72°`, `\\text{72}`, `x = 3`, `1/2`, `-0`, `3.0`,
    `1.5e3`, `\\frac{3}{4}`, `2^{10}`, `\\sqrt{16}`. Raises LimitExceeded for oversized values (`1e999999999`,
    `9^9^9`).
    """
    s = text.strip()
    if len(s) > limits.max_tokens * 8:
        raise LimitExceeded("answer too long")
    if (wrapped := _WRAPPED.fullmatch(s)) is not None:
        s = wrapped.group(1).strip()
    s = _ASSIGN.sub("", s)
    if "\\!" in s or "{,}" in s:  # before `\!` is stripped: `10,\!080` is 10080
        s = _LATEX_THOUSANDS.sub(",", s)
    s = _STRIP.sub(" ", s)
    scale = 1
    if len(s) <= 200:  # units are short; the regex is quadratic in what it scans
        if (words := _SCALE.search(s)) is not None:  # `2 hundred thousand` is 200000
            for word in words.group(1).split():
                scale *= SCALES[word.lower()]
            s = s[: words.start()] + " " + s[words.end():]
        s = _UNITS_TAIL.sub("", s)
    s = s.strip().rstrip(".").strip()
    if not s:
        return None
    sci = _SCI.fullmatch(s)
    if sci:
        mant, _ = literal(sci.group(2), limits)
        exp = int(sci.group(3))
        if abs(exp) > limits.max_exponent:
            raise LimitExceeded("exponent too large")
        value = _check_size(mant * Fraction(10) ** exp * scale, limits)
        return -value if sci.group(1) == "-" else value
    toks = tokenize(s, limits)
    if any(t.kind == "BREAK" and len(t.text) > limits.max_literal_digits for t in toks):
        raise LimitExceeded("number literal too long")
    if not toks or any(t.kind in ("BREAK", "EQ") for t in toks):
        return None
    try:
        value = evaluate_tokens(toks, limits)
    except NotExact:
        return None
    return _check_size(value * scale, limits) if scale != 1 else value

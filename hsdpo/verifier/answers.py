"""Final-answer extraction: `#### N`, `The answer is: X`, an `Answer: X` line, `\\boxed{X}`, else the last number.

`extract_answer` is also what the data loaders use on gold solutions (GSM8K ends in `#### N`,
MetaMathQA-style MATH solutions in `The answer is: X`). Every scan is linear in the text, so
megabyte strings and 20,000 nested `\\boxed{` cost milliseconds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_SCAN = 50_000  # characters at the end of a solution looked at for its answer
MAX_ANSWER_CHARS = 1_000  # longer extracted answers are cut (and never equal a gold answer)
MAX_CANDIDATES = 8  # marked answers compared for the conflicting-answers check
MARKER_RULES = ("hash", "answer_is", "answer_line", "boxed")

_HASH = re.compile(r"####[ \t]*([^\n]*)")
_ANSWER_IS = re.compile(r"\b(?:the|final|my)\s+(?:final\s+)?answer\s+is\b:?[ \t]*", re.I)
# `Answer: 72`, `**Answer:** 72`, `## Final answer: $\frac{3}{4}$`: a line that opens, after
# whitespace and markdown bold / heading / quote marks (one character class: linear), with the label.
_LABEL = r"(?:final[ \t]+)?answer[ \t*_]*:"
_ANSWER_LINE = re.compile(r"^[ \t*_#>]*" + _LABEL, re.I | re.M)
_HEADING_LABEL = re.compile(r"[ \t*_#]*" + _LABEL, re.I)  # `#### Final Answer: 72` is a heading, not `#### N`
# Thousands separators only in groups of three: "72, which" ends in 72, "1,2,3" in 3.
_NUMBER = re.compile(r"-?\$?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?(?:/\d+)?|-?\.\d+")
_BOX_TOKENS = re.compile(r"\\(?:boxed|fbox)\s*\{|\{|\}")


@dataclass(frozen=True)
class Extraction:
    answer: str | None
    rule: str  # "hash" | "answer_is" | "answer_line" | "boxed" | "last_number" | "none"
    start: int = -1  # offset of the marker (or number) in the scanned text


def boxed_spans(text: str, last: int = MAX_CANDIDATES) -> list[tuple[int, str]]:
    """(offset, content) of the `last` closed `\\boxed{...}` / `\\fbox{...}`, nested braces balanced."""
    stack: list[tuple[bool, int, int]] = []  # (is_box, marker offset, content start)
    spans: list[tuple[int, int, int]] = []
    for m in _BOX_TOKENS.finditer(text):
        if m.group() == "}":
            if stack:
                is_box, at, begin = stack.pop()
                if is_box:
                    spans.append((at, begin, m.start()))
        else:
            stack.append((m.group() != "{", m.start(), m.end()))
    spans.sort()
    # Slicing only the kept spans keeps 20,000 nested boxes linear.
    return [(at, _cap(text[b : min(e, b + 4 * MAX_ANSWER_CHARS)].strip())) for at, b, e in spans[-last:]]


def last_boxed(text: str) -> str | None:
    """Content of the last closed \\boxed{...} (or \\fbox{...}); None if there is none."""
    spans = boxed_spans(text)
    return spans[-1][1] if spans else None


_ANNOTATION = re.compile(r"<<[^<>\n]{0,200}>>")
# Math delimiters opening an answer: `$x$`, `$$x$$`, `\(x\)`, `\[x\]`. Inside `$...$` an escaped `\$`
# is text, and a `$` before a digit opens a price (`$18 and $20`), so it closes nothing.
_MATH_SPAN = re.compile(r"\$\$(.+?)\$\$|\$((?:[^$\\]|\\.)+?)\$(?!\d)|\\\((.+?)\\\)|\\\[(.+?)\\\]", re.S)
_DOLLAR = re.compile(r"(?<!\\)\$")


def _clean_tail(s: str) -> str:
    s = s[: 4 * MAX_ANSWER_CHARS].strip()
    if "<<" in s:  # "The answer is <<8=8>>8."
        s = _ANNOTATION.sub("", s).strip()
    s = s.strip("*").strip()  # markdown bold: "**72**"
    if (math := _MATH_SPAN.match(s)) is not None:  # "$\boxed{\$36}$. I hope it is correct."
        s = next(g for g in math.groups() if g is not None).strip()
    elif len(_DOLLAR.findall(s)) % 2 == 0:
        s = s.strip("$").strip()
    s = s.rstrip(".*").strip()
    if s.startswith("\\boxed") and (inner := last_boxed(s)) is not None:
        s = inner
    return _cap(s)


def _cap(s: str) -> str:
    """Cut an over-long answer, visibly: the mark keeps a cut number from reading as a smaller one."""
    return s if len(s) <= MAX_ANSWER_CHARS else s[: MAX_ANSWER_CHARS - 1] + "…"


# `#### Final Answer`, `#### Step 2: Total`: a markdown heading, not `#### N`. Content that opens
# with a word of two or more letters and goes on is one; a lone word is an answer (`#### Evelyn`)
# only on the solution's last line and when it is no heading's word (`#### Verification` followed
# by more text is a heading). `#### x = 5` and `#### 72 clips` are answers.
_HEADING_WORD = re.compile(r"[ \t*_]*[A-Za-z]{2}\S*[ \t]+\S")  # {2} then \S*: one way to match, linear
_LONE_WORD = re.compile(r"[ \t*_]*[A-Za-z]{2}\S*[ \t*_:]*$")
_HEADING_ALONE = re.compile(r"[ \t*_]*(?:answer|solution|summary|conclusion|explanation|steps?|results?)[ \t*_:]*$",
                            re.I)


def _hash_matches(text: str) -> list[tuple[int, str]]:
    out = []
    for m in _HASH.finditer(text):
        raw = m.group(1)
        if not raw.strip() or _HEADING_LABEL.match(raw) or _HEADING_WORD.match(raw) or _HEADING_ALONE.match(raw):
            continue
        if _LONE_WORD.match(raw) and text[m.end():].strip():
            continue
        if tail := _marked_content(raw):
            out.append((m.start(), tail))
    return out


def _answer_is_matches(text: str) -> list[tuple[int, str]]:
    """Each `answer is` with the answer the rest of its line states (`_marked_content`: `72, which
    is the total.` -> 72; `larger than 48.` states none), unless another `answer is` follows on
    that line."""
    matches = list(_ANSWER_IS.finditer(text))
    out = []
    for i, m in enumerate(matches):
        stop = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        end = text.find("\n", m.end(), stop)  # bounded by the next match: linear overall
        if end < 0 and stop < len(text):
            continue
        tail = _marked_content(text[m.end() : end if end >= 0 else stop])
        if tail:
            out.append((m.start(), tail))
    return out


# The content of an `Answer:` line must look like an answer: a solution that opens with
# `Answer: First, we compute ...` (the prompt format ends in `Answer: `) states no answer there.
# A number, then at most three (unit) words, then nothing or a remark (`, which ...`, `(...)`,
# `because ...`): the number is the answer.
_LEAD_NUMBER = re.compile(
    r"(-?(?:\\?\$)?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?(?:/\d+)?"
    r"(?:[ \t]+(?:hundred|thousand|million|billion|trillion)\b)*)"  # a scale word is the number's (`$2 million`)
    r"(?:[ \t]+(?!(?:times|plus|minus|over|divided|and|or|to|of|by)\b)[A-Za-z]+){0,3}"
    r"[ \t]*(?:$|\(|[,;][ \t]*[A-Za-z]|\.\s"
    r"|(?<=[ \t])(?:because|since|as|so|which|given|thus|hence|after|from|when|if|for)\b"
    r"|(?<=[ \t])by\b(?![ \t]*\d))"  # `72 by adding them` is 72, `6 by 4` is a product
)
# A word, then a word of two or more letters, is prose, no answer: `First, we`. A word right
# after `\\` or `{` starts none (`\\text{even}`, `\\frac{a}{b}`).
_PROSE = re.compile(r"(?<![\\{A-Za-z])[A-Za-z]+(?:['’][A-Za-z]+)?[ \t,;:]+[A-Za-z]{2,}")


def _answer_line_content(raw: str) -> str:
    """The answer an `Answer:` line states (`72 apples (3 boxes of 24)` -> 72), '' if it states none."""
    s = _clean_tail(raw)
    if (lead := _LEAD_NUMBER.match(s)) is not None:
        return lead.group(1)
    head = raw[: 4 * MAX_ANSWER_CHARS].strip().lstrip("*").lstrip()
    if head.startswith(("$", "\\(", "\\[", "\\boxed", "\\fbox")):  # math is an answer, words and all
        return s
    return "" if s.endswith(":") or _PROSE.search(s) else s


def _marked_content(raw: str) -> str:
    """The answer the rest of a `####` or `answer is` line states: a number first is that number (a
    remark after it dropped, as on an `Answer:` line); text that opens with a word, reads as prose
    and holds a number (`larger than 48.`) states none; anything else is taken whole (`2\\sqrt{3}
    square units`, `\\pi`, `New York`, `\\text{Navin from Mauritius}`)."""
    s = _clean_tail(raw)
    if (lead := _LEAD_NUMBER.match(s)) is not None:
        return lead.group(1)
    if s[:1].isalpha() and _PROSE.search(s) and any(c.isdigit() for c in s):
        return ""
    return s


def _answer_line_matches(text: str) -> list[tuple[int, str]]:
    """Each `Answer:` / `Final answer:` line with the answer it states."""
    out = []
    for m in _ANSWER_LINE.finditer(text):
        end = text.find("\n", m.end(), m.end() + 4 * MAX_ANSWER_CHARS)  # one match per line: linear
        tail = _answer_line_content(text[m.end() : end if end >= 0 else m.end() + 4 * MAX_ANSWER_CHARS])
        if tail:
            out.append((m.start(), tail))
    return out


# The line markers in priority order (`\\boxed`, the last marker rule, comes after them).
_MARKED = (("hash", _hash_matches), ("answer_is", _answer_is_matches), ("answer_line", _answer_line_matches))


def _scan_window(text: str) -> tuple[str, int]:
    return (text[-MAX_SCAN:], len(text) - MAX_SCAN) if len(text) > MAX_SCAN else (text, 0)


def extract_answer(text: str) -> Extraction:
    """The final answer and the rule that found it; `#### N` wins over `The answer is`, then an
    `Answer:` line, then `\\boxed`."""
    text, offset = _scan_window(text)
    for rule, finder in _MARKED:
        found = finder(text)
        if found:
            return Extraction(found[-1][1], rule, found[-1][0] + offset)
    boxed = [b for b in boxed_spans(text) if b[1]]
    if boxed:
        return Extraction(boxed[-1][1], "boxed", boxed[-1][0] + offset)
    last = None
    for last in _NUMBER.finditer(text):
        pass
    if last is not None:
        return Extraction(_cap(last.group().replace("$", "").rstrip(".")), "last_number", last.start() + offset)
    return Extraction(None, "none")


def answer_candidates(text: str) -> list[str]:
    """Every marked final answer (`####`, `The answer is`, `Answer:`, `\\boxed`), for the
    conflicting-answers check."""
    text, _ = _scan_window(text)
    found = [f for _, finder in _MARKED for f in finder(text)[-MAX_CANDIDATES:]]
    return [a for _, a in found + [b for b in boxed_spans(text) if b[1]]]


_NORM_DROP = re.compile(r"\\left|\\right|\\!|\\,|\\;|\\:|\\ |\\displaystyle|\$|\s+")


def normalize(answer: str) -> str:
    """Canonical spelling for string equality: no spaces, `$`, `\\left/\\right`; `\\dfrac` -> `\\frac`."""
    s = _NORM_DROP.sub("", answer)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("^{\\circ}", "^\\circ")
    return s.rstrip(".")

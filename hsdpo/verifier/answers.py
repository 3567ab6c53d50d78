"""Final-answer extraction: `#### N`, `The answer is: X`, `\\boxed{X}`, else the last number."""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_SCAN = 200_000  # characters of a solution looked at for its answer

# lookaheads, so that the last of several markers on one line is found
_HASH = re.compile(r"(?=####\s*([^\n]*))")
_ANSWER_IS = re.compile(r"(?=[Tt]he (?:final )?answer is:?\s*([^\n]*))")
_NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?(?:/\d+)?|-?\.\d+")


@dataclass(frozen=True)
class Extraction:
    answer: str | None
    rule: str  # "hash" | "answer_is" | "boxed" | "last_number" | "none"


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} (or \\fbox{...}), nested braces balanced; None if unclosed."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    i = text.find("{", start)
    if i < 0:
        return None
    depth = 0
    for j in range(i, len(text)):
        c = text[j]
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j].strip()
    return None


def _clean_tail(s: str) -> str:
    s = s.strip()
    s = re.sub(r"^\$+|\$+$", "", s).strip() if s.count("$") % 2 == 0 else s
    return s.rstrip(".").strip()


def extract_answer(text: str) -> Extraction:
    text = text[-MAX_SCAN:] if len(text) > MAX_SCAN else text
    m = list(_HASH.finditer(text))
    if m and m[-1].group(1).strip():
        return Extraction(_clean_tail(m[-1].group(1)), "hash")
    m = list(_ANSWER_IS.finditer(text))
    if m and m[-1].group(1).strip():
        return Extraction(_clean_tail(m[-1].group(1)), "answer_is")
    boxed = last_boxed(text)
    if boxed:
        return Extraction(boxed, "boxed")
    nums = _NUMBER.findall(text)
    if nums:
        return Extraction(nums[-1].replace("$", "").rstrip("."), "last_number")
    return Extraction(None, "none")

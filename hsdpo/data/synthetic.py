"""Seeded multi-step arithmetic word problems with GSM8K-format solutions.

Every step is one operation on the running quantity, annotated `<<a op b=c>>`, and the solution
ends with `#### N`. Small numbers and few steps keep it learnable by a tiny model trained from
scratch; the steps still leave room for the errors we mine (a slipped digit, a wrong step).
"""

from __future__ import annotations

import random
from typing import Iterator

from hsdpo.data.config import SyntheticConfig

NAMES = ["Tom", "Ann", "Ben", "Mia", "Sam", "Eva", "Leo", "Zoe", "Max", "Ivy", "Dan", "Amy"]
ITEMS = ["apples", "books", "coins", "cards", "pens", "shells", "stamps", "marbles", "eggs", "toys"]


def _step(op: str, cur: int, name: str, item: str, cfg: SyntheticConfig, rng: random.Random) -> tuple[str, str, int] | None:
    """One operation on the running count: (question sentence, solution line, new count), or None."""
    lo, hi = cfg.min_value, cfg.max_value
    if op == "add":
        b = rng.randint(max(lo, 1), hi)
        return f"{name} gets {b} more {item}.", f"{cur}+{b} = <<{cur}+{b}={cur + b}>>{cur + b}", cur + b
    if op == "sub":
        if cur < 2:
            return None
        b = rng.randint(1, min(cur - 1, hi))
        return f"{name} gives away {b} {item}.", f"{cur}-{b} = <<{cur}-{b}={cur - b}>>{cur - b}", cur - b
    if op == "mul":
        b = rng.randint(2, min(5, max(hi, 2)))
        return f"{name} ends up with {b} times as many {item}.", f"{cur}*{b} = <<{cur}*{b}={cur * b}>>{cur * b}", cur * b
    if op == "div":
        divisors = [d for d in range(2, 6) if cur % d == 0 and cur // d > 0]
        if not divisors:
            return None
        b = rng.choice(divisors)
        return f"{name} splits the {item} into {b} equal piles and keeps one.", f"{cur}/{b} = <<{cur}/{b}={cur // b}>>{cur // b}", cur // b
    if op == "double":
        return f"{name} doubles the {item}.", f"{cur}*2 = <<{cur}*2={cur * 2}>>{cur * 2}", cur * 2
    if op == "half":
        if cur % 2 or cur < 2:
            return None
        return f"{name} loses half of the {item}.", f"{cur}/2 = <<{cur}/2={cur // 2}>>{cur // 2}", cur // 2
    raise ValueError(f"unknown op {op!r}")


def generate_one(cfg: SyntheticConfig, rng: random.Random) -> dict:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    cur = rng.randint(max(cfg.min_value, 1), cfg.max_value)
    steps = rng.randint(cfg.min_steps, max(cfg.min_steps, cfg.max_steps))
    sentences, lines = [f"{name} has {cur} {item}."], []
    while len(lines) < steps:
        made = _step(rng.choice(cfg.ops), cur, name, item, cfg, rng)
        if made is None:
            made = _step("add", cur, name, item, cfg, rng)
        sentence, line, cur = made
        sentences.append(sentence)
        lines.append(line)
    sentences.append(f"How many {item} does {name} have now?")
    solution = "\n".join(lines) + f"\n#### {cur}"
    return {"question": " ".join(sentences), "answer": solution, "num_steps": steps}


def generate(cfg: SyntheticConfig, seed: int) -> Iterator[dict]:
    rng = random.Random(seed)
    for _ in range(cfg.num_problems):
        yield generate_one(cfg, rng)

"""Verifier weights, thresholds and safety limits (formulas in docs/verifier.md).

The paper (arXiv 2512.19728) gives only its abstract, so every formula and constant here is
ours; all of them are fields, so an experiment can change them from YAML.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from hsdpo.configbase import StrictModel

# The verdicts' version: raised whenever the same text, gold and config can get another verdict
# (an extraction rule, a check, a score). It is part of the hash of every stage that verifies
# (`sample`, `eval`), so samples verified by an older verifier are stale, and `sample` re-verifies
# them without sampling again (hsdpo.sampling.stage). 2: `Answer:` lines; a right answer cut at
# the token limit is no hard negative. 3: `####` and `answer is` content read like an `Answer:`
# line's (a remark after the number), a `#### Heading` is no answer. 4: an answer too large to
# evaluate is off by orders of magnitude, one with no numeric value against a numeric gold of the
# wrong kind (implausibility). 5: a scale word multiplies (`$2 million`), units may hold `/` and a
# power (`5 km/h`). 6: `####` / `answer is` content not led by a number is read whole again (LaTeX,
# word answers), a lone `#### Word` is an answer, a scale word is part of a marked number. 7: a lone
# `#### Word` only on the last line, the remark words after a number as before (`by` not before a
# number), `m/s` a unit again.
VERIFIER_VERSION = 7

DEFAULT_CONSTANTS = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 24, 30, 31, 48, 52, 60, 100, 365, 366, 1000, 3600]


class VerifierConfig(StrictModel):
    # --- budget and limits (hostile-input safety)
    timeout_s: float = Field(1.0, gt=0, description="time budget of one verify() call, seconds")
    max_chars: int = Field(
        20_000, ge=100,
        description="characters of a solution analysed step by step; the rest only counts toward length",
    )
    max_question_chars: int = Field(5_000, ge=100, description="characters of the question read for grounding")
    max_symbolic_chars: int = Field(
        600, ge=10,
        description="longer answers are never sent to math-verify (not equivalent, flagged)",
    )
    symbolic_memory_mb: int = Field(
        2048, ge=0,
        description="address-space limit of the math-verify child process (0 = none)",
    )
    max_expr_tokens: int = Field(256, ge=8, description="tokens in one evaluated expression")
    max_depth: int = Field(48, ge=4, description="nesting depth of one evaluated expression")
    max_exponent: int = Field(4096, ge=2, description="largest |n| in an evaluated power a^n")
    max_bits: int = Field(8192, ge=64, description="bit length of any intermediate exact value")

    # --- wrongness = weighted mean of answer, numeric, arithmetic, logic
    w_answer: float = Field(0.5, ge=0, description="weight of `answer` in wrongness")
    w_numeric: float = Field(0.2, ge=0, description="weight of `numeric` in wrongness")
    w_arithmetic: float = Field(0.15, ge=0, description="weight of `arithmetic` in wrongness")
    w_logic: float = Field(0.15, ge=0, description="weight of `logic` in wrongness")

    # --- absurdity = weighted mean of format, implausibility, numeric
    a_format: float = Field(0.3, ge=0, description="weight of `format` in absurdity")
    a_implausibility: float = Field(0.5, ge=0, description="weight of `implausibility` in absurdity")
    a_numeric: float = Field(0.2, ge=0, description="weight of `numeric` in absurdity")

    # --- hard negatives
    tau_absurdity: float = Field(0.25, ge=0, le=1, description="τ_A: a hard negative has absurdity <= τ_A")
    tau_numeric: float = Field(0.1, ge=0, le=1, description="τ_n: a wrong answer with numeric <= τ_n is near")

    # --- numeric = min(1, ln(1 + |p-g|/s) / ln(1 + numeric_far)), s = max(|g|, numeric_scale_floor)
    numeric_far: float = Field(100.0, gt=0, description="relative distance |p-g|/s that scores numeric = 1")
    numeric_scale_floor: float = Field(
        10.0, gt=0,
        description="s never drops below this: off-by-a-few on small golds stays near",
    )

    # --- step checking and grounding
    step_tolerance_ulps: float = Field(
        1.0, ge=0,
        description="a result shown with fewer digits than its exact value needs may be off by less than "
        "this many units of its last digit",
    )
    check_grounding: bool = Field(
        True, description="flag operands found neither in the question, earlier steps nor constants (needs a question)"
    )
    constants: list[float] = Field(
        default_factory=lambda: list(DEFAULT_CONSTANTS),
        description="operands that never need grounding (units of time, counting, percent)",
    )
    final_must_be_last_result: bool = Field(
        True, description="flag a final answer that is not a result of the last computing step"
    )

    # --- format = max of the weighted components below
    f_no_answer: float = Field(1.0, ge=0, le=1, description="no final answer at all")
    f_truncated: float = Field(
        1.0, ge=0, le=1,
        description="finish_reason == 'length', or the text stops mid-step without an answer marker",
    )
    f_no_marker: float = Field(
        0.5, ge=0, le=1,
        description="answer only found by the last-number fallback (no ####, 'The answer is', 'Answer:' line or \\boxed)",
    )
    f_conflicting: float = Field(0.5, ge=0, le=1, description="several marked final answers that are not equivalent")
    f_unparseable: float = Field(0.5, ge=0, le=1, description="final answer neither a number nor parseable LaTeX")

    # --- implausibility = max of the weighted components below
    i_sign: float = Field(1.0, ge=0, le=1, description="negative answer where the gold is non-negative")
    i_fraction: float = Field(0.5, ge=0, le=1, description="non-integer answer where the gold is an integer")
    i_magnitude: float = Field(1.0, ge=0, le=1, description="answer off by orders of magnitude (see magnitude_*)")
    i_kind: float = Field(
        0.5, ge=0, le=1,
        description="answer with no numeric value where the gold is a number (a variable, \\infty, \\sqrt{2})")
    i_repetition: float = Field(1.0, ge=0, le=1, description="degenerate repetition (see repetition_*)")
    i_length: float = Field(1.0, ge=0, le=1, description="runaway length (see length_*)")
    magnitude_orders_start: float = Field(
        1.0, ge=0,
        description="|log10(p/g)| where the magnitude component starts to rise",
    )
    magnitude_orders_full: float = Field(
        3.0, gt=0,
        description="|log10(p/g)| where the magnitude component reaches 1",
    )
    repetition_start: float = Field(
        0.5, ge=0, le=1,
        description="share of repeated word 6-grams where repetition starts to count",
    )
    repetition_full: float = Field(0.9, gt=0, le=1, description="share of repeated word 6-grams that counts fully")
    length_start: int = Field(
        6_000, ge=1,
        description="solution length (characters) where runaway length starts to count",
    )
    length_full: int = Field(24_000, ge=2, description="solution length (characters) that counts fully")

    require_complete: bool = Field(
        True,
        description="a solution cut off by the length limit (finish_reason == 'length') is never correct",
    )

    @model_validator(mode="after")
    def _ranges(self) -> "VerifierConfig":
        if self.magnitude_orders_full <= self.magnitude_orders_start:
            raise ValueError("magnitude_orders_full must exceed magnitude_orders_start")
        if self.repetition_full <= self.repetition_start:
            raise ValueError("repetition_full must exceed repetition_start")
        if self.length_full <= self.length_start:
            raise ValueError("length_full must exceed length_start")
        if self.w_answer + self.w_numeric + self.w_arithmetic + self.w_logic <= 0:
            raise ValueError("wrongness weights must not all be 0")
        if self.a_format + self.a_implausibility + self.a_numeric <= 0:
            raise ValueError("absurdity weights must not all be 0")
        return self

"""The one prompt format, shared by SFT, sampling, reference log-probs and eval so they cannot drift.

A training example is `prompt + completion`, where `completion = solution + eos`. Templates:
- `qa`: compact, for tiny models trained from scratch: "Question: {q}\\nAnswer: "
- `alpaca`: MetaMathQA's own instruction format, for SFT of pretrained models on MetaMathQA.
"""

from __future__ import annotations

from typing import Literal

Template = Literal["qa", "alpaca"]

_TEMPLATES: dict[str, str] = {
    "qa": "Question: {question}\nAnswer: ",
    "alpaca": (
        "Below is an instruction that describes a task. Write a response that appropriately "
        "completes the request.\n\n### Instruction:\n{question}\n\n### Response: Let's think step by step. "
    ),
}

# Generation stops at the tokenizer's eos; these strings also end a sample (a model that starts
# a new question has finished its answer).
STOP_STRINGS = ("\nQuestion:", "\n### Instruction:")


def format_prompt(question: str, template: Template = "qa") -> str:
    return _TEMPLATES[template].format(question=question.strip())


def format_completion(solution: str) -> str:
    """The completion text trained on (the eos token is appended at tokenisation)."""
    return solution.strip()

"""Evaluation arithmetic (pure Python, no ray, no torch): verdict rows in, summary dicts out.

A *row* is one verified solution of one problem by one model: `problem_id`, `mode` ("greedy" or
"sample"), `correct`, `pred_answer`, `hard_negative`, `wrongness`, `absurdity` and the six
`err_<dim>` columns of the error profile. A *problem* is a `problems/` row (`problem_id`, `source`,
`num_steps`).

- accuracy = greedy-correct problems / problems evaluated (a problem with no greedy row counts
  as wrong and as `missing`; a greedy answer the verifier could not decide, its symbolic check
  timed out or failed, counts as wrong and as `undecided`); the same by `source`, by `num_steps`
  and on the near-miss subset.
- near-miss subset = problems where the reference model's (the SFT model's) greedy answer is wrong
  and the verifier called it a hard negative; its sampled rows (`eval.n`) do not widen the subset,
  so the subset, and the accuracies on it, do not depend on `eval.n`.
- pass@k = the unbiased estimator 1 - C(n-c, k) / C(n, k) over the sampled rows (Chen et al. 2021),
  averaged over problems; majority vote = the most frequent final answer among the sampled rows is
  correct. Answers vote as values: `1,000`, `1000` and `$1000` are one answer (exact rational
  value, else the normalised spelling); rows without an answer do not vote; ties go to the answer
  of the lowest `sample_id`.
- error profile = over a model's wrong greedy answers: the mean of each dimension, the share of
  answers where it is non-zero, the share of hard negatives, mean wrongness and absurdity.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from math import comb
from typing import Any, Iterable

ERR_DIMS = ("answer", "numeric", "arithmetic", "logic", "format", "implausibility")

Row = dict[str, Any]


def undecided(row: Row) -> bool:
    """A wrong verdict the verifier could not decide (symbolic check timed out or failed, or the
    verifier itself did): the answer may be right."""
    from hsdpo.pairs import UNDECIDED_FLAGS, row_flags

    flags = row_flags(row)
    return not row.get("correct") and bool(flags & (UNDECIDED_FLAGS | {"verifier_error", "timeout"}))


def rate(correct: Iterable[bool]) -> dict[str, Any]:
    flags = [bool(c) for c in correct]
    n = len(flags)
    return {"accuracy": sum(flags) / n if n else 0.0, "n": n, "correct": sum(flags)}


def greedy_by_problem(rows: list[Row]) -> dict[str, Row]:
    """The greedy row of each problem (the first one, if a table holds several)."""
    out: dict[str, Row] = {}
    for r in rows:
        if r.get("mode", "greedy") == "greedy":
            out.setdefault(r["problem_id"], r)
    return out


def accuracy(greedy: dict[str, Row], problem_ids: Iterable[str]) -> dict[str, Any]:
    return rate(bool(greedy.get(pid, {}).get("correct")) for pid in problem_ids)


def accuracy_by(greedy: dict[str, Row], problems: list[Row], key: str) -> dict[str, dict[str, Any]]:
    """Accuracy per value of a problem column (`source`, `num_steps`); keys are strings, sorted."""
    groups: dict[str, list[str]] = defaultdict(list)
    for p in problems:
        groups[str(p.get(key))].append(p["problem_id"])
    order = sorted(groups, key=lambda k: (len(k), k))  # "2" before "10"
    return {k: accuracy(greedy, groups[k]) for k in order}


def near_miss_ids(rows: list[Row]) -> set[str]:
    """Problems whose greedy answer in these rows is wrong and a hard negative."""
    return {pid for pid, r in greedy_by_problem(rows).items() if not r.get("correct") and r.get("hard_negative")}


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k of the n samples (c of them correct) is correct."""
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples, got {n}")
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def answer_key(answer: Any) -> Any:
    """What an answer votes as: its exact value when it is a number, else its normalised spelling;
    None when there is no answer."""
    from hsdpo.verifier.answers import normalize
    from hsdpo.verifier.exact import parse_number

    if not isinstance(answer, str) or not answer.strip():
        return None
    try:
        value = parse_number(answer)
    except (ArithmeticError, ValueError, RecursionError):  # a size limit (LimitExceeded) included
        value = None
    return ("value", value) if value is not None else ("text", normalize(answer))


def _sample_order(r: Row) -> tuple[int, int]:
    sid = r.get("sample_id")
    return (0, sid) if isinstance(sid, int) else (1, 0)


def majority_correct(rows: list[Row]) -> bool:
    """Whether the most frequent answer (ties: the lowest sample_id's) is a correct one."""
    voted = [(k, r) for r in sorted(rows, key=_sample_order) if (k := answer_key(r.get("pred_answer"))) is not None]
    if not voted:
        return False
    counts = Counter(k for k, _ in voted)
    top = max(counts.values())
    winner = next(k for k, _ in voted if counts[k] == top)
    return any(r.get("correct") for k, r in voted if k == winner)


def sampled_metrics(rows: list[Row], problem_ids: list[str], ks: list[int]) -> dict[str, Any]:
    """pass@k and majority-vote accuracy over the `mode == "sample"` rows; {} when there are none."""
    by_pid: dict[str, list[Row]] = defaultdict(list)
    for r in rows:
        if r.get("mode") == "sample":
            by_pid[r["problem_id"]].append(r)
    if not by_pid:
        return {}
    n = min(len(by_pid.get(pid, [])) for pid in problem_ids)
    out: dict[str, Any] = {"samples_per_problem": n}
    for k in ks:
        if k <= n:
            vals = [pass_at_k(len(by_pid[pid]), sum(bool(r.get("correct")) for r in by_pid[pid]), k) for pid in problem_ids]
            out[f"pass@{k}"] = sum(vals) / len(vals)
    out["majority"] = rate(majority_correct(by_pid.get(pid, [])) for pid in problem_ids)["accuracy"]
    return out


def error_profile(rows: list[Row]) -> dict[str, Any]:
    """Distribution of the error profile over the wrong rows given."""
    wrong = [r for r in rows if not r.get("correct")]
    n = len(wrong)
    out: dict[str, Any] = {"n_wrong": n}
    if not n:
        return out

    def mean(vals: Iterable[float]) -> float:
        return sum(vals) / n

    out["mean"] = {d: mean(float(r.get(f"err_{d}") or 0.0) for r in wrong) for d in ERR_DIMS}
    out["present"] = {d: mean(float((r.get(f"err_{d}") or 0.0) > 0) for r in wrong) for d in ERR_DIMS}
    out["hard_negative"] = mean(float(bool(r.get("hard_negative"))) for r in wrong)
    out["wrongness"] = mean(float(r.get("wrongness") or 0.0) for r in wrong)
    out["absurdity"] = mean(float(r.get("absurdity") or 0.0) for r in wrong)
    return out


def summarize_model(rows: list[Row], problems: list[Row], near_miss: set[str] | None, ks: list[int]) -> dict[str, Any]:
    greedy = greedy_by_problem(rows)
    pids = [p["problem_id"] for p in problems]
    out = accuracy(greedy, pids)
    out["missing"] = sum(pid not in greedy for pid in pids)
    out["undecided"] = sum(pid in greedy and undecided(greedy[pid]) for pid in pids)
    out["by_source"] = accuracy_by(greedy, problems, "source")
    out["by_steps"] = accuracy_by(greedy, problems, "num_steps")
    if near_miss is not None:
        out["near_miss"] = accuracy(greedy, [pid for pid in pids if pid in near_miss])
    out["error_profile"] = error_profile([greedy[pid] for pid in pids if pid in greedy])
    out.update(sampled_metrics(rows, pids, ks))
    return out


def summarize(rows_by_model: dict[str, list[Row]], problems: list[Row], near_miss_ref: str | None = None,
              ks: list[int] = (1,)) -> dict[str, Any]:
    """The `summary.json` body: per-model metrics, and how the near-miss subset was drawn."""
    near_miss = None
    if near_miss_ref is not None and near_miss_ref in rows_by_model:
        near_miss = near_miss_ids(rows_by_model[near_miss_ref]) & {p["problem_id"] for p in problems}
    models = {name: summarize_model(rows, problems, near_miss, list(ks)) for name, rows in rows_by_model.items()}
    return {
        "models": models,
        "model_order": list(models),  # summary.json is written with sorted keys
        "num_problems": len(problems),
        "near_miss": {"ref": near_miss_ref if near_miss is not None else None, "n": len(near_miss or ())},
    }


def comparison_rows(summary: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """(model, accuracy, near-miss accuracy, hard-negative share of wrong, n) for tables."""
    out = []
    for name in summary.get("model_order", summary["models"]):
        m = summary["models"][name]
        nm = m.get("near_miss")
        ep = m.get("error_profile", {})
        out.append((
            name,
            f"{100 * m['accuracy']:.1f}%",
            f"{100 * nm['accuracy']:.1f}% (n={nm['n']})" if nm else "-",
            f"{100 * ep['hard_negative']:.0f}%" if "hard_negative" in ep else "-",
            str(m["n"]),
        ))
    return out


def format_comparison(summary: dict[str, Any]) -> str:
    """A markdown table of the models, in config order."""
    head = ("model", "accuracy", "near-miss accuracy", "wrong = hard neg.", "problems")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in comparison_rows(summary)]
    return "\n".join(lines)

"""VerifyBatch: the Ray Data `map_batches` contract, in-process and on a real local Ray."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from hsdpo.verifier import VERDICT_COLUMNS, VerifierConfig, VerifyBatch, verify

GOLD_SOLUTION = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips altogether.\n#### 72"
QUESTION = "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many clips?"


def _items(n: int) -> list[dict]:
    items = []
    for i in range(n):
        completion = GOLD_SOLUTION if i % 3 else GOLD_SOLUTION.replace("#### 72", f"#### {70 + i % 5}")
        items.append({"row_id": i, "completion": completion, "gold_answer": "72", "question": QUESTION, "finish_reason": "stop"})
    items[5]["completion"] = None  # a poisoned row: must become a flag, not a failure
    items[7]["finish_reason"] = "length"
    items[9]["completion"] = "\\boxed{" * 5000 + "9**9**9**9"
    items[10].update(completion="So $\\theta = \\boxed{\\pi/2}$.", gold_answer="\\frac{\\pi}{2}")  # needs math-verify
    return items


def _batch(items: list[dict]) -> dict[str, np.ndarray]:
    return {k: np.array([it[k] for it in items], dtype=object if k != "row_id" else np.int64) for k in items[0]}


def test_columns_dtypes_and_values_match_verify() -> None:
    items = _items(12)
    out = VerifyBatch({"timeout_s": 5.0})(_batch(items))
    assert list(VERDICT_COLUMNS) == [
        "correct", "pred_answer", "wrongness", "absurdity", "hard_negative", "first_error_step", "num_steps", "flags",
        "answer_rule", "err_answer", "err_numeric", "err_arithmetic", "err_logic", "err_format", "err_implausibility",
    ]
    assert set(out) == set(items[0]) | set(VERDICT_COLUMNS)
    assert all(len(col) == 12 for col in out.values())
    assert out["correct"].dtype == bool and out["hard_negative"].dtype == bool
    assert out["first_error_step"].dtype == np.int64 and out["num_steps"].dtype == np.int64
    assert out["wrongness"].dtype == np.float64 and out["err_logic"].dtype == np.float64
    cfg = VerifierConfig(timeout_s=5.0)
    for i, item in enumerate(items):
        if item["completion"] is None:
            continue
        v = verify(item["completion"], item["gold_answer"], QUESTION, finish_reason=item["finish_reason"], cfg=cfg)
        assert out["correct"][i] == v.correct and out["flags"][i] == ",".join(v.flags)
        assert out["answer_rule"][i] == v.answer_rule and out["pred_answer"][i] == v.pred_answer
        assert out["first_error_step"][i] == (-1 if v.first_error_step is None else v.first_error_step)
        assert out["err_numeric"][i] == v.profile.numeric and out["absurdity"][i] == v.absurdity
    assert out["flags"][5] == "verifier_error" and not out["correct"][5] and not out["hard_negative"][5]
    assert not out["correct"][7] and "truncated" in out["flags"][7]
    assert out["correct"][10]


def test_verifier_imports_no_ray_torch_or_deepspeed() -> None:
    code = "import sys, hsdpo.verifier; print(sorted(m for m in ('ray', 'torch', 'deepspeed') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_missing_required_column_is_an_error() -> None:
    with pytest.raises(ValueError, match="gold_answer"):
        VerifyBatch()({"completion": np.array(["#### 1"], dtype=object)})


def test_optional_columns_and_empty_batch() -> None:
    out = VerifyBatch()({"completion": np.array(["#### 72", "#### 7"], dtype=object), "gold_answer": np.array(["72", "72"], dtype=object)})
    assert out["correct"].tolist() == [True, False]
    empty = VerifyBatch()({"completion": np.array([], dtype=object), "gold_answer": np.array([], dtype=object)})
    assert all(len(empty[c]) == 0 for c in VERDICT_COLUMNS)


@pytest.fixture(scope="module")
def local_ray():
    """A real local Ray for this module, unless the session already runs one (then shared)."""
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    if started:
        ray.shutdown()


def test_ray_data_map_batches_keeps_every_row(local_ray) -> None:
    import ray.data

    items = _items(40)
    ds = ray.data.from_items(items).map_batches(
        VerifyBatch,
        fn_constructor_kwargs={"cfg": {"timeout_s": 5.0}},
        compute=ray.data.ActorPoolStrategy(size=1),
        batch_size=8,
        batch_format="numpy",
    )
    rows = ds.take_all()
    assert sorted(r["row_id"] for r in rows) == list(range(40))  # none dropped, none duplicated
    by_id = {r["row_id"]: r for r in rows}
    assert by_id[5]["flags"] == "verifier_error" and not by_id[5]["correct"]
    assert by_id[1]["correct"] and by_id[1]["first_error_step"] == -1 and by_id[1]["err_answer"] == 0.0
    assert not by_id[3]["correct"] and by_id[3]["pred_answer"] == "73" and by_id[3]["hard_negative"]
    assert not by_id[7]["correct"] and "truncated" in by_id[7]["flags"]
    assert by_id[10]["correct"], by_id[10]["flags"]  # the math-verify child works inside an actor
    assert set(VERDICT_COLUMNS) <= set(rows[0])

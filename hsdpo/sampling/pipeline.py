"""One streaming Ray Data dataflow: problems -> fan-out (n rows each) -> sampler actors -> verifier
actors -> Parquet. Sampling and verification run at the same time on different actors (Ray Data
streams blocks between the operators); nothing is materialised in between.

    stats = sample_and_verify(problems, "runs/demo/sft/model", "runs/demo/samples", cfg.sample,
                              cfg.verifier, "qa", n=8, temperature=1.0, seed=0)

Used by the `sample` stage and by `eval` (greedy: n=1, temperature=0).

Exactly n rows per problem. Sampler and verifier actors run with `max_restarts` and
`max_task_retries`: when an actor dies mid-batch Ray restarts it and re-runs the batch, and Ray
Data writes each output block once, after its batch finished, so a retried batch is neither lost
nor written twice. A row whose generation or verification raises is kept, flagged
(`finish_reason="error"` / `error` column), never dropped. After the write the rows are counted
back from disk: every problem must have sample_ids 0..n-1 exactly once, else this raises.
"""

from __future__ import annotations

import hashlib
import math
import time
import warnings
from collections import Counter
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from hsdpo.prompts import format_prompt
from hsdpo.rundir import _fs, list_files
from hsdpo.sampling.config import SampleConfig

SAMPLE_COLUMNS = ("problem_id", "sample_id", "prompt", "completion", "finish_reason", "num_tokens", "question",
                  "gold_answer", "gold_solution", "source", "gold_steps", "seed", "error")
PROBLEM_COLUMNS = ("problem_id", "question", "gold_answer", "gold_solution", "source", "split")
MAX_INPUT_BLOCKS = 2000
VERIFY_ERROR = "verify: "  # how VerifyRows marks a row the verifier raised on


class SampleCountError(RuntimeError):
    """Rows were lost or duplicated between the problems and the written samples."""


# CPUs of the pipeline's own tasks (the fan-out of problems into prompts; the verdict columns of
# stored samples), which need room beside the actor pools (hsdpo.sampling.stage.check_pools). The
# Parquet write runs fused into the last actor stage.
TASK_CPUS = 0.25

def row_seed(run_seed: int, problem_id: str, sample_id: int) -> int:
    """The per-row seed: a stable 63-bit hash of (run seed, problem_id, sample_id)."""
    digest = hashlib.blake2b(f"{run_seed}/{problem_id}/{sample_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def fan_out(batch: dict[str, np.ndarray], n: int, run_seed: int, template: str) -> dict[str, np.ndarray]:
    """Each problem row -> n rows with sample_id 0..n-1, the formatted prompt and the row's seed."""
    out = {c: np.repeat(batch[c], n) for c in PROBLEM_COLUMNS}
    out["gold_steps"] = np.repeat(np.asarray(batch["num_steps"], dtype=np.int64), n)
    out["sample_id"] = np.tile(np.arange(n, dtype=np.int64), len(batch["problem_id"]))
    prompts = [format_prompt(str(q), template) for q in batch["question"]]
    out["prompt"] = np.repeat(np.array(prompts, dtype=object), n)
    out["seed"] = np.array([row_seed(run_seed, str(p), int(s)) for p, s in zip(out["problem_id"], out["sample_id"])],
                           dtype=np.int64)
    return out


class VerifyRows:
    """The verifier actor: `hsdpo.verifier.batch.VerifyBatch`, plus a fallback so a batch that
    raises is re-verified row by row and a row that still raises is flagged, not dropped."""

    def __init__(self, verifier_cfg: dict[str, Any]):
        from hsdpo.verifier.batch import VERDICT_COLUMNS, VerifyBatch

        self.inner, self.columns = VerifyBatch(verifier_cfg), list(VERDICT_COLUMNS)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            return self.inner(batch)
        except Exception:  # noqa: BLE001
            rows = [self._one({k: v[i : i + 1] for k, v in batch.items()}) for i in range(len(batch["completion"]))]
            return {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}

    def _one(self, row: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            return self.inner(row)
        except Exception as err:  # noqa: BLE001
            out = dict(row)
            for c in self.columns:
                text = c in ("pred_answer", "flags", "answer_rule")
                out[c] = np.array([_failed_verdict(c)], dtype=object if text else None)
            out["error"] = np.array([f"{VERIFY_ERROR}{type(err).__name__}: {err}"[:500]], dtype=object)
            return out


def _failed_verdict(column: str) -> Any:
    """The verdict of a row the verifier could not check: wrong, maximally bad, flagged."""
    defaults = {"correct": False, "pred_answer": None, "hard_negative": False, "first_error_step": -1,
                "num_steps": 0, "flags": "verifier_error", "answer_rule": "none"}
    return defaults.get(column, 1.0)


def build_dataflow(problems: list[dict], model_path: str, sample_cfg: SampleConfig, verifier_cfg: Any,
                   prompt_template: str, *, n: int, temperature: float, seed: int, verify: bool,
                   trust_remote_code: bool = False):
    """The lazy Dataset: problems -> fan-out -> sampler -> (verifier). Nothing runs until written."""
    import ray.data

    from hsdpo.rayutil import actor_pool

    rows_per_block = max(1, sample_cfg.batch_size // n)
    blocks = max(1, min(MAX_INPUT_BLOCKS, math.ceil(len(problems) / rows_per_block)))
    keep = [{c: p.get(c) for c in (*PROBLEM_COLUMNS, "num_steps")} for p in problems]
    for p in keep:
        p["num_steps"] = int(p["num_steps"] or 0)
    ds = ray.data.from_items(keep, override_num_blocks=blocks)
    ds = ds.map_batches(fan_out, batch_format="numpy", batch_size=None, num_cpus=TASK_CPUS,
                        fn_kwargs={"n": n, "run_seed": seed, "template": prompt_template})
    # Ray 2.60 has no named map_batches parameter for these yet (its ray_remote_args are deprecated).
    retries = {"max_restarts": sample_cfg.max_restarts, "max_task_retries": sample_cfg.max_task_retries}
    if sample_cfg.backend == "vllm":
        from hsdpo.sampling.vllm import apply_vllm

        ds = apply_vllm(ds, model_path, sample_cfg, temperature=temperature,
                        columns=[*PROBLEM_COLUMNS, "gold_steps", "sample_id", "prompt", "seed"],
                        trust_remote_code=trust_remote_code)
    else:
        from hsdpo.sampling.hf import HFSampler

        ds = ds.map_batches(
            HFSampler, batch_format="numpy", batch_size=sample_cfg.batch_size,
            compute=actor_pool(sample_cfg.concurrency), num_cpus=sample_cfg.num_cpus, num_gpus=sample_cfg.num_gpus,
            fn_constructor_args=(model_path,),
            fn_constructor_kwargs=dict(
                temperature=temperature, top_p=sample_cfg.top_p, max_new_tokens=sample_cfg.max_new_tokens,
                stop_strings=list(sample_cfg.stop_strings), dtype=sample_cfg.dtype,
                device="cuda" if sample_cfg.num_gpus > 0 else "cpu", torch_threads=sample_cfg.torch_threads,
                trust_remote_code=trust_remote_code, crash_once_marker=sample_cfg.crash_once_marker),
            **retries,
        )
    return verified(ds, sample_cfg, verifier_cfg) if verify else ds


def verified(ds, sample_cfg: SampleConfig, verifier_cfg: Any):
    """`ds` through the verifier actor pool (VerifyRows), as sampling and re-verifying both run it."""
    from hsdpo.rayutil import actor_pool

    cfg_dict = verifier_cfg.model_dump() if hasattr(verifier_cfg, "model_dump") else (verifier_cfg or {})
    return ds.map_batches(VerifyRows, batch_format="numpy", batch_size=sample_cfg.verify_batch_size,
                          compute=actor_pool(sample_cfg.verify_concurrency), num_cpus=sample_cfg.verify_num_cpus,
                          fn_constructor_args=(cfg_dict,), max_restarts=sample_cfg.max_restarts,
                          max_task_retries=sample_cfg.max_task_retries)


def sample_and_verify(problems: list[dict], model_path: str, out_dir: str, sample_cfg: SampleConfig,
                      verifier_cfg: Any, prompt_template: str, *, n: int, temperature: float, seed: int,
                      verify: bool | None = None, trust_remote_code: bool = False) -> dict[str, Any]:
    """Sample `n` solutions per problem with `model_path`, verify them in the same stream (unless
    `verify` is False; None = `sample_cfg.verify`) and write them as Parquet under `out_dir`
    (replacing what is there). Returns metrics: rows, problems, tokens, tokens_per_s,
    solutions_per_s, wall_s, finish reasons, errors and (verified) correct count.
    Raises SampleCountError unless every problem has sample_ids 0..n-1 exactly once."""
    from ray.data import SaveMode

    verify = sample_cfg.verify if verify is None else verify
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        ds = build_dataflow(problems, model_path, sample_cfg, verifier_cfg, prompt_template,
                            n=n, temperature=temperature, seed=seed, verify=verify,
                            trust_remote_code=trust_remote_code)
    ds.write_parquet(out_dir, mode=SaveMode.OVERWRITE)
    wall = time.perf_counter() - t0
    cols = ["problem_id", "sample_id", "num_tokens", "finish_reason"] + (["correct"] if verify else [])
    table = read_columns(out_dir, cols)
    check_counts(table["problem_id"], table["sample_id"], [p["problem_id"] for p in problems], n)
    return metrics(table, wall, len(problems))


def _unverified(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A stored sample as the sampler wrote it: no verdict columns, and no error the verifier set
    (a generation error stays)."""
    from hsdpo.verifier.batch import VERDICT_COLUMNS

    out = {k: v for k, v in batch.items() if k not in VERDICT_COLUMNS}
    if "error" in out:
        out["error"] = np.array(["" if isinstance(e, str) and e.startswith(VERIFY_ERROR) else e for e in out["error"]],
                                dtype=object)
    return out


def reverify(src_dir: str, out_dir: str, sample_cfg: SampleConfig, verifier_cfg: Any, *, problem_ids: list[str],
             n: int) -> dict[str, Any]:
    """Verify again the samples stored under `src_dir` (the previous output of the stage) and write
    them to `out_dir`, with no sampling: what `sample` does when only how samples are verified
    changed. The same actor pool as `sample_and_verify`, and the same row checks after the write;
    the metrics' throughputs are the verifier's."""
    from ray.data import SaveMode

    from hsdpo.rayutil import table_dataset
    from hsdpo.stage import read_table

    verify = sample_cfg.verify
    t0 = time.perf_counter()
    stored = read_table(src_dir)  # on the driver: see table_dataset
    if stored is None:
        raise SampleCountError(f"samples: nothing stored under {src_dir} to verify again")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        ds = table_dataset(stored, sample_cfg.verify_batch_size, sample_cfg.verify_concurrency)
        ds = ds.map_batches(_unverified, batch_format="numpy", batch_size=None, num_cpus=TASK_CPUS)
        if verify:
            ds = verified(ds, sample_cfg, verifier_cfg)
    ds.write_parquet(out_dir, mode=SaveMode.OVERWRITE)
    wall = time.perf_counter() - t0
    cols = ["problem_id", "sample_id", "num_tokens", "finish_reason"] + (["correct"] if verify else [])
    table = read_columns(out_dir, cols)
    check_counts(table["problem_id"], table["sample_id"], problem_ids, n)
    return metrics(table, wall, len(problem_ids))


def read_columns(folder: str, columns: list[str]) -> dict[str, list]:
    """Some columns of every Parquet file under `folder` (local path or fsspec URI)."""
    out: dict[str, list] = {c: [] for c in columns}
    for f in list_files(folder, ".parquet"):
        fs, p = _fs(f)
        with fs.open(p, "rb") as fh:
            t = pq.read_table(fh, columns=columns)
        for c in columns:
            out[c] += t.column(c).to_pylist()
    return out


def check_counts(problem_ids: list[str], sample_ids: list[int], expected: list[str], n: int) -> None:
    got = Counter(zip(problem_ids, sample_ids))
    dups = [k for k, v in got.items() if v > 1]
    want = {(p, s) for p in expected for s in range(n)}
    missing, extra = want - set(got), set(got) - want
    if dups or missing or extra:
        raise SampleCountError(f"samples: expected {len(want)} rows ({len(set(expected))} problems x {n}), wrote "
                               f"{len(problem_ids)}: {len(missing)} missing, {len(dups)} duplicated, {len(extra)} unexpected")


def metrics(table: dict[str, list], wall: float, num_problems: int) -> dict[str, Any]:
    rows, tokens = len(table["problem_id"]), int(sum(table["num_tokens"]))
    reasons = Counter(table["finish_reason"])
    out: dict[str, Any] = {
        "rows": rows, "problems": num_problems, "tokens": tokens, "wall_s": round(wall, 3),
        "tokens_per_s": tokens / wall if wall > 0 else 0.0, "solutions_per_s": rows / wall if wall > 0 else 0.0,
        "errors": reasons.get("error", 0), **{f"finish_{k}": v for k, v in sorted(reasons.items())},
    }
    if "correct" in table:
        out["correct"] = int(sum(bool(c) for c in table["correct"]))
    return out

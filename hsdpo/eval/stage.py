"""The `eval` stage: decode held-out problems with each model, verify, summarise, report.

    hsdpo eval jobs/tiny.yaml                                   # local Ray
    hsdpo eval jobs/tiny.yaml 'eval.models={sft: sft, mine: /ckpt/dir}' eval.n=8
    ray job submit --working-dir . -- hsdpo eval jobs/qwen2.5-1.5b-metamath.yaml

Each model of `eval.models` (name -> run-dir stage folder such as `sft` / `weighted_dpo`, or a model
path / hub id) decodes every problem of `eval.split` greedily, plus `eval.n` samples at
`eval.temperature` when n > 0, through the same sampling pipeline (Ray Data, HF or vLLM backend)
and MathVerifier as the `sample` stage, so eval and training-time verdicts cannot drift apart.
Eval always verifies (`sample.verify=false` only affects the `sample` stage).

Output `<run_dir>/<eval.output>/`:
- `samples/<name>/{greedy,sampled}/*.parquet`: every solution with its verdict columns;
- `summary.json`: `{"models": {name: {"accuracy", "n", "by_source", "by_steps", "near_miss",
  "error_profile", ["pass@k", "majority"], "path", ...}}, "num_problems", "near_miss", "split"}`;
- `report.md` + PNG plots (hsdpo.eval.report), drawn also from the run dir's training samples and
  pairs when they are complete, which are then inputs of the stage (`plan.report_inputs`): a
  re-made `pairs/` leaves the report stale.
The arithmetic lives in hsdpo.eval.metrics (pure Python); this module only moves rows.
"""

from __future__ import annotations

import json
import time
from typing import Any

from hsdpo.config import PipelineConfig
from hsdpo.eval.metrics import format_comparison, summarize
from hsdpo.eval.report import ReportInputs, write_report
from hsdpo.plan import report_inputs as plan_report_inputs
from hsdpo.rundir import RunDir, StageResult, _fs, join, local_dir, write_json_atomic
from hsdpo.stage import log, read_rows

MAX_NEGATIVES_PLOTTED = 5000


def _decode(cfg: PipelineConfig, problems: list[dict], model_path: str, out_dir: str, *, n: int,
            temperature: float, seed: int) -> tuple[list[dict], dict[str, Any]]:
    """Sample + verify through the shared pipeline; returns the verdict rows and its stats. Always
    verified, whatever `sample.verify` says: unverified rows would score as all wrong."""
    from hsdpo.sampling.pipeline import sample_and_verify

    sample_cfg = cfg.sample.model_copy(update={"max_new_tokens": cfg.eval.max_new_tokens})
    stats = sample_and_verify(problems, model_path, out_dir, sample_cfg, cfg.verifier, cfg.model.prompt_template,
                              n=n, temperature=temperature, seed=seed, verify=True,
                              trust_remote_code=cfg.model.trust_remote_code)
    return read_rows(out_dir), dict(stats or {})


def _tag(rows: list[dict], mode: str) -> list[dict]:
    for r in rows:
        r["mode"] = mode
    return rows


# The sampled pass draws with the same seeds for every model (common random numbers: a difference
# between two models' pass@k is not a difference in draws), whatever the order of `eval.models`.
SAMPLED_SEED = 1000


def evaluate_models(cfg: PipelineConfig, problems: list[dict], out: str,
                    paths: dict[str, str]) -> tuple[dict[str, list[dict]], dict[str, dict]]:
    """`paths`: each model's folder or hub id, resolved from `cfg.eval.models` (`model_paths`)."""
    rows_by_model: dict[str, list[dict]] = {}
    info: dict[str, dict] = {}
    for name, ref in cfg.eval.models.items():
        path = paths[name]
        t0 = time.perf_counter()
        log(f"eval: {name} ({path}) greedy on {len(problems)} problems")
        rows, stats = _decode(cfg, problems, path, join(out, "samples", name, "greedy"), n=1, temperature=0.0, seed=cfg.seed)
        rows = _tag(rows, "greedy")
        if cfg.eval.n > 0:
            log(f"eval: {name} sampling n={cfg.eval.n} at T={cfg.eval.temperature}")
            more, _ = _decode(cfg, problems, path, join(out, "samples", name, "sampled"), n=cfg.eval.n,
                              temperature=cfg.eval.temperature, seed=cfg.seed + SAMPLED_SEED)
            rows += _tag(more, "sample")
        rows_by_model[name] = rows
        info[name] = {"ref": ref, "path": path, "wall_s": round(time.perf_counter() - t0, 2),
                      **{k: v for k, v in stats.items() if isinstance(v, (int, float, str))}}
    return rows_by_model, info


def model_paths(cfg: PipelineConfig) -> dict[str, str]:
    from hsdpo.model import resolve_model_path

    return {name: resolve_model_path(cfg.run_dir, ref) for name, ref in cfg.eval.models.items()}


# ---- report inputs: what the other stages left in the run dir ---------------------------------

def _negatives(cfg: PipelineConfig) -> list[dict]:
    rd = RunDir(cfg.run_dir)
    if cfg.sample.output not in plan_report_inputs(cfg):  # complete, and so an input of the stage
        return []
    rows = [r for r in read_rows(rd.path(cfg.sample.output)) if not r.get("correct") and r.get("wrongness") is not None]
    return rows[:MAX_NEGATIVES_PLOTTED]


def _pair_weights(cfg: PipelineConfig) -> list[tuple[float, str]]:
    rd = RunDir(cfg.run_dir)
    if cfg.pairs.output not in plan_report_inputs(cfg):
        return []
    return [(float(r["weight"]), str(r.get("kind", "pair"))) for r in read_rows(rd.path(cfg.pairs.output))
            if r.get("weight") is not None]


def margin_series(lines: list[dict[str, Any]]) -> list[tuple[int, float]]:
    """(step, margin) from training metrics lines: the first key naming a reward margin."""
    out = []
    for i, m in enumerate(lines):
        key = next((k for k in m if "margin" in k and isinstance(m[k], (int, float))), None)
        if key is not None:
            out.append((int(m.get("step", i)), float(m[key])))
    return out


def _margins(cfg: PipelineConfig) -> dict[str, list[tuple[int, float]]]:
    rd = RunDir(cfg.run_dir)
    out = {}
    for name, ref in cfg.eval.models.items():
        m = rd.manifest(ref)
        if not m or m.get("stage") != "dpo":
            continue
        fs, p = _fs(rd.path(ref, "metrics.jsonl"))
        if not fs.exists(p):
            continue
        with fs.open(p, "r") as f:
            lines = [json.loads(line) for line in f if line.strip()]
        series = margin_series(lines)
        if series:
            out[name] = series
    return out


def report_inputs(cfg: PipelineConfig) -> ReportInputs:
    return ReportInputs(negatives=_negatives(cfg), pair_weights=_pair_weights(cfg), margins=_margins(cfg))


def write_outputs(out: str, summary: dict[str, Any], inputs: ReportInputs, title: str, plots: bool) -> list[str]:
    """summary.json and report.md (+ PNGs); the report is drawn locally and copied to a URI run dir."""
    with local_dir(out) as d:
        files = write_report(d, summary, inputs, title=title, plots=plots)
    summary["report"] = {"markdown": "report.md", "files": files}
    write_json_atomic(join(out, "summary.json"), summary)
    return files


def _build(cfg: PipelineConfig, out: str, paths: dict[str, str], problems: list[dict]) -> StageResult:
    from hsdpo.rayutil import init_ray

    init_ray(cfg.ray)
    rows_by_model, info = evaluate_models(cfg, problems, out, paths)
    summary = summarize(rows_by_model, problems, cfg.eval.near_miss_ref, cfg.eval.pass_k)
    summary["split"] = cfg.eval.split
    for name, extra in info.items():
        summary["models"][name].update(extra)
    files = write_outputs(out, summary, report_inputs(cfg), title=f"{cfg.name}: evaluation", plots=cfg.eval.plots)
    print(format_comparison(summary), flush=True)
    for name, m in summary["models"].items():
        if m.get("undecided"):
            log(f"eval: {name}: {m['undecided']} greedy answers the verifier could not decide (symbolic check timed"
                " out or failed) count as wrong; verifier.timeout_s raises its budget")
    return StageResult(
        stage="eval", output=cfg.eval.output, path=out,
        rows={"problems": len(problems), **{f"solutions: {k}": len(v) for k, v in rows_by_model.items()}},
        metrics={f"accuracy: {k}": v["accuracy"] for k, v in summary["models"].items()} | {"report files": len(files)},
    )


def run_eval(cfg: PipelineConfig, force: bool = False) -> StageResult:
    from hsdpo.plan import plan
    from hsdpo.sampling.stage import check_pools, problems_to_decode
    from hsdpo.stage import run_stage

    if cfg.sample.backend == "vllm":  # one-line errors before any work, as in `sample`
        from hsdpo.sampling.vllm import check_temperature, require_vllm

        require_vllm()
        if cfg.eval.n > 0:
            check_temperature(cfg.eval.temperature, "eval.temperature")
    paths: dict[str, str] = {}  # by the preflight, once the models' stages are known to be there
    problems: list[dict] = []  # likewise; the preflight runs before the last evaluation is removed

    def preflight() -> None:
        problems.extend(problems_to_decode(cfg, "eval", cfg.eval.split, cfg.eval.limit))
        paths.update(model_paths(cfg))
        check_pools(cfg, stage="eval", verify=True)

    return run_stage(cfg, plan(cfg, "eval"), body=lambda out: _build(cfg, out, paths, problems), force=force,
                     preflight=preflight)

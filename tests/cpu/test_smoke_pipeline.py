"""End to end, as a user runs it: `hsdpo pipeline jobs/smoke.yaml run_dir=...` in a subprocess (its
own local Ray), every stage of the demo recipe at toy size. Checks summary.json's schema, the
per-model samples, the report's files, and that a second run reuses every finished stage."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MODELS = ("sft", "rft", "dpo", "weighted_dpo")
MODEL_KEYS = {"accuracy", "n", "correct", "missing", "by_source", "by_steps", "near_miss", "error_profile", "path"}


def pipeline(run_dir: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HSDPO_PROGRESS": "0", "TOKENIZERS_PARALLELISM": "false", "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0"}
    env.pop("RAY_ADDRESS", None)
    cmd = [sys.executable, "-m", "hsdpo.cli", "pipeline", str(REPO / "jobs/smoke.yaml"), f"run_dir={run_dir}", "ray.num_cpus=4"]
    proc = subprocess.run(cmd, cwd=run_dir.parent, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, f"pipeline failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc


@pytest.mark.slow
def test_smoke_pipeline_end_to_end(tmp_path):
    run_dir = tmp_path / "run"
    t0 = time.perf_counter()
    pipeline(run_dir)
    first_s = time.perf_counter() - t0

    out = run_dir / "eval"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model_order"] == list(MODELS)
    assert summary["num_problems"] > 0 and summary["split"] == "test"
    assert set(summary["near_miss"]) == {"ref", "n"}
    for name in MODELS:
        m = summary["models"][name]
        assert MODEL_KEYS <= set(m), f"{name}: missing {MODEL_KEYS - set(m)}"
        assert m["n"] == summary["num_problems"] and m["missing"] == 0
        assert 0.0 <= m["accuracy"] <= 1.0
        assert sum(v["n"] for v in m["by_steps"].values()) == m["n"]
        assert "n_wrong" in m["error_profile"]
        assert list((out / "samples" / name / "greedy").glob("*.parquet")), f"no samples for {name}"
    files = summary["report"]["files"]
    assert {"report.md", "accuracy.png", "negatives.png", "pair_weights.png", "dpo_margins.png"} <= set(files)
    for f in files:
        assert (out / f).stat().st_size > 0
    report = (out / "report.md").read_text()
    assert all(f"| {name} |" in report for name in MODELS)

    manifests = {p.parent.name: json.loads(p.read_text())["finished_at"] for p in run_dir.glob("*/_manifest.json")}
    assert {"problems", "sft", "samples", "pairs", "ref_logps", "dpo", "weighted_dpo", "rft", "eval"} <= set(manifests)
    proc = pipeline(run_dir)  # a second run reuses every finished stage
    again = {p.parent.name: json.loads(p.read_text())["finished_at"] for p in run_dir.glob("*/_manifest.json")}
    assert again == manifests, proc.stderr[-3000:]
    print(f"smoke pipeline: first run {first_s:.0f} s")

"""`hsdpo demo` plumbing without running the pipeline: recipe lookup, the memory sampler, and the
demo summary (the full pipeline runs as a Ray job in test_cluster_jobs.py)."""

from __future__ import annotations

import json
import subprocess
import sys

import hsdpo.demo as demo
from hsdpo.config import load_config
from hsdpo.rundir import RunDir, StageResult, write_json_atomic


def test_recipe_is_the_repo_tiny_yaml_with_the_four_models():
    cfg = load_config(demo.recipe_path())
    assert cfg.run_dir == "runs/demo"
    assert list(cfg.eval.models) == ["sft", "rft", "dpo", "weighted_dpo"]
    outputs = [(s.stage, dict(o.split("=", 1) for o in s.overrides)) for s in cfg.steps]
    assert ("dpo", {"dpo.output": "dpo", "dpo.weighting": "uniform"}) in outputs
    assert ("dpo", {"dpo.output": "weighted_dpo", "dpo.weighting": "verifier"}) in outputs
    rft = next(o for s, o in outputs if o.get("sft.output") == "rft")
    assert rft["sft.init_from"] == "sft" and rft["sft.data_from"] == "pairs"
    assert int(rft["sft.steps"]) == cfg.dpo.steps and int(rft["sft.batch_size"]) == cfg.dpo.batch_size


def test_peak_memory_counts_child_processes():
    with demo.PeakMemory(interval_s=0.05) as mem:
        alone = mem.sample()
        child = subprocess.Popen([sys.executable, "-c", "x = bytearray(200 * 2**20); import time; time.sleep(1.5)"])
        try:
            import time

            time.sleep(1.0)
            with_child = mem.sample()
        finally:
            child.wait()
    assert with_child > alone + 150 * 2**20
    assert mem.peak_bytes >= with_child and mem.peak_procs >= 2


def test_run_demo_writes_its_summary(tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "run"

    def fake_pipeline(cfg, force=()):
        summary = {"models": {n: {"accuracy": a, "n": 4} for n, a in (("sft", 0.5), ("weighted_dpo", 0.75))},
                   "model_order": ["sft", "weighted_dpo"], "num_problems": 4, "near_miss": {"ref": None, "n": 0}}
        RunDir(cfg.run_dir).reset("eval")
        write_json_atomic(RunDir(cfg.run_dir).path("eval", "summary.json"), summary)
        return [StageResult(stage="eval", output="eval", path="", wall_s=1.0)]

    monkeypatch.setattr("hsdpo.cli.run_pipeline", fake_pipeline)
    monkeypatch.setattr("hsdpo.rayutil.init_ray", lambda cfg: None)
    out = demo.run_demo([f"run_dir={run_dir}"])
    saved = json.loads((run_dir / "demo_summary.json").read_text())
    assert saved["accuracy"] == {"sft": 0.5, "weighted_dpo": 0.75} == out["accuracy"]
    assert saved["wall_s"] >= 0 and saved["peak_rss_gib"] > 0
    printed = capsys.readouterr().out
    assert "| weighted_dpo | 75.0% |" in printed and "report:" in printed

"""`hsdpo demo` (what `make demo` runs): the whole pipeline of jobs/tiny.yaml into runs/demo on local Ray.

Synthetic problems (train + held-out test) -> a tokenizer built from them -> a tiny Qwen2 trained from
scratch (SFT) -> HF sampling + MathVerifier -> pairs -> reference log-probs -> DPO with uniform
weights (`dpo`) and with verifier weights (`weighted_dpo`) on the same pairs, and the RFT control
(`rft`: SFT continued on the chosen solutions for as many steps) -> eval of all four on the held-out
problems. A second run reuses every finished stage (`--force STAGE` re-runs one).

The recipe is `jobs/tiny.yaml` of the repository this package is installed from
(`Path(hsdpo.__file__).parents[1]`, i.e. an editable install or a clone); there is no packaged copy.
The demo measures itself: wall time, and the peak summed resident memory of its process tree (the
driver, Ray's GCS / raylet / workers, the trainers), sampled by a background thread with psutil. Both
land, with the accuracy table, in `<run_dir>/demo_summary.json`.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import hsdpo

RECIPE = "jobs/tiny.yaml"


def recipe_path() -> Path:
    path = Path(hsdpo.__file__).resolve().parents[1] / RECIPE
    if not path.is_file():
        raise FileNotFoundError(f"demo recipe {path} not found: `hsdpo demo` runs from a clone / editable install "
                                f"(or run `hsdpo pipeline <recipe>` yourself)")
    return path


class PeakMemory:
    """Samples the summed RSS of this process and all its descendants every `interval_s` seconds.

    RSS counts pages shared between processes (Ray's object store, torch's libraries) once per
    process, so the figure is an upper bound on what the machine had to hold."""

    def __init__(self, interval_s: float = 0.5):
        self.interval_s = interval_s
        self.peak_bytes = 0
        self.peak_procs = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="peak-memory", daemon=True)

    def sample(self) -> int:
        import psutil

        me = psutil.Process()
        total, procs = 0, 0
        for p in [me, *me.children(recursive=True)]:
            try:
                total += p.memory_info().rss
                procs += 1
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                pass
        if total > self.peak_bytes:
            self.peak_bytes, self.peak_procs = total, procs
        return total

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def __enter__(self) -> "PeakMemory":
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


def _read_summary(cfg) -> dict[str, Any]:
    from hsdpo.rundir import RunDir, read_json

    summary = read_json(RunDir(cfg.run_dir).path(cfg.eval.output, "summary.json"))
    if summary is None:
        raise FileNotFoundError(f"no eval summary under {cfg.run_dir}/{cfg.eval.output}/")
    return summary


def run_demo(overrides: list[str] = (), force: tuple[str, ...] = ()) -> dict[str, Any]:
    import ray

    from hsdpo.cli import run_pipeline
    from hsdpo.config import load_config
    from hsdpo.eval.metrics import format_comparison
    from hsdpo.rayutil import init_ray
    from hsdpo.rundir import RunDir, write_json_atomic
    from hsdpo.stage import log

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    cfg = load_config(recipe_path(), list(overrides))
    t0 = time.perf_counter()
    with PeakMemory() as mem:
        init_ray(cfg.ray)
        try:
            results = run_pipeline(cfg, force)
        finally:
            ray.shutdown()
    wall_s = time.perf_counter() - t0
    summary = _read_summary(cfg)
    rd = RunDir(cfg.run_dir)
    report = rd.path(cfg.eval.output, "report.md")
    demo = {
        "recipe": str(recipe_path()),
        "run_dir": rd.root,
        "wall_s": round(wall_s, 1),
        "peak_rss_gib": round(mem.peak_bytes / 2**30, 3),
        "peak_rss_processes": mem.peak_procs,
        "cpus": os.cpu_count(),
        "accuracy": {name: summary["models"][name]["accuracy"] for name in summary.get("model_order", summary["models"])},
        "steps": [{"stage": r.stage, "output": r.output, "skipped": r.skipped, "wall_s": round(r.wall_s, 1)} for r in results],
        "report": report,
    }
    write_json_atomic(rd.path("demo_summary.json"), demo)
    log("demo finished")
    print(f"\nheld-out accuracy ({summary['num_problems']} problems, greedy):\n")
    print(format_comparison(summary))
    ran = sum(not r.skipped for r in results)
    print(f"\nwall time {wall_s:.0f} s ({ran} of {len(results)} steps ran), peak memory "
          f"{demo['peak_rss_gib']:.2f} GiB (RSS summed over {mem.peak_procs} processes)")
    print(f"report: {report}\nsummary: {rd.path('demo_summary.json')}")
    return demo


def main() -> None:  # python -m hsdpo.demo
    print(json.dumps(run_demo(), indent=2))


if __name__ == "__main__":
    main()

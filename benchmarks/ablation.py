"""Ablation of the demo recipe (not run in CI): seeds x {sft, rft, dpo, weighted_dpo, weighted_random}.

    python benchmarks/ablation.py --seeds 0 1 2                      # jobs/tiny.yaml, local Ray
    python benchmarks/ablation.py --seeds 0 1 2 --recipe jobs/tiny.yaml dpo.beta=0.2
    python benchmarks/ablation.py --table-only                       # re-tabulate finished runs

Each seed is one `hsdpo pipeline` run of the recipe into `runs/ablation/seed<k>` with `seed=<k>`
(a new seed redraws the synthetic train/test problems and re-initialises the model), plus three
steps: pairs mined with random instead of hard negatives (`pairs.negatives=random`), their reference
log-probs, and verifier-weighted DPO on them (`weighted_random`). Every model is evaluated greedily
on the seed's held-out problems. The mean ± std (sample std over seeds) table goes to stdout and
between the ablation markers of docs/results.md; per-seed figures to runs/ablation/ablation.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
MODELS = ("sft", "rft", "dpo", "weighted_dpo", "weighted_random")
START, END = "<!-- ablation:start -->", "<!-- ablation:end -->"
RANDOM_STEPS = [
    {"stage": "pairs", "overrides": ["pairs.output=pairs_random", "pairs.negatives=random"]},
    {"stage": "reflogp", "overrides": ["reflogp.output=ref_logps_random", "reflogp.pairs_from=pairs_random"]},
    {"stage": "dpo", "overrides": ["dpo.output=weighted_random", "dpo.pairs_from=ref_logps_random", "dpo.weighting=verifier"]},
]


def ablation_recipe(recipe: Path, out: Path) -> Path:
    """The recipe plus the random-negatives arm, evaluated with the others."""
    tree = yaml.safe_load(recipe.read_text())
    steps = tree["steps"]
    at = next(i for i, s in enumerate(steps) if s["stage"] == "eval")
    tree["steps"] = steps[:at] + RANDOM_STEPS + steps[at:]
    tree.setdefault("eval", {}).setdefault("models", {})["weighted_random"] = "weighted_random"
    out.mkdir(parents=True, exist_ok=True)
    path = out / "ablation.yaml"
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


def run_seed(recipe: Path, seed: int, out: Path, overrides: list[str]) -> dict[str, float]:
    run_dir = out / f"seed{seed}"
    cmd = [sys.executable, "-m", "hsdpo.cli", "pipeline", str(recipe), f"seed={seed}", f"run_dir={run_dir}", *overrides]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=REPO)
    summary = json.loads((run_dir / "eval" / "summary.json").read_text())
    print(f"seed {seed}: {time.perf_counter() - t0:.0f} s", flush=True)
    return {name: summary["models"][name]["accuracy"] for name in MODELS if name in summary["models"]}


def table(per_seed: dict[int, dict[str, float]]) -> str:
    seeds = sorted(per_seed)
    head = ["model", "mean ± std (%)"] + [f"seed {s}" for s in seeds]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in MODELS:
        accs = [100 * per_seed[s][name] for s in seeds if name in per_seed[s]]
        if not accs:
            continue
        std = statistics.stdev(accs) if len(accs) > 1 else 0.0
        cells = [name, f"{statistics.mean(accs):.1f} ± {std:.1f}"]
        cells += [f"{100 * per_seed[s][name]:.1f}" if name in per_seed[s] else "-" for s in seeds]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_results(text: str, doc: Path) -> None:
    body = doc.read_text() if doc.exists() else f"# Results\n\n{START}\n{END}\n"
    if START not in body:
        body += f"\n{START}\n{END}\n"
    head, rest = body.split(START, 1)
    tail = rest.split(END, 1)[1] if END in rest else ""
    doc.write_text(f"{head}{START}\n{text}\n{END}{tail}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--recipe", type=Path, default=REPO / "jobs/tiny.yaml")
    p.add_argument("--out", type=Path, default=REPO / "runs/ablation")
    p.add_argument("--doc", type=Path, default=REPO / "docs/results.md")
    p.add_argument("--table-only", action="store_true", help="tabulate the seeds already in --out")
    p.add_argument("overrides", nargs="*", help="key=value overrides for every run")
    args = p.parse_args()
    results = args.out / "ablation.json"
    per_seed = {int(k): v for k, v in json.loads(results.read_text()).items()} if results.exists() else {}
    if not args.table_only:
        recipe = ablation_recipe(args.recipe, args.out)
        for seed in args.seeds:
            per_seed[seed] = run_seed(recipe, seed, args.out, args.overrides)
            results.write_text(json.dumps(per_seed, indent=2))
    per_seed = {s: per_seed[s] for s in args.seeds if s in per_seed}
    text = table(per_seed)
    text += f"\n\nGreedy held-out accuracy, {len(per_seed)} seeds of `{args.recipe.name}`" + (
        f" with {' '.join(args.overrides)}" if args.overrides else "") + "; `weighted_random`: verifier weights on randomly chosen negatives."
    print(text)
    write_results(text, args.doc)


if __name__ == "__main__":
    main()

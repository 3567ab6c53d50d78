"""`hsdpo <stage> CONFIG [key=value ...]`, `hsdpo pipeline CONFIG`, `hsdpo status CONFIG`, `hsdpo demo`.

Every stage runs unchanged as a Ray job:
    ray job submit --working-dir . -- hsdpo <stage> jobs/<recipe>.yaml [key=value ...]
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Callable

from hsdpo.config import STAGES, ConfigError, InputError, PipelineConfig, load_config
from hsdpo.rundir import StageResult
from hsdpo.stagelock import StageBusy

# stage -> "module:function"; imported lazily so `hsdpo --help` stays fast.
RUNNERS = {
    "data": "hsdpo.data.stage:run_data",
    "sft": "hsdpo.train.sft:run_sft",
    "sample": "hsdpo.sampling.stage:run_sample",
    "pairs": "hsdpo.pairs_stage:run_pairs",
    "reflogp": "hsdpo.train.reflogp:run_reflogp",
    "dpo": "hsdpo.train.dpo:run_dpo",
    "eval": "hsdpo.eval.stage:run_eval",
}
HELP = {
    "data": "read problem sources into problems/",
    "sft": "supervised fine-tuning (Ray Train + DeepSpeed)",
    "sample": "sample N solutions per problem and verify them (one Ray Data stream)",
    "pairs": "mine hard-negative preference pairs with verifier weights",
    "reflogp": "cache reference log-probs of the pairs (Ray Data actors)",
    "dpo": "verifier-weighted DPO (Ray Train + DeepSpeed)",
    "eval": "greedy eval of models with the verifier; summary.json and report.md",
}


def runner(stage: str) -> Callable[..., StageResult]:
    module, fn = RUNNERS[stage].split(":")
    try:
        return getattr(importlib.import_module(module), fn)
    except (ImportError, AttributeError) as err:
        raise SystemExit(f"hsdpo: stage {stage!r} is not available in this version ({err})") from None


def run_pipeline(cfg: PipelineConfig, force: tuple[str, ...] = ()) -> list[StageResult]:
    """Run `cfg.steps` in order; a step whose outputs are complete and current is skipped."""
    from hsdpo.plan import recipe_steps

    steps = recipe_steps(cfg)
    outputs = {getattr(c, s.stage).output for s, c in steps}
    unknown = [f for f in force if f not in STAGES and f not in outputs]
    if unknown:
        raise ConfigError(f"--force {unknown[0]}: not a stage ({', '.join(STAGES)}) nor an output of this recipe's steps"
                          f" ({', '.join(sorted(outputs))})")
    results = []
    for step, step_cfg in steps:
        output = getattr(step_cfg, step.stage).output
        results.append(runner(step.stage)(step_cfg, force=step.stage in force or output in force))
    return results


def check_reachable(run_dir: str) -> None:
    """One look at the run dir before any stage starts: missing credentials or an unknown bucket is
    a one-line error here, not a traceback from the middle of a stage."""
    from hsdpo.rundir import LOCKS, _fs

    try:
        fs, path = _fs(run_dir)
        is_file = fs.exists(path) and fs.isfile(path)
        # and a key below it: an object store answers a bucket's own `exists` False, whatever went
        # wrong (no credentials, no such bucket), where a key's raises
        fs.exists(path.rstrip("/") + "/" + LOCKS)
    except Exception as err:  # noqa: BLE001 -- whatever the storage driver raises
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise InputError(f"run_dir {run_dir} cannot be reached: {type(err).__name__}: {first}") from None
    if is_file:
        raise InputError(f"run_dir {run_dir} is a file, not a folder")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hsdpo", description="Verifier-guided hard-negative DPO on Ray.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for stage in STAGES:
        s = sub.add_parser(stage, help=HELP[stage])
        s.add_argument("config", help="recipe YAML (jobs/*.yaml)")
        s.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. dpo.beta=0.2")
        s.add_argument("--force", action="store_true", help="re-run even if its outputs are current")
    s = sub.add_parser("pipeline", help="run every step of the recipe, skipping finished ones")
    s.add_argument("config")
    s.add_argument("overrides", nargs="*")
    s.add_argument("--force", action="append", default=[], metavar="STAGE", help="re-run this stage (or output folder)")
    s = sub.add_parser("status", help="which steps of the recipe are current, and why the others would run (reads only)")
    s.add_argument("config")
    s.add_argument("overrides", nargs="*")
    s.add_argument("--json", action="store_true", help="one JSON object a step")
    s = sub.add_parser("demo", help="the embedded demo: jobs/tiny.yaml into runs/demo on local Ray")
    s.add_argument("overrides", nargs="*")
    s.add_argument("--force", action="append", default=[], metavar="STAGE")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    for arg in argv:  # Python keeps undecodable bytes as surrogates; Ray's init fails encoding them
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:
            print(f"hsdpo: argument {os.fsencode(arg)!r} is not UTF-8 text; give paths and values in UTF-8",
                  file=sys.stderr)
            return 2
    args = _parser().parse_args(argv)
    try:
        if args.command == "demo":
            from hsdpo.demo import run_demo

            run_demo(args.overrides, tuple(args.force))
            return 0
        cfg = load_config(args.config, args.overrides)
        check_reachable(cfg.run_dir)
        if args.command == "status":
            from hsdpo.status import format_status, pipeline_status, status_json

            steps = pipeline_status(cfg)
            print(status_json(steps) if args.json else format_status(cfg, steps))
        elif args.command == "pipeline":
            run_pipeline(cfg, tuple(args.force))
        else:
            runner(args.command)(cfg, force=args.force)
    except (ConfigError, InputError, StageBusy) as err:
        print(f"hsdpo: {err}", file=sys.stderr)
        return 2
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError) as err:
        print(f"hsdpo: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # a stage puts its previous output back on the way out (run_stage)
        print("hsdpo: interrupted; run the command again to go on (a training stage resumes from its latest"
              " checkpoint)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The `sample` stage: N solutions per problem, verified in the same Ray Data stream.

    hsdpo sample jobs/tiny.yaml                                       # local Ray, hf backend
    hsdpo sample jobs/tiny.yaml sample.n=16 sample.concurrency=[1,8]  # autoscaling sampler pool
    ray job submit --working-dir . -- hsdpo sample jobs/qwen2.5-1.5b-metamath.yaml   # vllm on GPUs

Input: `problems/` (split `sample.split`, at most `sample.limit` problems) and the model of
`sample.model_from` (a stage folder such as `sft`, or a path / hub id).
Output `<run_dir>/samples/`: Parquet, one row a sample (`problem_id, sample_id, prompt,
completion, finish_reason, num_tokens, question, gold_answer, gold_solution, source, split,
gold_steps, seed, error` + the verifier's verdict columns), exactly `n` rows per problem, and
`_manifest.json` with rows, tokens, tokens/s and solutions/s. The dataflow itself is
hsdpo.sampling.pipeline.

When only how the samples are verified changed (a `verifier` setting, `sample.verify`, or the
verifier's version after an upgrade), the stage verifies its stored samples again instead of
sampling anew: the manifest records a `generation_key` (everything a completion depends on: the
`sample` settings but `verify`, the `model` section, the seed and the inputs), and a run whose key
equals the stored one reads the previous samples, drops their verdicts and writes them verified
again (`pipeline.reverify`; CPU only, minutes where sampling took GPU-hours). `--force` samples
anew.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from hsdpo.config import InputError, PipelineConfig
from hsdpo.configbase import without_run_only
from hsdpo.plan import plan
from hsdpo.rundir import RunDir, StageResult
from hsdpo.stage import log, run_stage

VERIFY_ONLY = ("verify",)  # sample settings that change the verdicts but no completion (the rest of them are RUN_ONLY)
GENERATION_METRICS = ("tokens", "tokens_per_s", "solutions_per_s", "errors", "finish_stop", "finish_length", "finish_error")


def generation_key(cfg: PipelineConfig) -> str:
    """What the stored completions depend on: the sample settings but the verifier's, the model
    section, the seed, and the inputs (problems, a run-dir model) and files (a model folder outside
    the run dir, retrained in place) as they are now."""
    from hsdpo.rundir import fingerprint

    dumped = without_run_only(PipelineConfig, cfg.model_dump(mode="json"))
    p = plan(cfg, "sample")
    blob = {"sample": {k: v for k, v in dumped["sample"].items() if k not in VERIFY_ONLY},
            "model": dumped["model"], "seed": dumped["seed"],
            "inputs": RunDir(cfg.run_dir).input_hashes(list(p.inputs))}
    if p.files:  # absent otherwise: keys of stores written before files were recorded stay the same
        blob["files"] = {f: fingerprint(f) for f in p.files}
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]


def reusable_samples(cfg: PipelineConfig) -> dict[str, Any] | None:
    """The manifest of the stored samples when their completions are what this config would sample
    (only their verification differs); else None."""
    m = RunDir(cfg.run_dir).manifest(cfg.sample.output) or {}
    if m.get("status") != "complete" or not m.get("generation_key") or m.get("generation_key") != generation_key(cfg):
        return None
    return m


def _build(cfg: PipelineConfig, out: str, model_path: str, problems: list[dict], key: str) -> StageResult:
    from hsdpo.rayutil import init_ray
    from hsdpo.sampling.pipeline import sample_and_verify

    s = cfg.sample
    log(f"sample: {len(problems)} problems x n={s.n} from {model_path} ({s.backend} backend, "
        f"verify={'on' if s.verify else 'off'})")
    init_ray(cfg.ray)
    m = sample_and_verify(problems, model_path, out, s, cfg.verifier, cfg.model.prompt_template,
                          n=s.n, temperature=s.temperature, seed=cfg.seed,
                          trust_remote_code=cfg.model.trust_remote_code)
    rows = {"samples": m["rows"], "problems": m["problems"]}
    if "correct" in m:
        rows["correct"] = m["correct"]
    return StageResult(stage="sample", output=s.output, path=out, rows=rows,
                       rejects={"error": m["errors"]} if m["errors"] else {},
                       metrics={k: m[k] for k in GENERATION_METRICS if k in m},
                       manifest={"generation_key": key})


def _reverify(cfg: PipelineConfig, out: str, stored: dict[str, Any], problems: list[dict]) -> StageResult:
    """The stored samples (set aside by run_stage as the previous output) verified again."""
    from hsdpo.rayutil import init_ray
    from hsdpo.sampling.pipeline import reverify

    s = cfg.sample
    src = RunDir(cfg.run_dir).previous(s.output)
    log(f"sample: only their verification changed; verifying the {stored.get('rows', {}).get('samples', '?')}"
        f" stored samples again, no sampling (verify={'on' if s.verify else 'off'}; --force samples anew)")
    init_ray(cfg.ray)
    m = reverify(src, out, s, cfg.verifier, problem_ids=[p["problem_id"] for p in problems], n=s.n)
    rows = {"samples": m["rows"], "problems": m["problems"]}
    if "correct" in m:
        rows["correct"] = m["correct"]
    made = stored.get("metrics") if isinstance(stored.get("metrics"), dict) else {}
    metrics = {k: made[k] for k in GENERATION_METRICS if k in made}  # how the completions were made
    metrics |= {"reverified": 1, "verified_per_s": m["solutions_per_s"]}
    return StageResult(stage="sample", output=s.output, path=out, rows=rows,
                       rejects={"error": m["errors"]} if m["errors"] else {}, metrics=metrics,
                       manifest={"generation_key": stored["generation_key"],
                                 "sampled_at": stored.get("sampled_at", stored.get("finished_at"))})


def run_sample(cfg: PipelineConfig, force: bool = False) -> StageResult:
    if cfg.sample.backend == "vllm" and (force or reusable_samples(cfg) is None):  # re-verifying needs no vLLM
        from hsdpo.sampling.vllm import require_vllm

        require_vllm()  # a one-line error before any work
    from hsdpo.model import resolve_model_path

    # by the preflight, once the inputs are known to be there and before the old samples are removed
    resolved: dict[str, Any] = {}

    def preflight() -> None:
        resolved["problems"] = problems_to_decode(cfg, "sample", cfg.sample.split, cfg.sample.limit)
        resolved["key"] = generation_key(cfg)  # of the inputs as the stage found them
        resolved["stored"] = None if force else reusable_samples(cfg)
        if resolved["stored"] is None:
            resolved["model"] = resolve_model_path(cfg.run_dir, cfg.sample.model_from)
        check_pools(cfg, sampler=resolved["stored"] is None)

    def body(out: str) -> StageResult:
        if resolved["stored"] is not None:
            return _reverify(cfg, out, resolved["stored"], resolved["problems"])
        return _build(cfg, out, resolved["model"], resolved["problems"], resolved["key"])

    return run_stage(cfg, plan(cfg, "sample"), body=body, force=force, preflight=preflight)


def problems_to_decode(cfg: PipelineConfig, stage: str, split: str, limit: int | None) -> list[dict]:
    """The problems a stage decodes; none is a one-line error (in the preflight: what the stage
    wrote before stays)."""
    from hsdpo.data.stage import load_problems

    problems = load_problems(cfg, split=split, limit=limit)
    if not problems:
        raise InputError(f"{stage}: no problems in split {split!r} of {cfg.data.output}/")
    return problems


def check_pools(cfg: PipelineConfig, stage: str = "sample", verify: bool | None = None, sampler: bool = True) -> None:
    """The sampler and verifier actor pools each fit a local Ray (Ray Data would wait forever for an
    actor no node can hold); also what `eval` runs. `verify`: whether the verifier pool runs
    (None = `sample.verify`); `sampler`: whether the sampler pool does (not when re-verifying)."""
    from hsdpo.rayutil import init_ray, local_shortfall, pool_bounds
    from hsdpo.sampling.pipeline import TASK_CPUS

    s = cfg.sample
    verify = s.verify if verify is None else verify
    init_ray(cfg.ray)
    pools = [("verifier", pool_bounds(s.verify_concurrency)[0], {"CPU": s.verify_num_cpus}, "sample.verify_concurrency, sample.verify_num_cpus")]
    if s.backend == "hf" and sampler:
        pools.insert(0, ("sampler", pool_bounds(s.concurrency)[0], {"CPU": s.num_cpus, "GPU": s.num_gpus},
                         "sample.concurrency, sample.num_cpus, sample.num_gpus"))
    pools = [p for p in pools if p[0] != "verifier" or verify]
    for name, n, each, knobs in pools:
        short = local_shortfall({res: n * v for res, v in each.items()})
        if short:
            raise InputError(f"{stage}: {n} {name} actor{'s need' if n != 1 else ' needs'} {short[1]:g} {short[0]}"
                             f"{'s' if short[1] != 1 else ''} and this local Ray has {short[2]:g}; lower {knobs},"
                             " or join a cluster (ray.address)")
    # Together: the actors hold their CPUs for the whole stage, and the pipeline's own task needs
    # room beside them, or no row ever reaches them (1 sampler + 1 verifier on 2 CPUs waited forever)
    held = sum(n * each["CPU"] for _, n, each, _ in pools)
    short = local_shortfall({"CPU": held + TASK_CPUS})
    if short:
        what = " and ".join(f"{n} {name} actor{'s' if n != 1 else ''}" for name, n, _, _ in pools)
        raise InputError(f"{stage}: {what} hold {held:g} of this local Ray's {short[2]:g} CPUs, which leaves less"
                         f" than the {TASK_CPUS:g} its tasks need, and the stage would wait forever;"
                         f" lower {', '.join(k for *_, k in pools)}, raise ray.num_cpus, or join a cluster"
                         " (ray.address)")

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
"""

from __future__ import annotations

from typing import Any

from hsdpo.config import InputError, PipelineConfig
from hsdpo.plan import plan
from hsdpo.rundir import StageResult
from hsdpo.stage import log, run_stage


def _build(cfg: PipelineConfig, out: str, model_path: str, problems: list[dict]) -> StageResult:
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
    keep = ("tokens", "tokens_per_s", "solutions_per_s", "errors", "finish_stop", "finish_length", "finish_error")
    return StageResult(stage="sample", output=s.output, path=out, rows=rows,
                       rejects={"error": m["errors"]} if m["errors"] else {},
                       metrics={k: m[k] for k in keep if k in m})


def run_sample(cfg: PipelineConfig, force: bool = False) -> StageResult:
    if cfg.sample.backend == "vllm":
        from hsdpo.sampling.vllm import require_vllm

        require_vllm()  # a one-line error before any work
    from hsdpo.model import resolve_model_path

    # by the preflight, once the inputs are known to be there and before the old samples are removed
    resolved: dict[str, Any] = {}

    def preflight() -> None:
        resolved["problems"] = problems_to_decode(cfg, "sample", cfg.sample.split, cfg.sample.limit)
        resolved["model"] = resolve_model_path(cfg.run_dir, cfg.sample.model_from)
        check_pools(cfg)

    return run_stage(cfg, plan(cfg, "sample"),
                     body=lambda out: _build(cfg, out, resolved["model"], resolved["problems"]),
                     force=force, preflight=preflight)


def problems_to_decode(cfg: PipelineConfig, stage: str, split: str, limit: int | None) -> list[dict]:
    """The problems a stage decodes; none is a one-line error (in the preflight: what the stage
    wrote before stays)."""
    from hsdpo.data.stage import load_problems

    problems = load_problems(cfg, split=split, limit=limit)
    if not problems:
        raise InputError(f"{stage}: no problems in split {split!r} of {cfg.data.output}/")
    return problems


def check_pools(cfg: PipelineConfig, stage: str = "sample", verify: bool | None = None) -> None:
    """The sampler and verifier actor pools each fit a local Ray (Ray Data would wait forever for an
    actor no node can hold); also what `eval` runs. `verify`: whether the verifier pool runs
    (None = `sample.verify`)."""
    from hsdpo.rayutil import init_ray, local_shortfall, pool_bounds

    s = cfg.sample
    verify = s.verify if verify is None else verify
    init_ray(cfg.ray)
    pools = [("verifier", pool_bounds(s.verify_concurrency)[0], {"CPU": s.verify_num_cpus}, "sample.verify_concurrency, sample.verify_num_cpus")]
    if s.backend == "hf":
        pools.insert(0, ("sampler", pool_bounds(s.concurrency)[0], {"CPU": s.num_cpus, "GPU": s.num_gpus},
                         "sample.concurrency, sample.num_cpus, sample.num_gpus"))
    for name, n, each, knobs in pools:
        if name == "verifier" and not verify:
            continue
        short = local_shortfall({res: n * v for res, v in each.items()})
        if short:
            raise InputError(f"{stage}: {n} {name} actor{'s need' if n != 1 else ' needs'} {short[1]:g} {short[0]}"
                             f"{'s' if short[1] != 1 else ''} and this local Ray has {short[2]:g}; lower {knobs},"
                             " or join a cluster (ray.address)")

"""The pipeline's graph: what each stage writes, which run-dir outputs it reads, and which config
sections its output depends on. The stages run by it (`run_stage(cfg, plan(cfg, "dpo"), ...)`) and
`hsdpo status` reads it to say, without running anything, which steps are current and why the others
would run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from hsdpo.config import STAGES, ConfigError, PipelineConfig, StageSpec, with_overrides
from hsdpo.rundir import RunDir, is_uri


@dataclass(frozen=True)
class Plan:
    stage: str
    output: str  # the run-dir folder it writes
    inputs: tuple[str, ...]  # run-dir folders whose manifests it reads
    sections: tuple[str, ...]  # top-level config sections its output depends on
    files: tuple[str, ...] = ()  # files and folders outside the run dir it reads (`rundir.fingerprint`)
    ignore: tuple[str, ...] = ()  # dotted keys of `sections` it never reads (`config.depends_on`)


def stage_outputs(cfg: PipelineConfig) -> set[str]:
    """The run-dir folders the config's stages write: each section's `output` as set and by default
    (`sft` stays a stage name in `sft.init_from=sft sft.output=rft`), and each recipe step's with its
    overrides (`dpo.output=weighted_dpo`)."""
    outs = {getattr(cfg, s).output for s in STAGES}
    outs |= {type(getattr(cfg, s)).model_fields["output"].default for s in STAGES}
    for step in cfg.steps:
        if step.overrides:
            outs.add(getattr(with_overrides(cfg, step.overrides), step.stage).output)
    return outs


def is_stage_ref(cfg: PipelineConfig, ref: str) -> bool:
    """A model ref that names a run-dir stage folder (then an input of the stage that reads it): one
    with a manifest in the run dir, or the output of one of the config's stages (`sft`, a step's
    `rft`) that is not a local path. Anything else is a path, URI or hub id (a bare `gpt2` too)."""
    if RunDir(cfg.run_dir).manifest(ref) is not None:
        return True
    return "/" not in ref and not os.path.exists(ref) and ref in stage_outputs(cfg)


def model_inputs(cfg: PipelineConfig, *refs: str) -> tuple[str, ...]:
    """The refs that are run-dir stages, each once, in order."""
    return tuple(dict.fromkeys(r for r in refs if is_stage_ref(cfg, r)))


def model_files(cfg: PipelineConfig, *refs: str) -> tuple[str, ...]:
    """The refs that are model folders outside the run dir (a local path or a URI, not a stage or a
    hub id): a model retrained there in place leaves the stages that read it stale."""
    return tuple(dict.fromkeys(r for r in refs if not is_stage_ref(cfg, r)
                               and (is_uri(r) or os.path.isdir(os.path.expanduser(r)))))


# What eval takes from `sample` is how to decode (backend, engine, batches, actors, dtype, top_p,
# stop strings); these it sets itself (eval.n, eval.temperature, eval.max_new_tokens, always verified)
# or never reads (the sampled split, its size, its model; sample.output is an input when it plots it)
EVAL_IGNORES = tuple(f"sample.{k}" for k in ("n", "temperature", "max_new_tokens", "verify", "split", "limit",
                                             "model_from", "output"))


def plan(cfg: PipelineConfig, stage: str) -> Plan:
    if stage == "data":
        return Plan("data", cfg.data.output, (), ("data", "seed"),
                    tuple(dict.fromkeys(s.path for s in cfg.data.sources if s.path)))
    if stage == "sft":
        s = cfg.sft
        # init_from, like every model ref, may be a path or hub id (resolve_model_path loads both): an input only when
        # it names a stage
        init = (s.init_from,) if s.init_from else ()
        base = () if init else tuple(r for r in (cfg.model.name_or_path, cfg.model.tokenizer) if r)
        return Plan("sft", s.output, (s.data_from, *model_inputs(cfg, *init)), ("model", "sft", "seed", "data"),
                    model_files(cfg, *init, *base))
    if stage == "sample":
        m = cfg.sample.model_from
        return Plan("sample", cfg.sample.output, (cfg.data.output, *model_inputs(cfg, m)),
                    ("sample", "verifier", "model", "seed"), model_files(cfg, m))
    if stage == "pairs":
        return Plan("pairs", cfg.pairs.output, (cfg.sample.output,), ("pairs", "seed"))
    if stage == "reflogp":
        c = cfg.reflogp
        return Plan("reflogp", c.output, (c.pairs_from, *model_inputs(cfg, c.model_from)), ("model", "reflogp", "seed"),
                    model_files(cfg, c.model_from))
    if stage == "dpo":
        d = cfg.dpo
        return Plan("dpo", d.output, (d.pairs_from, *model_inputs(cfg, d.init_from)), ("model", "dpo", "seed"),
                    model_files(cfg, d.init_from))
    if stage == "eval":
        models = cfg.eval.models.values()
        return Plan("eval", cfg.eval.output,
                    (*model_inputs(cfg, *models), cfg.data.output, *report_inputs(cfg)),
                    ("eval", "sample", "verifier", "model", "seed"), model_files(cfg, *models), EVAL_IGNORES)
    raise ValueError(f"unknown stage {stage!r}")


def report_inputs(cfg: PipelineConfig) -> tuple[str, ...]:
    """What the eval report's plots draw from besides the models (the training samples' wrong
    answers, the pairs' weights): inputs of eval when they are complete, so that re-making them
    leaves the report stale; absent ones (models from elsewhere, `eval.plots: false`) are none."""
    if not cfg.eval.plots:
        return ()
    rd = RunDir(cfg.run_dir)
    return tuple(o for o in dict.fromkeys((cfg.sample.output, cfg.pairs.output))
                 if o != cfg.eval.output and (rd.manifest(o) or {}).get("status") == "complete")


def check_plan(p: Plan) -> None:
    """A stage whose output folder is also one of its inputs (`sft.init_from=sft` for an RFT run with
    `sft.output` left at `sft`) would empty that folder before reading it, and lose the model it was to
    start from: a config error before anything is touched. So is an output that is not one plain
    folder name of the run dir ("" or ".." would empty the run dir itself or the folder above it)."""
    name = p.output
    if not name or name in (".", "..") or "/" in name or "\\" in name or name.startswith("_"):
        raise ConfigError(f"{p.stage}.output {name!r} is not a folder name of the run dir; give one plain name"
                          " (no '/', not '.', '..' or a leading '_')")
    if p.output in p.inputs:
        raise ConfigError(f"{p.stage} would write {p.output}/, which it also reads (emptied before it is read);"
                          f" set {p.stage}.output to another folder")


def recipe_steps(cfg: PipelineConfig) -> list[tuple[StageSpec, PipelineConfig]]:
    """Each step of `cfg.steps` with its config (its overrides applied), the recipe checked as a
    whole first (`check_steps`): what `hsdpo pipeline` runs and `hsdpo status` reports."""
    steps = [(s, with_overrides(cfg, s.overrides) if s.overrides else cfg) for s in cfg.steps]
    check_steps([plan(c, s.stage) for s, c in steps])
    return steps


def check_steps(plans: list[Plan]) -> None:
    """What `hsdpo pipeline` refuses before its first step: a step that reads its own output, and two
    steps writing one folder (each run would replace the other's output, and re-run both forever)."""
    first: dict[str, int] = {}
    for i, p in enumerate(plans, 1):
        check_plan(p)
        if p.output in first:
            raise ConfigError(f"steps {first[p.output]} and {i} of the recipe both write {p.output}/;"
                              f" give one of them another {p.stage}.output")
        first[p.output] = i

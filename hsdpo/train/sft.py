"""The `sft` stage: supervised fine-tuning with Ray Train + DeepSpeed (see worker.py, strategy.py).

    hsdpo sft jobs/tiny.yaml                                   # local Ray, CPU, gloo, fp32
    ray job submit --working-dir . -- hsdpo sft jobs/qwen2.5-1.5b-metamath.yaml sft.use_gpu=true sft.num_workers=8
    hsdpo sft jobs/tiny.yaml sft.output=rft sft.init_from=sft sft.data_from=pairs   # the RFT control

Data: `sft.data_from="problems"` trains on the train split of problems/ (prompt = the prompt
template, completion = the gold solution + eos); a pairs folder trains on the pairs' `chosen`
column, deduplicated per problem. Model: `sft.init_from` (a stage folder), else `cfg.model.name_or_path`,
else a tokenizer built from the training corpus and a random `cfg.model.preset` model (seeded),
saved under `<output>/_init/`. Output: `<run_dir>/<output>/model/` (HF folder), `metrics.jsonl` and `engine.json` (the DeepSpeed
config the engine ran with, world size, accumulation).
Checkpoints: see launch.py.
"""

from __future__ import annotations

from typing import Any

from hsdpo.config import InputError, PipelineConfig
from hsdpo.model import check_model_source, resolve_model_path
from hsdpo.plan import plan
from hsdpo.prompts import format_completion, format_prompt
from hsdpo.rayutil import init_ray
from hsdpo.rundir import RunDir, StageResult, join, local_dir
from hsdpo.stage import read_rows, run_stage, write_rejects
from hsdpo.train.launch import (check_resume, check_tokenizer, checkpoint_root, clear_checkpoints, fit, preflight,
                                rejected_note, split_heldout, summary)


def sft_rows(cfg: PipelineConfig) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(rows with prompt/completion, rejects)."""
    s, rows, rejects = cfg.sft, [], []
    if s.data_from == cfg.data.output:
        from hsdpo.data.stage import load_problems

        for p in load_problems(cfg, split=s.split):
            if not _text(p.get("question")) or not _text(p.get("gold_solution")):
                rejects.append({"reason": "empty_question_or_solution", "row": p.get("problem_id")})
                continue
            rows.append({"problem_id": p.get("problem_id"),
                         "prompt": format_prompt(p["question"], cfg.model.prompt_template),
                         "completion": format_completion(p["gold_solution"])})
        return rows, rejects
    seen = set()
    for r in read_rows(RunDir(cfg.run_dir).path(s.data_from)):
        missing = [k for k in ("prompt", "chosen") if r.get(k) is None]
        if missing:
            rejects.append({"reason": f"missing_{missing[0]}", "row": r.get("pair_id")})
        elif not isinstance(r["prompt"], str) or not isinstance(r["chosen"], str):  # the tokenizer takes text only
            rejects.append({"reason": "not_text", "row": r.get("pair_id")})
        elif not r["chosen"].strip():
            rejects.append({"reason": "empty_chosen", "row": r.get("pair_id")})
        elif (key := (str(r.get("problem_id")), r["chosen"])) not in seen:
            seen.add(key)
            rows.append({"problem_id": r.get("problem_id"), "prompt": r["prompt"], "completion": r["chosen"]})
    return rows, rejects


def _text(value: Any) -> bool:
    """A non-blank string."""
    return isinstance(value, str) and bool(value.strip())


def initial_model(cfg: PipelineConfig, rows: list[dict[str, Any]], out: str, init_path: str | None) -> tuple[str, str]:
    """(model path, tokenizer path) the workers load; `init_path`: `sft.init_from` as the preflight
    resolved and checked it."""
    m = cfg.model
    if init_path:
        return init_path, init_path
    if m.name_or_path:
        return m.name_or_path, m.tokenizer or m.name_or_path
    from hsdpo.model import build_model, build_tokenizer

    init = join(out, "_init")
    corpus = [r["prompt"] + r["completion"] for r in rows]
    with local_dir(init) as d:  # a URI: built here, copied there; the workers fetch it
        tok = build_tokenizer(corpus, d, cfg=m.build_tokenizer)
        build_model(m.preset, tok, m.max_position_embeddings, seed=cfg.seed).save_pretrained(d)
    return init, init


def training_rows(cfg: PipelineConfig) -> tuple[list[dict], list[dict], list[dict]]:
    """(training rows, held-out rows, rejects); read in the preflight, so that no training row or an
    `eval_fraction` that leaves a side empty is a one-line error before the stage folder is emptied."""
    rows, rejects = sft_rows(cfg)
    if not rows:
        raise InputError(f"sft: no training rows from {cfg.sft.data_from!r}{rejected_note(rejects)}")
    return (*split_heldout("sft", cfg.sft, rows), rejects)


def _body(cfg: PipelineConfig, out: str, inputs: list[str], force: bool,
          data: tuple[list[dict], list[dict], list[dict]], init_path: str | None) -> StageResult:
    rows, heldout, rejects = data
    model_path, tok_path = initial_model(cfg, rows, out, init_path)  # a tokenizer built here sees the training rows only
    root = checkpoint_root(cfg, cfg.sft, inputs)
    if force:
        clear_checkpoints(root)
    history = fit("sft", cfg.sft, rows, model_path=model_path, tokenizer_path=tok_path, out_dir=out, ckpt_root=root,
                  heldout=heldout, run_seed=cfg.seed, trust_remote_code=cfg.model.trust_remote_code)
    clear_checkpoints(root)
    metrics = summary(history, ("loss", "grad_norm", "lr", "truncated"))
    counts = {"examples": len(rows), **({"eval_examples": len(heldout)} if heldout else {})}
    return StageResult(stage="sft", output=cfg.sft.output, path=out, rows=counts,
                       rejects=write_rejects(out, rejects), metrics=metrics)


def _preflight(cfg: PipelineConfig) -> str | None:
    """The checks before the stage folder is emptied; returns `sft.init_from` resolved (or None)."""
    m = cfg.sft.init_from is None and cfg.model
    path = None
    if m and m.name_or_path:
        check_model_source(m.name_or_path)
        if m.tokenizer:
            check_model_source(m.tokenizer, what="tokenizer", needs=None)
        check_tokenizer("sft", m.tokenizer or m.name_or_path, m.name_or_path, m.trust_remote_code)
    elif cfg.sft.init_from:
        path = resolve_model_path(cfg.run_dir, cfg.sft.init_from)
        check_tokenizer("sft", path, path, cfg.model.trust_remote_code)
    init_ray(cfg.ray)
    preflight("sft", cfg.sft)
    return path


def run_sft(cfg: PipelineConfig, force: bool = False) -> StageResult:
    p = plan(cfg, "sft")
    data: list = []  # by the preflight, once the inputs are known to be there
    init: list[str | None] = []  # likewise: sft.init_from resolved once, checked, and then loaded

    def check() -> None:
        init.append(_preflight(cfg))
        data.append(training_rows(cfg))
        if not force:  # a forced run removes the checkpoints
            check_resume("sft", checkpoint_root(cfg, cfg.sft, list(p.inputs)))

    return run_stage(cfg, p, preflight=check, force=force,
                     body=lambda out: _body(cfg, out, list(p.inputs), force, data[0], init[0]))

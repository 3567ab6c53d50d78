"""The `dpo` stage: verifier-weighted DPO with Ray Train + DeepSpeed and cached reference log-probs.

    hsdpo dpo jobs/tiny.yaml                                       # runs reflogp first if needed
    hsdpo dpo jobs/tiny.yaml dpo.output=dpo dpo.weighting=uniform  # the unweighted baseline
    ray job submit --working-dir . -- hsdpo dpo jobs/qwen2.5-1.5b-metamath.yaml dpo.use_gpu=true dpo.num_workers=8

Loss: `Σ w_i · −log σ(β[(π_c − ρ_c) − (π_r − ρ_r)]) / Σ w_i + nll_coef · NLL(chosen)` (losses.py),
with ρ read from `ref_logps/` (no reference model in memory), w from the pairs' `weight` column
(`dpo.weighting=verifier`) or 1 (`uniform`). Input: `<dpo.pairs_from>/` and the policy
`<dpo.init_from>/model/`. Output: `<run_dir>/<output>/model/` (HF folder), `metrics.jsonl` and `engine.json` (the DeepSpeed
config the engine ran with, world size, accumulation).
"""

from __future__ import annotations

import itertools
import json
import math
from typing import Any

from hsdpo.config import ConfigError, InputError, PipelineConfig
from hsdpo.model import resolve_model_path
from hsdpo.plan import plan
from hsdpo.rayutil import init_ray
from hsdpo.rundir import RunDir, StageResult
from hsdpo.stage import flag, read_rows, run_stage, write_rejects
from hsdpo.train.launch import (check_resume, check_tokenizer, checkpoint_root, clear_checkpoints, fit, preflight,
                                rejected_note, split_heldout, summary)

NEEDED = ("pair_id", "prompt", "chosen", "rejected", "weight", "ref_chosen_logp", "ref_rejected_logp")
TEXT = ("prompt", "chosen", "rejected")
NUMBERS = ("weight", "ref_chosen_logp", "ref_rejected_logp")


def _number(value: Any) -> float:
    """A numeric column's value as a float; NaN for what is not a number (a string, a list)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def dpo_rows(cfg: PipelineConfig) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    rows, rejects = [], []
    for r in read_rows(RunDir(cfg.run_dir).path(cfg.dpo.pairs_from)):
        missing = [k for k in NEEDED if r.get(k) is None]
        if missing:
            rejects.append({"reason": f"missing_{missing[0]}", "row": r.get("pair_id")})
        elif not all(isinstance(r[k], str) for k in TEXT):  # the tokenizer takes text only
            rejects.append({"reason": "not_text", "row": r["pair_id"]})
        elif not r["chosen"].strip() or not r["rejected"].strip():
            rejects.append({"reason": "empty_completion", "row": r["pair_id"]})
        elif r["chosen"] == r["rejected"] and not flag(r.get("rejected_cut")):  # the same tokens: no signal
            rejects.append({"reason": "identical_completions", "row": r["pair_id"]})
        elif not all(math.isfinite(_number(r[k])) for k in NUMBERS):
            rejects.append({"reason": "non_finite", "row": r["pair_id"]})
        elif float(r["weight"]) < 0:  # would turn the preference around
            rejects.append({"reason": "negative_weight", "row": r["pair_id"]})
        else:
            rows.append({**r, **{k: float(r[k]) for k in NUMBERS}})  # a "1.5" or an int column as the loss reads it
    # file order is not stable; the data order must be. A pair_id twice (two tables in one folder, a
    # file copied in twice) would train its pair twice: the first in this order stays, the others are rejects
    rows.sort(key=lambda r: str(r["pair_id"]))
    kept: list[dict[str, Any]] = []
    for _, group in itertools.groupby(rows, key=lambda r: str(r["pair_id"])):
        group = list(group)
        if len(group) > 1:  # which one stays may not depend on the file order either
            group.sort(key=lambda r: json.dumps(r, sort_keys=True, default=str))
            rejects += [{"reason": "duplicate_pair_id", "row": r["pair_id"]} for r in group[1:]]
        kept.append(group[0])
    return kept, rejects


def training_rows(cfg: PipelineConfig) -> tuple[list[dict], list[dict], list[dict]]:
    """(training pairs, held-out pairs, rejects); read in the preflight, so that no usable pair, training
    pairs that all weigh 0, or an `eval_fraction` that leaves a side empty is a one-line error before the
    stage folder is emptied."""
    rows, rejects = dpo_rows(cfg)
    if not rows:
        raise InputError(f"dpo: no usable pairs in {cfg.dpo.pairs_from!r}{rejected_note(rejects)}")
    train, heldout = split_heldout("dpo", cfg.dpo, rows)
    if cfg.dpo.weighting == "verifier" and not any(float(r["weight"]) for r in train):
        raise InputError(f"dpo: every training pair in {cfg.dpo.pairs_from!r} has weight 0: every step would be a"
                         " zero step; give the pairs weights or set dpo.weighting=uniform")
    return train, heldout, rejects


def _body(cfg: PipelineConfig, out: str, inputs: list[str], force: bool, model_path: str,
          data: tuple[list[dict], list[dict], list[dict]]) -> StageResult:
    rows, heldout, rejects = data
    root = checkpoint_root(cfg, cfg.dpo, inputs)
    if force:
        clear_checkpoints(root)
    history = fit("dpo", cfg.dpo, rows, model_path=model_path, tokenizer_path=model_path, out_dir=out, ckpt_root=root,
                  heldout=heldout, run_seed=cfg.seed, trust_remote_code=cfg.model.trust_remote_code)
    clear_checkpoints(root)
    keys = ("loss", "dpo_loss", "dpo_loss_unweighted", "accuracy", "margins", "rewards_chosen", "rewards_rejected",
            "grad_norm", "truncated")
    counts = {"pairs": len(rows), **({"eval_pairs": len(heldout)} if heldout else {})}
    return StageResult(stage="dpo", output=cfg.dpo.output, path=out, rows=counts,
                       rejects=write_rejects(out, rejects), metrics=summary(history, keys))


def check_reference(cfg: PipelineConfig, model_path: str | None = None) -> None:
    """The reference log-probs of `dpo.pairs_from` cover the tokens this run scores: a `reflogp` output's
    manifest records the `reflogp.max_length` it kept, this config's reflogp output or any other, and
    (checked once `model_path` is known) the special tokens it put in front of each prompt (none
    before hsdpo tokenised prompts as the samplers do; a Llama-style tokenizer puts a BOS there),
    which the policy's tokenizer must put there too."""
    d = cfg.dpo
    m = RunDir(cfg.run_dir).manifest(d.pairs_from) or {}
    if m.get("stage") != "reflogp":
        return
    ref = ((m.get("config") or {}).get("reflogp") or {}).get("max_length")
    if ref is not None and ref != d.max_length:
        raise ConfigError(f"dpo.pairs_from {d.pairs_from!r} holds reference log-probs of reflogp.max_length {ref}"
                          f" and dpo.max_length is {d.max_length}: reference and policy log-probs must cover the"
                          " same tokens")
    if model_path is None:
        return
    from hsdpo.model import load_tokenizer
    from hsdpo.train.tokenize import lead_specials

    recorded = m.get("prompt_specials", 0)
    now = lead_specials(load_tokenizer(model_path, cfg.model.trust_remote_code))
    if recorded != now:
        raise InputError(f"dpo.pairs_from {d.pairs_from!r} holds reference log-probs scored with {recorded} special"
                         f" token(s) before each prompt and the policy's tokenizer puts {now} there; score them again"
                         " (hsdpo reflogp CONFIG --force)")


def run_dpo(cfg: PipelineConfig, force: bool = False) -> StageResult:
    d = cfg.dpo
    if d.pairs_from == cfg.reflogp.output:
        if cfg.reflogp.max_length != d.max_length:
            raise ConfigError(f"reflogp.max_length {cfg.reflogp.max_length} != dpo.max_length {d.max_length}:"
                             " reference and policy log-probs must cover the same tokens")
        from hsdpo.train.reflogp import run_reflogp

        run_reflogp(cfg)  # skipped when current
    p = plan(cfg, "dpo")
    resolved: dict[str, Any] = {}  # by the preflight, once the inputs are known to be there

    def check() -> None:
        check_reference(cfg)
        resolved["model"] = resolve_model_path(cfg.run_dir, d.init_from)
        check_tokenizer("dpo", resolved["model"], resolved["model"], cfg.model.trust_remote_code)
        check_reference(cfg, resolved["model"])
        init_ray(cfg.ray)
        preflight("dpo", d)
        resolved["data"] = training_rows(cfg)
        if not force:  # a forced run removes the checkpoints
            check_resume("dpo", checkpoint_root(cfg, d, list(p.inputs)))

    return run_stage(cfg, p, preflight=check, force=force,
                     body=lambda out: _body(cfg, out, list(p.inputs), force, resolved["model"], resolved["data"]))

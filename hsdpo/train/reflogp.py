"""The `reflogp` stage: reference log-probs of every pair, computed once by Ray Data actors that
hold the frozen reference (SFT) model, so the DPO trainer needs no reference model.

    hsdpo reflogp jobs/tiny.yaml
    ray job submit --working-dir . -- hsdpo reflogp jobs/qwen2.5-1.5b-metamath.yaml reflogp.num_gpus=1 reflogp.concurrency=8

Input: `<reflogp.pairs_from>/` and `<reflogp.model_from>/model/`. Output: `<run_dir>/ref_logps/`,
the pairs plus `ref_chosen_logp, ref_rejected_logp` (float64 sums over completion tokens + eos),
tokenised exactly as the trainer does (tokenize.py); a pair without text on every side gets NaN
(dpo rejects it). A lost or duplicated row raises. The pairs are read on the driver and reach the
actors in blocks of whole batches, about four an actor (`rayutil.table_dataset`).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import pandas as pd

from hsdpo.config import InputError, PipelineConfig
from hsdpo.model import resolve_model_path
from hsdpo.plan import plan
from hsdpo.rayutil import actor_pool, init_ray, local_shortfall, table_dataset
from hsdpo.rundir import RunDir, StageResult, list_files
from hsdpo.stage import read_parquet, read_rows, read_table, run_stage
from hsdpo.train.config import RefLogpConfig
from hsdpo.train.launch import check_tokenizer

ADDS = ("ref_chosen_logp", "ref_rejected_logp")
NEEDS = ("pair_id", "prompt", "chosen", "rejected")
TEXT = ("prompt", "chosen", "rejected")


class RefLogpActor:
    """Holds the frozen model; adds the two reference columns to each batch."""

    def __init__(self, model_path: str, max_length: int, chunk: int, use_gpu: bool, trust_remote_code: bool = False):
        import torch

        from hsdpo.model import load_model, load_tokenizer

        self.device = "cuda" if use_gpu else "cpu"
        self.tokenizer = load_tokenizer(model_path, trust_remote_code)
        self.model = load_model(model_path, trust_remote_code, dtype="bfloat16" if use_gpu else "float32",
                                device=self.device).eval()
        self.max_length, self.chunk, self.torch = max_length, chunk, torch

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        from hsdpo.train.tokenize import pair_batch, sequence_logps

        missing = [c for c in NEEDS if c not in batch.columns]
        if missing:
            raise KeyError(f"reflogp: pairs lack columns {missing}")
        rows = batch.to_dict("records")
        # a pair without text on every side (a null, a number) is not scored: NaN, which dpo counts as a reject
        text = np.array([all(isinstance(r[c], str) for c in TEXT) for r in rows], bool)
        out = np.full((2, len(rows)), np.nan)
        if text.any():
            b = pair_batch(self.tokenizer, [r for r, ok in zip(rows, text) if ok], self.max_length).to(self.device)
            with self.torch.no_grad():
                logps, _ = sequence_logps(self.model, b.input_ids, b.loss_mask, self.chunk, scored=b.scored)
            out[:, text] = logps.double().cpu().numpy().reshape(2, -1)  # chosen, then rejected
        return batch.assign(ref_chosen_logp=out[0], ref_rejected_logp=out[1])


def _body(cfg: PipelineConfig, out: str, model_path: str) -> StageResult:
    c = cfg.reflogp
    rd = RunDir(cfg.run_dir)
    pairs = read_table(rd.path(c.pairs_from))
    if pairs is None:
        raise InputError(f"reflogp: no pairs in {rd.path(c.pairs_from)}")
    ds = table_dataset(pairs, c.batch_size, c.concurrency).map_batches(
        RefLogpActor,
        fn_constructor_kwargs={"model_path": model_path,
                               "max_length": c.max_length, "chunk": c.logp_chunk, "use_gpu": c.num_gpus > 0,
                               "trust_remote_code": cfg.model.trust_remote_code},
        batch_size=c.batch_size, batch_format="pandas", compute=actor_pool(c.concurrency), num_gpus=c.num_gpus,
    )
    ds.write_parquet(out)
    got = read_rows(out)
    check_rows(pairs.select(["pair_id"]).to_pylist(), got)
    scored = [r for r in got if np.isfinite(r["ref_chosen_logp"])]  # the means over pairs with text (no NaN)
    rows = {"pairs": len(got), **({"unscored_pairs": len(got) - len(scored)} if len(scored) < len(got) else {})}
    means = {f"mean_{k}": float(np.mean([r[k] for r in scored])) for k in ADDS} if scored else {}
    # what dpo checks its policy's tokenizer against: the special tokens in front of each prompt
    from hsdpo.model import load_tokenizer
    from hsdpo.train.tokenize import lead_specials

    specials = lead_specials(load_tokenizer(model_path, cfg.model.trust_remote_code))
    return StageResult(stage="reflogp", output=c.output, path=out, rows=rows, metrics=means,
                       manifest={"prompt_specials": specials})


def check_rows(want: list[dict[str, Any]], got: list[dict[str, Any]]) -> None:
    """Every pair in comes out once: as many rows of each pair_id out as in (a pair_id twice in the
    pairs is passed on twice; dpo keeps one)."""
    ids = Counter(str(r["pair_id"]) for r in got)
    if ids != Counter(str(r["pair_id"]) for r in want):
        raise RuntimeError(f"reflogp: {len(want)} pairs in, {len(got)} rows out ({len(ids)} distinct)")


def check_pairs(folder: str) -> None:
    """Before the output folder is emptied: pairs there, each file with the columns the actors read."""
    files = list(list_files(folder, ".parquet"))
    if not files:
        raise InputError(f"reflogp: no pairs in {folder}")
    for f in files:
        names = read_parquet(f, schema_only=True).names
        missing = [c for c in NEEDS if c not in names]
        if missing:
            raise InputError(f"reflogp: {f} has no {', '.join(missing)} column{'s' if len(missing) > 1 else ''}"
                             f" (reflogp.pairs_from holds pairs: {', '.join(NEEDS)})")


def run_reflogp(cfg: PipelineConfig, force: bool = False) -> StageResult:
    c = cfg.reflogp
    resolved: dict[str, str] = {}  # by the preflight, once the inputs are known to be there

    def check() -> None:
        resolved["model"] = resolve_model_path(cfg.run_dir, c.model_from)
        check_tokenizer("reflogp", resolved["model"], resolved["model"], cfg.model.trust_remote_code)
        check_pairs(RunDir(cfg.run_dir).path(c.pairs_from))
        init_ray(cfg.ray)
        _preflight(c)

    return run_stage(cfg, plan(cfg, "reflogp"), body=lambda out: _body(cfg, out, resolved["model"]), force=force,
                     preflight=check)


def _preflight(c: RefLogpConfig) -> None:
    """The actor pool fits a local Ray (Ray Data would wait forever for an actor no node can hold)."""
    short = local_shortfall({"GPU": c.concurrency * c.num_gpus})
    if short:
        raise InputError(f"reflogp: {c.concurrency} actor{'s' if c.concurrency != 1 else ''} x {c.num_gpus:g} GPU"
                         f" (reflogp.num_gpus) is {short[1]:g} in all and this local Ray has {short[2]:g};"
                         " lower reflogp.concurrency or reflogp.num_gpus, or join a cluster (ray.address)")

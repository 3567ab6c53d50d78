"""The `pairs` stage: verified samples -> weighted preference pairs (TRL's preference format).

    hsdpo pairs jobs/tiny.yaml
    hsdpo pairs jobs/tiny.yaml pairs.weighting=uniform pairs.negatives=random   # ablations
    ray job submit --working-dir . -- hsdpo pairs jobs/qwen2.5-1.5b-metamath.yaml

Input: `samples/` (one row a verified sample). Output `<run_dir>/pairs/pairs.parquet`: `pair_id,
problem_id, prompt, chosen, rejected, weight, kind` (prompt = the formatted prompt text, chosen /
rejected = completion texts, so the file loads straight into TRL's DPOTrainer; with
`pairs.rejected_span=first_error` `rejected` is cut after its first error, `rejected_cut` says so
and `rejected_full` keeps the whole sample), `weight_raw`,
`chosen_sample_id` / `rejected_sample_id` (-1 = the gold solution) and both verdicts prefixed
`chosen_` / `rejected_`. Samples neither chosen nor rejected for a reason (a verifier error, an
empty completion, a non-finite score, the chosen text again: hsdpo.pairs.EXCLUDE_REASONS) go to
`pairs/_rejects/` (`row` = problem_id/sample_id) and are counted by reason in the manifest's
`rejects`. Samples written with `sample.verify=false` carry no verdict: the stage refuses them
(a one-line error) and leaves its previous output as it was. The selection and weight math is
hsdpo.pairs (pure Python); this module reads, groups and writes. Samples are grouped in the
driver: one row a sample is a few KB, so a few million samples fit in memory.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

from hsdpo.config import InputError, PipelineConfig
from hsdpo.pairs import NO_PAIR_REASONS, Pair, normalise_pairs, select_pairs, weight_stats
from hsdpo.plan import plan
from hsdpo.rundir import RunDir, StageResult, join
from hsdpo.stage import content_hash, log, read_rows, run_stage, write_rejects, write_rows

KINDS = ("hard", "easy", "gold")


def group_by_problem(samples: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in samples:
        groups[r["problem_id"]].append(r)
    return dict(sorted(groups.items()))


def pair_row(pair_id: str, p: Pair, verdict_columns: list[str]) -> dict[str, Any]:
    row = {"pair_id": pair_id, "problem_id": p.rejected["problem_id"], "prompt": p.rejected["prompt"],
           "chosen": p.chosen["completion"],
           "rejected": p.rejected_text if p.rejected_cut else p.rejected["completion"],
           "rejected_cut": p.rejected_cut, "rejected_full": p.rejected["completion"], "weight": p.weight,
           "kind": p.kind, "chosen_sample_id": p.chosen["sample_id"], "rejected_sample_id": p.rejected["sample_id"]}
    for c in verdict_columns:
        row[f"chosen_{c}"] = p.chosen.get(c)
        row[f"rejected_{c}"] = p.rejected.get(c)
    return row


def verified_samples(cfg: PipelineConfig) -> list[dict[str, Any]]:
    """The samples, refused on one line when they carry no verdict (`sample.verify=false`)."""
    samples = read_rows(RunDir(cfg.run_dir).path(cfg.sample.output))
    if samples and all(r.get("correct") is None for r in samples):
        raise InputError(f"pairs: the samples in {cfg.sample.output}/ were not verified (no verdict columns); "
                         "sample them again with sample.verify=true")
    return samples


def _build(cfg: PipelineConfig, out: str, samples: list[dict[str, Any]]) -> StageResult:
    from hsdpo.verifier.batch import VERDICT_COLUMNS

    groups = group_by_problem(samples)
    log(f"pairs: {len(samples)} samples of {len(groups)} problems, negatives={cfg.pairs.negatives}, "
        f"weighting={cfg.pairs.weighting}")
    pairs: list[Pair] = []
    no_pair: Counter = Counter()
    rejects: list[dict[str, Any]] = []
    for pid, rows in groups.items():
        got = select_pairs(rows[0], rows, cfg.pairs, seed=cfg.seed)
        if got.reason:
            no_pair[got.reason] += 1
        pairs += got.pairs
        rejects += [{"reason": why, "row": f"{pid}/{r.get('sample_id')}", "source": str(r.get("source") or "")}
                    for r, why in got.excluded]
    if not pairs:  # what reflogp and dpo would refuse later, after this had replaced the pairs they had
        why = ", ".join(f"{n} {r}" for r, n in no_pair.most_common())
        hint = "; set pairs.use_gold=true to pair the gold solution with wrong ones" if no_pair["all_wrong_no_gold"] \
            else ""
        raise InputError(f"pairs: none of the {len(groups)} problems gave a pair ({why or 'no samples'}){hint}")
    raw = [p.weight for p in pairs]
    normalise_pairs(pairs)
    counts: Counter = Counter()
    rows_out = []
    for p, w_raw in zip(pairs, raw):
        pid = p.rejected["problem_id"]
        rows_out.append({**pair_row(f"{pid}/{counts[pid]}", p, VERDICT_COLUMNS), "weight_raw": w_raw})
        counts[pid] += 1
    write_rows(rows_out, join(out, "pairs.parquet"))
    kinds = Counter(p.kind for p in pairs)
    rows = {"problems": len(groups), "problems_with_pairs": len(counts), "pairs": len(pairs),
            "pairs: rejected cut at first error": sum(p.rejected_cut for p in pairs),
            **{f"no_pair: {r}": no_pair[r] for r in NO_PAIR_REASONS},
            **{f"pairs: {k}": kinds[k] for k in KINDS}}
    # problems in problem_id order, each problem's pairs in a fixed order: the same samples give the
    # same rows whatever order their files were read in, and the manifest knows the pairs by them
    return StageResult(stage="pairs", output=cfg.pairs.output, path=out, rows=rows,
                       rejects=write_rejects(out, rejects), metrics=weight_stats(pairs),
                       manifest={"content_hash": content_hash(rows_out)})


def run_pairs(cfg: PipelineConfig, force: bool = False) -> StageResult:
    samples: list[dict[str, Any]] = []  # by the preflight: unverified samples leave the old pairs as they were

    def preflight() -> None:
        samples.extend(verified_samples(cfg))

    return run_stage(cfg, plan(cfg, "pairs"), body=lambda out: _build(cfg, out, samples), force=force,
                     preflight=preflight)

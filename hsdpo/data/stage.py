"""The `data` stage: read the configured sources into the normalized `problems/` table.

    hsdpo data jobs/tiny.yaml                      # local
    ray job submit --working-dir . -- hsdpo data jobs/qwen2.5-1.5b-metamath.yaml

Output: `<run_dir>/problems/problems.parquet` (problem_id, question, gold_answer, gold_solution,
source, split, num_steps), `_rejects/` with reasons, and `_manifest.json`.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from hsdpo.config import InputError, PipelineConfig
from hsdpo.data.config import SourceConfig
from hsdpo.plan import plan
from hsdpo.rundir import StageResult, join
from hsdpo.stage import run_stage, write_rejects, write_rows


def id_prefixes(sources: list[SourceConfig]) -> list[str]:
    """Each source's problem-id prefix, `name-split-seed`. A source whose prefix an earlier one has
    (two GSM8K-format files of one split) gets its position too, `gsm8k-train-0-s1`: no two sources
    share an id (sampling keys on it), and a recipe without such a pair keeps the ids it had."""
    from hsdpo.data.sources import default_id_prefix

    out: list[str] = []
    for i, src in enumerate(sources):
        prefix = default_id_prefix(src)
        if prefix in out:
            prefix = f"{prefix}-s{i}"
        out.append(prefix)
    return out


def read_sources(cfg: PipelineConfig) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(problems, rejects) of every source; read in the preflight, so that an unreadable file, a hub
    dataset that does not load or no usable problem is a one-line error before the previous
    problems/ is replaced."""
    from hsdpo.data.sources import load_source

    rows: list[dict[str, Any]] = []
    rejects: list[dict[str, Any]] = []
    for src, prefix in zip(cfg.data.sources, id_prefixes(cfg.data.sources)):
        got, bad = load_source(src, cfg.seed, prefix)
        rows += got
        rejects += bad
    if cfg.data.drop_test_overlap:
        train_q = {r["question"] for r in rows if r["split"] == "train"}
        keep = []
        for r in rows:
            if r["split"] != "train" and r["question"] in train_q:
                rejects.append({"reason": "overlaps_train", "row": r["problem_id"], "source": r["source"]})
            else:
                keep.append(r)
        rows = keep
    if not rows:
        counts = Counter(str(r.get("reason")) for r in rejects).most_common()
        why = f": {len(rejects)} rows rejected ({', '.join(f'{n} {k}' for k, n in counts[:4])}" \
              f"{', ...' if len(counts) > 4 else ''})" if rejects else ": the sources hold no rows"
        raise InputError(f"data: no usable problems{why}; check data.sources")
    return rows, rejects


def _build(cfg: PipelineConfig, out: str, rows: list[dict[str, Any]], rejects: list[dict[str, Any]]) -> StageResult:
    write_rows(rows, join(out, "problems.parquet"))
    by_split: dict[str, int] = {}
    for r in rows:
        by_split[r["split"]] = by_split.get(r["split"], 0) + 1
    return StageResult(stage="data", output=cfg.data.output, path=out, rows={"problems": len(rows), **by_split},
                       rejects=write_rejects(out, rejects))


def run_data(cfg: PipelineConfig, force: bool = False) -> StageResult:
    read: dict[str, Any] = {}  # by the preflight, before the previous problems/ is replaced

    def check() -> None:
        _preflight(cfg)
        read["data"] = read_sources(cfg)

    return run_stage(cfg, plan(cfg, "data"), body=lambda out: _build(cfg, out, *read["data"]), force=force,
                     preflight=check)


def _preflight(cfg: PipelineConfig) -> None:
    """Every source file is there before any is read."""
    import fsspec

    for i, src in enumerate(cfg.data.sources):
        if src.name != "synthetic" and src.path:
            fs, p = fsspec.core.url_to_fs(src.path)
            if not fs.isfile(p):
                raise FileNotFoundError(f"data file not found: {src.path} (data.sources.{i}.path)")


def load_problems(cfg: PipelineConfig, split: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
    from hsdpo.rundir import RunDir
    from hsdpo.stage import read_rows

    rows = read_rows(RunDir(cfg.run_dir).path(cfg.data.output))
    if split is not None:
        rows = [r for r in rows if r["split"] == split]
    return rows[:limit] if limit is not None else rows

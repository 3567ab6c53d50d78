"""What every stage shares: skip-if-current, clean start, manifest last, end-of-stage table.

    def run_data(cfg):
        return run_stage(cfg, plan(cfg, "data"), body=lambda out: _write_problems(cfg, out))

`plan(cfg, stage)` (hsdpo.plan) says what the stage writes, which run-dir outputs it reads and
which config sections its output depends on.

`body(out_dir)` does the work into the (emptied) stage folder and returns a `StageResult`; the
manifest is written only after it returns, so a killed stage leaves no manifest behind.
`preflight()`, when given, runs first (after the inputs are found, before the folder is emptied):
what it refuses -- a model that cannot load, more workers than a local Ray has -- leaves the
stage's previous output as it was. So does a body that fails: the previous complete output waits
in `<run_dir>/_previous/<output>` while the body runs, and is put back when it raises (or, after a
killed run, when the stage next starts); the stage's disk use is the old output plus the new one.
The whole of it runs under the stage's lock (`hsdpo.stagelock.stage_lock`): a second run of the same
stage on the same run dir is refused while the first runs.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from typing import Any, Callable

import pyarrow as pa
import pyarrow.parquet as pq

from hsdpo.config import ConfigError, InputError, PipelineConfig, dump_config
from hsdpo.configbase import first_line
from hsdpo.plan import Plan, check_plan
from hsdpo.rundir import FAILED, REJECTS, RunDir, StageResult, _fs, fingerprint, join, list_files
from hsdpo.stagelock import stage_lock
from hsdpo.verifier.config import VERIFIER_VERSION


def log(msg: str) -> None:
    print(f"[hsdpo] {msg}", file=sys.stderr, flush=True)


def config_hash(cfg: PipelineConfig, plan: Plan) -> str:
    """What a stage's manifest records of the config: its output is current while this is unchanged."""
    versions = f":verifier-v{VERIFIER_VERSION}" if "verifier" in plan.sections else ""
    return cfg.section_hash(*plan.sections, ignore=plan.ignore) + versions + ":" + plan.output


def manifest_extra(plan: Plan) -> dict[str, Any]:
    """What a manifest records besides the config: the verifier's version where verdicts are made."""
    return {"verifier_version": VERIFIER_VERSION} if "verifier" in plan.sections else {}


def run_stage(
    cfg: PipelineConfig,
    plan: Plan,
    *,
    body: Callable[[str], StageResult],
    force: bool = False,
    preflight: Callable[[], None] | None = None,
) -> StageResult:
    check_plan(plan)
    rd = RunDir(cfg.run_dir)
    stage, output, inputs = plan.stage, plan.output, list(plan.inputs)
    hashed = config_hash(cfg, plan)
    with stage_lock(cfg.run_dir, output):
        if rd.recover(output):
            log(f"{stage}: a stopped run's partial output replaced by the complete output it had set aside")
        held = (rd.manifest(output) or {}).get("stage")
        if held and held != stage:  # e.g. reflogp.output=problems would replace the problems with log-probs
            raise ConfigError(f"{stage}.output {output!r} holds the output of {held} ({rd.path(output)}); set"
                              f" {stage}.output to another folder, or remove that one to replace it")
        if not force and rd.is_current(output, hashed, inputs, plan.files):
            log(f"{stage} -> {rd.path(output)}: complete and current, skipped")
            return StageResult(stage=stage, output=output, path=rd.path(output), skipped=True)
        for name in inputs:
            rd.require(name)
        seen = rd.input_hashes(inputs)  # what the body reads; recorded as such even if re-made meanwhile
        files = {f: fingerprint(f) for f in plan.files}
        if preflight is not None:
            preflight()
        log(f"{stage} -> {rd.path(output)}; resolved config:\n{dump_config(cfg)}")
        kept = rd.set_aside(output)
        out = rd.reset(output)
        try:
            t0 = time.perf_counter()
            result = body(out)
            result.wall_s = time.perf_counter() - t0
            result.stage, result.output, result.path = stage, output, out
            result.manifest = {**manifest_extra(plan), **result.manifest}
            rd.finish(result, hashed, inputs, cfg.model_dump(mode="json"), input_hashes=seen, files=files)
        except BaseException as err:
            try:
                rd.record_failure(output, err)
            except Exception:  # noqa: BLE001 -- the body's error is the one to raise
                pass
            if kept:
                _put_back(rd, stage, output)
            raise
        if kept:
            try:
                rd.drop_previous(output)
            except Exception as err:  # noqa: BLE001 -- the new output is complete; the next run drops it
                log(f"warning: could not remove {rd.previous(output)}: {err}")
    print(format_table(result), flush=True)
    return result


def _put_back(rd: RunDir, stage: str, output: str) -> None:
    """After a failed body: the previous output back in place; a failure doing so is logged, and the
    body's error is the one raised (the next run of the stage tries again: `RunDir.recover`)."""
    try:
        rd.restore(output, keep_failed=True)
        log(f"{stage} failed; its previous output is back in {rd.path(output)}, and what the failed run"
            f" wrote is in {rd.path(FAILED, output)}")
    except Exception as err:  # noqa: BLE001
        log(f"warning: {stage} failed and its previous output could not be put back ({err});"
            f" it is in {rd.previous(output)}, and the next run of {stage} puts it back")


def format_table(result: StageResult) -> str:
    rows: list[tuple[str, Any]] = [("stage", f"{result.stage} -> {result.path}")]
    rows += [(f"rows: {k}", v) for k, v in result.rows.items()]
    rows += [(f"rejects: {k}", v) for k, v in result.rejects.items()]
    for k, v in result.metrics.items():
        if isinstance(v, (int, float, str)):
            rows.append((k, f"{v:.4g}" if isinstance(v, float) else v))
    rows.append(("wall time", f"{result.wall_s:.1f} s"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)


# ---- tables -------------------------------------------------------------------------------------

def write_rows(rows: list[dict[str, Any]], path: str, schema: pa.Schema | None = None) -> int:
    """Write rows as one Parquet file (the folder is created); returns the row count."""
    table = pa.Table.from_pylist(rows, schema=schema)
    fs, p = _fs(path)
    fs.makedirs(p.rsplit("/", 1)[0], exist_ok=True)
    with fs.open(p, "wb") as f:
        pq.write_table(table, f)
    return table.num_rows


def content_hash(rows: list[dict[str, Any]]) -> str:
    """A hash of a table's rows, in their order (a stage that writes them in a canonical order)."""
    h = hashlib.sha256()
    for r in rows:
        h.update(json.dumps(r, sort_keys=True, default=repr).encode())
        h.update(b"\n")
    return h.hexdigest()[:16]


def read_parquet(file: str, schema_only: bool = False) -> pa.Table | pa.Schema:
    """One Parquet file's rows (or its schema); a file that is not Parquet (empty, cut short, another
    format under a .parquet name) is a one-line `InputError` naming it."""
    fs, p = _fs(file)
    try:
        with fs.open(p, "rb") as fh:
            return pq.read_schema(fh) if schema_only else pq.read_table(fh)
    except (pa.ArrowInvalid, OSError) as err:
        raise InputError(f"{file}: not a readable Parquet file ({first_line(err, 200)}); re-run the stage"
                         " that wrote it (with --force) or remove the file") from None


def read_table(folder: str) -> pa.Table | None:
    """All rows of a stage's Parquet files (rejects and manifests excluded) as one Arrow table, in
    file order; None when there is no file."""
    tables = [read_parquet(f) for f in list_files(folder, ".parquet")]
    if not tables:
        return None
    try:
        return pa.concat_tables(tables, promote_options="default")
    except (pa.ArrowTypeError, pa.ArrowInvalid) as err:  # one file's column a string, another's a number
        raise InputError(f"{folder}: its Parquet files disagree on a column's type ({first_line(err, 200)});"
                         " give every file the same schema") from None


def read_rows(folder: str) -> list[dict[str, Any]]:
    """All rows of a stage's Parquet files (rejects and manifests excluded), in file order."""
    table = read_table(folder)
    return table.to_pylist() if table is not None else []


def flag(value: Any) -> bool:
    """A boolean column's value as `read_rows` gives it back (None or NaN = False)."""
    return bool(value) and value == value


def write_rejects(out_dir: str, rejects: list[dict[str, Any]]) -> dict[str, int]:
    """Rows that cannot be used go to `<stage>/_rejects/` with a `reason`; returns counts by reason."""
    if not rejects:
        return {}
    # a lone surrogate in a hostile row would make the whole Parquet write fail: kept as \udXXX
    rows = [{"reason": r["reason"], "row": str(r.get("row"))[:2000].encode("utf-8", "backslashreplace").decode("utf-8"),
             "source": r.get("source", "")} for r in rejects]
    write_rows(rows, join(out_dir, REJECTS, "rejects.parquet"))
    counts: dict[str, int] = {}
    for r in rejects:
        counts[r["reason"]] = counts.get(r["reason"], 0) + 1
    return counts

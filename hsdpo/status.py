"""`hsdpo status CONFIG [key=value ...]`: each step of the recipe, whether its output is current, and
if not, why `hsdpo pipeline` would run it -- which config keys changed since it ran, which input was
re-made, or which run holds it now. Reads manifests and locks only: starts no Ray, writes nothing.

    step     output     state      why
    data     problems   current    2000 problems, 3.1 s, 2026-11-30 05:12
    sample   samples    stale      config changed: sample.n 8 -> 16
    pairs    pairs      stale      input samples will be re-made
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from hsdpo.config import PipelineConfig, depends_on
from hsdpo.plan import plan, recipe_steps
from hsdpo.rundir import FAILED, MANIFEST, PREVIOUS, RunDir, _fs
from hsdpo.stagelock import lock_holder
from hsdpo.stage import config_hash
from hsdpo.verifier.config import VERIFIER_VERSION

STATES = ("current", "running", "stale", "incomplete", "missing")
MAX_CHANGES = 4  # config keys named in a line


@dataclass
class StepStatus:
    stage: str
    output: str
    state: str  # one of STATES
    why: str  # one line
    rows: dict[str, int] = field(default_factory=dict)
    finished_at: float | None = None
    wall_s: float | None = None
    conditional: bool = False  # stale only through inputs that may be re-made the same (content hashes)


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted keys to values; a list of sections (data.sources) by index, any other list whole."""
    items = obj.items() if isinstance(obj, dict) else \
        enumerate(obj) if isinstance(obj, list) and obj and all(isinstance(x, dict) for x in obj) else None
    if items is None:
        return {prefix[:-1]: obj}
    out: dict[str, Any] = {}
    for k, v in items:
        out.update(_flatten(v, f"{prefix}{k}."))
    return out


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


def config_changes(recorded: dict[str, Any], now: dict[str, Any], sections: tuple[str, ...],
                   ignore: tuple[str, ...] = ()) -> list[str]:
    """`key old -> new` for each dotted key of `sections` whose value differs (RUN_ONLY settings,
    which change no output, and the keys of `ignore` left out: `config.depends_on`)."""
    old = _flatten(depends_on(recorded, sections, ignore))
    new = _flatten(depends_on(now, sections, ignore))

    def show(d: dict[str, Any], k: str) -> str:
        return _short(d[k]) if k in d else "(unset)"

    return [f"{k} {show(old, k)} -> {show(new, k)}" for k in sorted(set(old) | set(new))
            if k not in old or k not in new or old[k] != new[k]]


def _since(t: Any) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t)) if isinstance(t, (int, float)) and t > 0 else "?"


def step_status(cfg: PipelineConfig, stage: str, remade: set[str], conditional: set[str] = frozenset()) -> StepStatus:
    """The state of one step; `remade` holds the outputs of earlier steps that a pipeline run would
    write again (so this one's inputs would change under it). A finished output that a later, failed
    run put back (`run_stage`) says so, with the error."""
    st = _step_status(cfg, stage, remade, conditional)
    if st.state in ("current", "stale") and (failed := RunDir(cfg.run_dir).last_failure(st.output)) is not None:
        st.why += (f"; a later run failed {_since(failed.get('failed_at'))}: {failed.get('error')}"
                   f" (its files in {FAILED}/{st.output})")
    return st


def _step_status(cfg: PipelineConfig, stage: str, remade: set[str], conditional: set[str]) -> StepStatus:
    p = plan(cfg, stage)
    rd = RunDir(cfg.run_dir)
    st = StepStatus(stage, p.output, "current", "")
    holder = lock_holder(cfg.run_dir, p.output)
    if holder is not None:
        st.state, st.why = "running", (f"host {holder.get('host')}, pid {holder.get('pid')}, since "
                                       f"{_since(holder.get('started'))}: {holder.get('command', '?')}")
        return st
    why = rd.staleness(p.output, config_hash(cfg, p), list(p.inputs), p.files)  # the rule run_stage skips by
    m = rd.manifest(p.output) or {}
    if why is not None and why[0] == "missing":
        if m.get("status") == "unreadable":
            st.state, st.why = "incomplete", f"its {MANIFEST} is unreadable ({m.get('error')}); the next run starts it over"
            return st
        fs, folder = _fs(rd.path(p.output))
        left = fs.exists(folder)  # what a stopped run left, `_init/` or `_rejects/` alone included
        st.state, st.why = ("incomplete", "a stopped run's partial output (the next run starts it over)") if left \
            else ("missing", "not run yet")
        if rd.has_previous(p.output):  # a killed run's: the next run puts it back, then decides
            st.state, st.why = "incomplete", (f"a stopped run's partial output; the complete output it had set aside"
                                              f" ({PREVIOUS}/{p.output}) is put back when the stage next runs")
        elif left and (failed := rd.last_failure(p.output)) is not None:
            st.why = f"its last run failed {_since(failed.get('failed_at'))}: {failed.get('error')} (the next run starts it over)"
        return st
    rows = m.get("rows")
    st.rows = {k: v for k, v in rows.items() if isinstance(v, int)} if isinstance(rows, dict) else {}
    st.finished_at = m["finished_at"] if isinstance(m.get("finished_at"), (int, float)) else None
    st.wall_s = m["wall_s"] if isinstance(m.get("wall_s"), (int, float)) else None
    if why is not None and why[0] == "config":
        recorded = m.get("config") if isinstance(m.get("config"), dict) else {}
        changes = config_changes(recorded, cfg.model_dump(mode="json"), p.sections, p.ignore)
        named = ", ".join(changes[:MAX_CHANGES]) + (f" (+{len(changes) - MAX_CHANGES} more)" if len(changes) > MAX_CHANGES else "")
        version = m.get("verifier_version")
        st.state, st.why = "stale", (f"config changed: {named}" if changes else
                                     f"the verifier changed (version {version or 1} -> {VERIFIER_VERSION})"
                                     if "verifier" in p.sections and version != VERIFIER_VERSION else
                                     "config hash differs though no setting does (hashed by an older hsdpo)")
        if stage == "sample":
            from hsdpo.sampling.stage import reusable_samples

            if reusable_samples(cfg) is not None:
                st.why += " (the stored samples are verified again, no sampling)"
        return st
    if why is not None and why[0] == "file changed":
        st.state, st.why = "stale", f"{why[1]} changed since this ran (or is gone, or cannot be read from here)"
        return st
    later = [name for name in p.inputs if name in remade]
    if why is not None or later:
        st.state = "stale"
        st.why = (f"input {why[1]} is missing" if why and why[0] == "input missing" else
                  f"input {why[1]} was re-made after this ran" if why else f"input {later[0]} will be re-made")
        if not why and all(name in conditional or isinstance((rd.manifest(name) or {}).get("content_hash"), str)
                           for name in later):  # known by its rows: re-made the same, this is skipped
            st.conditional = True
            st.why += " (runs only if that comes out different)"
        return st
    counts = ", ".join(f"{v} {k}" for k, v in list(st.rows.items())[:2])
    st.why = f"{counts}, {st.wall_s or 0:.1f} s, {_since(st.finished_at)}".lstrip(", ")
    return st


def pipeline_status(cfg: PipelineConfig) -> list[StepStatus]:
    """Every step's state; a recipe `hsdpo pipeline` refuses (check_steps) is refused here the same."""
    out, remade, conditional = [], set(), set()
    for step, step_cfg in recipe_steps(cfg):
        st = step_status(step_cfg, step.stage, remade, conditional)
        if st.state != "current":
            remade.add(st.output)
        if st.conditional:
            conditional.add(st.output)
        out.append(st)
    return out


def format_status(cfg: PipelineConfig, steps: list[StepStatus]) -> str:
    rows = [("step", "output", "state", "why")] + [(s.stage, s.output, s.state, s.why) for s in steps]
    w = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [f"run_dir {RunDir(cfg.run_dir).root}"]
    lines += [f"  {a:<{w[0]}}  {b:<{w[1]}}  {c:<{w[2]}}  {d}".rstrip() for a, b, c, d in rows]
    todo = [s.output for s in steps if s.state != "current"]
    lines.append(f"{len(steps) - len(todo)} of {len(steps)} steps current"
                 + (f"; `hsdpo pipeline` would run: {', '.join(todo)}" if todo else ""))
    return "\n".join(lines)


def status_json(steps: list[StepStatus]) -> str:
    return json.dumps([asdict(s) for s in steps], indent=2, default=str)

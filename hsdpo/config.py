"""The root config: one typed, validated section per stage, loaded from YAML plus overrides.

    cfg = load_config("jobs/tiny.yaml", ["dpo.beta=0.2", "run_dir=/tmp/x"])

Every error (missing file, bad YAML, unknown key, wrong type, malformed override) is a
`ConfigError` whose message is one line naming the path or the dotted key.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError

from hsdpo.configbase import Location, StrictModel, without_run_only
from hsdpo.data.config import DataConfig
from hsdpo.eval.config import EvalConfig
from hsdpo.model import ModelConfig
from hsdpo.pairs import PairsConfig
from hsdpo.sampling.config import SampleConfig
from hsdpo.train.config import DPOConfig, RefLogpConfig, SFTConfig
from hsdpo.verifier.config import VerifierConfig

STAGES = ("data", "sft", "sample", "pairs", "reflogp", "dpo", "eval")


class ConfigError(ValueError):
    """A one-line, user-facing config problem."""


class InputError(ValueError):
    """A stage's input is missing or unusable (no rows, a missing package a setting asks for):
    reported on one line, like a config error."""


class RayConfig(StrictModel):
    address: str | None = Field(None, description="Ray address; None = $RAY_ADDRESS or a new local Ray"
                                   " (auto = the Ray that `ray start` runs on this machine)")
    num_cpus: int | None = Field(None, description="CPUs for a new local Ray (None = all)")
    object_store_memory_gb: float | None = Field(None, description="object store size for a new local Ray")
    runtime_env: dict[str, Any] = Field(default_factory=dict, description="runtime_env for ray.init")


class StageSpec(StrictModel):
    stage: str = Field(description="one of " + ", ".join(STAGES))
    overrides: list[str] = Field(default_factory=list, description="dotted key=value applied for this step")

    def model_post_init(self, _ctx: Any) -> None:
        if self.stage not in STAGES:
            raise ValueError(f"unknown stage {self.stage!r}; stages: {', '.join(STAGES)}")


def _default_steps() -> list[StageSpec]:
    return [StageSpec(stage=s) for s in STAGES]


class PipelineConfig(StrictModel):
    name: str = Field("run", description="experiment name, for logs and reports")
    run_dir: Location = Field("runs/default", description="local path or fsspec URI (s3://, gs://)")
    seed: int = Field(0, description="global seed; each stage derives its own")
    ray: RayConfig = Field(default_factory=RayConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    sft: SFTConfig = Field(default_factory=SFTConfig)
    sample: SampleConfig = Field(default_factory=SampleConfig)
    verifier: VerifierConfig = Field(default_factory=VerifierConfig)
    pairs: PairsConfig = Field(default_factory=PairsConfig)
    reflogp: RefLogpConfig = Field(default_factory=RefLogpConfig)
    dpo: DPOConfig = Field(default_factory=DPOConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    steps: list[StageSpec] = Field(default_factory=_default_steps, description="what `hsdpo pipeline` runs, in order")

    def section_hash(self, *keys: str, ignore: tuple[str, ...] = ()) -> str:
        """Stable hash of some top-level sections: what a stage's outputs depend on (RUN_ONLY
        settings and the dotted keys of `ignore` left out)."""
        dumped = depends_on(self.model_dump(mode="json"), keys, ignore)
        blob = json.dumps(dumped, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def depends_on(dumped: dict[str, Any], sections: tuple[str, ...], ignore: tuple[str, ...] = ()) -> dict[str, Any]:
    """The part of a config dump (`model_dump(mode="json")`, or a manifest's record of one) that a
    stage's output depends on: `sections` less RUN_ONLY settings and the dotted keys of `ignore`
    (settings of a section the stage never reads, e.g. `sample.n` for eval)."""
    out = without_run_only(PipelineConfig, {k: dumped.get(k) for k in sections})
    for key in ignore:
        *parents, last = key.split(".")
        d = out
        for part in parents:
            d = d.get(part) if isinstance(d, dict) else None
        if isinstance(d, dict):
            d.pop(last, None)
    return out


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key: Any, line: int):
        super().__init__(f"key {key!r} repeated")
        self.key, self.line = key, line


class _Loader(yaml.SafeLoader):
    """Safe YAML that leaves a date as written: `name: 2024-01-01` is the string a string field
    wants, not a `date` that no setting takes."""

    yaml_implicit_resolvers = {first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
                               for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}


class _UniqueKeyLoader(_Loader):
    """Safe YAML that refuses a key given twice in one mapping (plain YAML keeps the last silently:
    a second `dpo:` section would drop the first without a word)."""

    def construct_mapping(self, node, deep=False):
        seen: set = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, (str, int, float, bool)) or key is None:
                if key in seen:
                    raise _DuplicateKey(key, key_node.start_mark.line + 1)
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _parse_value(raw: str) -> Any:
    """Override values are YAML scalars/flows: `0.2`, `true`, `[1, 2]`, `null`, `s3://b/x`."""
    try:
        return yaml.load(raw, Loader=_Loader)
    except yaml.YAMLError:
        return raw


def _index(node: list, part: str, key: str, where: str) -> int:
    """The list position `part` names in override `key` (`data.sources.1.path`: the second source)."""
    if not part.isdigit():
        raise ConfigError(f"override {key}: {where} is a list; {part!r} is not an index")
    if int(part) >= len(node):
        raise ConfigError(f"override {key}: {where} has {len(node)} item(s), no index {part}")
    return int(part)


def apply_override(tree: dict[str, Any], item: str) -> None:
    """Set dotted `key=value` in `tree`; a number indexes a list of sections, the way `hsdpo status`
    names a changed key (`data.sources.0.synthetic.num_problems=30`)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not of the form key=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    parts = key.split(".")
    if not all(parts):
        raise ConfigError(f"override {item!r} has an empty key part")
    node: Any = tree
    for i, part in enumerate(parts[:-1]):
        where = ".".join(parts[:i]) or "<root>"
        if isinstance(node, list):
            child = node[_index(node, part, key, where)]
        else:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
        if not isinstance(child, (dict, list)):
            raise ConfigError(f"override {key}: {'.'.join(parts[: i + 1])} is not a section")
        node = child
    if isinstance(node, list):
        node[_index(node, parts[-1], key, ".".join(parts[:-1]))] = _parse_value(raw)
    else:
        node[parts[-1]] = _parse_value(raw)


def _format_error(err: ValidationError) -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or "<root>"
    kind = first["type"]
    if kind == "extra_forbidden":
        return f"unknown config key: {loc}"
    more = f" (+{err.error_count() - 1} more)" if err.error_count() > 1 else ""
    value = first.get("input")
    shown = "" if isinstance(value, dict) else f" (got {value!r:.60})"
    return f"bad config value at {loc}: {first['msg']}{shown}{more}"


def _not_plain(node: Any, loc: str = "", above: tuple[int, ...] = ()) -> tuple[str, str] | None:
    """(dotted key, what is there) of the first value JSON cannot hold (a `!!binary`, a `!!set`, an
    explicit `!!timestamp`, an alias inside itself), or None: named in the error, not a traceback."""
    where = loc or "<root>"
    if isinstance(node, (dict, list)):
        if id(node) in above:
            return (where, "an alias inside itself")
        items: Any = node.items() if isinstance(node, dict) else enumerate(node)
        for k, v in items:
            if not isinstance(k, (str, int, float, bool)) and k is not None:
                return (where, f"the key {k!r:.60}")
            found = _not_plain(v, f"{loc}.{k}" if loc else str(k), (*above, id(node)))
            if found:
                return found
        return None
    return None if node is None or isinstance(node, (str, int, float)) else (where, f"{node!r:.60}")


def config_from_dict(tree: dict[str, Any], overrides: list[str] = ()) -> PipelineConfig:
    try:
        tree = json.loads(json.dumps(tree))  # deep copy, plain types
    except (TypeError, ValueError, RecursionError):
        loc, shown = _not_plain(tree) or ("<root>", "a value nested too deeply")
        raise ConfigError(f"bad config value at {loc}: not a plain YAML value (got {shown})") from None
    for item in overrides:
        apply_override(tree, item)
    try:
        return PipelineConfig.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(_format_error(err)) from None


def load_config(path: str | os.PathLike | None, overrides: list[str] = ()) -> PipelineConfig:
    tree: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            tree = yaml.load(p.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader) or {}
        except UnicodeDecodeError as err:
            raise ConfigError(f"config file {p} is not UTF-8 text (byte {err.start})") from None
        except _DuplicateKey as err:
            raise ConfigError(f"config file {p} line {err.line}: key {err.key!r} given twice in one section") from None
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark else ""
            raise ConfigError(f"config file {p}{where} is not valid YAML") from None
        if not isinstance(tree, dict):
            raise ConfigError(f"config file {p} must hold a mapping at top level")
    return config_from_dict(tree, list(overrides))


def with_overrides(cfg: PipelineConfig, overrides: list[str]) -> PipelineConfig:
    return config_from_dict(cfg.model_dump(mode="json"), overrides)


def dump_config(cfg: PipelineConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)

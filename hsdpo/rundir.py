"""The run directory: one folder a stage, each finished by an atomic `_manifest.json`.

A stage is *done* when its manifest exists with status "complete", its config hash matches the
current config, and the input-manifest hashes it recorded match the inputs' manifests now. A
stage that starts clears whatever a killed earlier attempt left in its folder, so a re-run never
duplicates or mixes rows. `run_dir` is a local path or any fsspec URI (s3://, gs://).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Iterator

import fsspec

from hsdpo import __version__

MANIFEST = "_manifest.json"
REJECTS = "_rejects"


def _fs(path: str) -> tuple[fsspec.AbstractFileSystem, str]:
    fs, root = fsspec.core.url_to_fs(path)
    return fs, root


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts])


def local_path(path: str) -> str:
    """Absolute form of a local path; URIs pass through (Ray workers resolve both the same)."""
    return path if "://" in path else os.path.abspath(path)


@dataclass
class StageResult:
    stage: str
    output: str
    path: str
    skipped: bool = False
    rows: dict[str, int] = field(default_factory=dict)
    rejects: dict[str, int] = field(default_factory=dict)
    wall_s: float = 0.0
    metrics: dict[str, Any] = field(default_factory=dict)


def read_json(path: str) -> dict[str, Any] | None:
    fs, p = _fs(path)
    if not fs.exists(p):
        return None
    with fs.open(p, "r") as f:
        return json.load(f)


def write_json_atomic(path: str, obj: Any) -> None:
    """Write to a temporary name, then rename: readers see the old file or the new one."""
    fs, p = _fs(path)
    tmp = f"{p}.tmp-{uuid.uuid4().hex[:8]}"
    with fs.open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True, default=str)
    fs.mv(tmp, p)


def manifest_hash(manifest: dict[str, Any] | None) -> str | None:
    if manifest is None:
        return None
    keep = {k: manifest.get(k) for k in ("stage", "output", "config_hash", "inputs", "rows", "finished_at")}
    return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:16]


class RunDir:
    def __init__(self, root: str):
        self.root = local_path(root)

    def path(self, output: str, *parts: str) -> str:
        return join(self.root, output, *parts)

    def manifest(self, output: str) -> dict[str, Any] | None:
        return read_json(self.path(output, MANIFEST))

    def input_hashes(self, inputs: list[str]) -> dict[str, str | None]:
        return {name: manifest_hash(self.manifest(name)) for name in inputs}

    def is_current(self, output: str, config_hash: str, inputs: list[str]) -> bool:
        m = self.manifest(output)
        if not m or m.get("status") != "complete" or m.get("config_hash") != config_hash:
            return False
        now = self.input_hashes(inputs)
        return all(v is not None for v in now.values()) and m.get("inputs") == now

    def require(self, output: str) -> dict[str, Any]:
        m = self.manifest(output)
        if not m or m.get("status") != "complete":
            raise FileNotFoundError(f"stage output {self.path(output)} is missing or incomplete; run its stage first")
        return m

    def reset(self, output: str) -> str:
        """Remove a stage folder (a killed attempt's leftovers) and recreate it empty."""
        fs, p = _fs(self.path(output))
        if fs.exists(p):
            fs.rm(p, recursive=True)
        fs.makedirs(p, exist_ok=True)
        return self.path(output)

    def finish(self, result: StageResult, config_hash: str, inputs: list[str], config: dict[str, Any]) -> None:
        write_json_atomic(
            self.path(result.output, MANIFEST),
            {
                "stage": result.stage,
                "output": result.output,
                "status": "complete",
                "config_hash": config_hash,
                "inputs": self.input_hashes(inputs),
                "package_version": __version__,
                "rows": result.rows,
                "rejects": result.rejects,
                "wall_s": round(result.wall_s, 3),
                "metrics": result.metrics,
                "finished_at": time.time(),
                "config": config,
            },
        )


def list_files(path: str, suffix: str = "") -> Iterator[str]:
    fs, p = _fs(path)
    if not fs.exists(p):
        return iter(())
    proto = path.split("://", 1)[0] + "://" if "://" in path else ""
    return iter(sorted(proto + f for f in fs.find(p) if f.endswith(suffix) and "/_" not in f[len(p):]))

"""The run directory: one folder a stage, each finished by an atomic `_manifest.json`.

A stage is *done* when its manifest exists with status "complete", its config hash matches the
current config, and the input-manifest hashes it recorded match the inputs' manifests now. A
stage that starts clears whatever a killed earlier attempt left in its folder, so a re-run never
duplicates or mixes rows. `run_dir` is a local path or any fsspec URI (s3://, gs://).

Tables go through fsspec directly. Model folders do not: transformers, DeepSpeed and TensorBoard
write and read local files. So a process that loads a model from a URI loads a local copy
(`fetch_dir`, downloaded once a machine into a cache), and a stage that writes a model or logs
writes them into a local folder that is copied to the URI when it is complete (`local_dir`).
One run at a time writes a stage's folder: hsdpo.stagelock.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import posixpath
import shutil
import socket
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Iterator

import fsspec
from filelock import FileLock
from fsspec.implementations.local import LocalFileSystem

from hsdpo import __version__

MANIFEST = "_manifest.json"
REJECTS = "_rejects"
LOCKS = "_locks"
PREVIOUS = "_previous"  # a stage's last complete output while it runs again (RunDir.set_aside)
FAILED = "_failed"  # what the last failed run of a stage had written, when its previous output was put back
FAILURE = "_failure.json"  # in a failed run's folder: its error, when and by what command (RunDir.record_failure)


def _fs(path: str) -> tuple[fsspec.AbstractFileSystem, str]:
    fs, root = fsspec.core.url_to_fs(path)
    return fs, root


def _is_local(fs: fsspec.AbstractFileSystem) -> bool:
    return isinstance(fs, LocalFileSystem)


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts])


def is_uri(path: str) -> bool:
    return "://" in path


def local_path(path: str) -> str:
    """Absolute form of a local path, `~` expanded (a recipe's `run_dir: ~/runs/x` is not a folder
    named `~` in the working directory); URIs pass through (Ray workers resolve both the same)."""
    return path if is_uri(path) else os.path.abspath(os.path.expanduser(path))


def cache_root() -> str:
    """Where `fetch_dir` keeps its copies: $HSDPO_CACHE, else ~/.cache/hsdpo."""
    return os.environ.get("HSDPO_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "hsdpo")


def _version(info: dict[str, Any]) -> str:
    """What changes when a file is rewritten: its ETag (S3), generation / md5 (GCS) or mtime."""
    for key in ("ETag", "etag", "generation", "md5Hash", "mtime", "LastModified", "updated", "created"):
        if info.get(key) is not None:
            return str(info[key])
    return ""


def _listing(fs: Any, root: str) -> list[tuple[str, Any, str]]:
    """(name relative to `root`, size, version) of each file at or under `root`, sorted. A local
    symlink is known by its target's size and mtime (fsspec reports the link's own mtime)."""
    files = {name: info for name, info in fs.find(root, detail=True).items() if info.get("type") != "directory"}
    out = []
    for name, info in files.items():
        size, version = info.get("size"), _version(info)
        if info.get("islink"):
            try:
                st = os.stat(name)
                size, version = st.st_size, str(st.st_mtime)
            except OSError:  # a dangling link
                pass
        out.append((posixpath.relpath(name, root), size, version))
    return sorted(out)


def fingerprint(path: str) -> str | None:
    """What changes when a file or folder outside the run dir that a stage reads (a data file, a model
    folder) is rewritten: a hash of each of its files' name, size and version (ETag, generation or
    mtime); None when nothing is there, or it cannot be read from here (no credentials for its bucket,
    no driver for its scheme). Run-dir stages are known by their manifests instead."""
    try:
        fs, root = _fs(os.path.abspath(os.path.expanduser(path)) if not is_uri(path) else path)
        listing = _listing(fs, root.rstrip("/"))
    except Exception:  # noqa: BLE001 -- botocore, gcsfs and HTTP errors are no OSError
        return None
    return hashlib.sha256(json.dumps(listing).encode()).hexdigest()[:16] if listing else None


def fetch_dir(path: str) -> str:
    """A local folder holding the files of folder `path`: `path` itself when it is local; for a URI,
    a copy under `<cache_root>/fetched/<key>/`, downloaded once a machine. The key hashes the URI
    and every file's name, size and version, so a folder rewritten by a re-run stage is fetched anew.
    Processes fetching at once (8 trainer ranks or sampler actors on one node) take turns on a lock
    file: the first downloads (into a private folder, renamed when complete), the others wait and
    find the copy."""
    if not is_uri(path):
        return path
    fs, root = _fs(path)
    root = root.rstrip("/")
    listing = _listing(fs, root)
    if not listing:
        raise FileNotFoundError(f"{path}: no such folder, or it is empty")
    key = hashlib.sha256(json.dumps([path, listing]).encode()).hexdigest()[:20]
    dest = os.path.join(cache_root(), "fetched", key)
    if os.path.isdir(dest):
        return dest
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    with FileLock(f"{dest}.lock"):
        if os.path.isdir(dest):  # another process fetched it while this one waited
            return dest
        tmp = tempfile.mkdtemp(prefix=f"{key}.part-", dir=os.path.dirname(dest))
        try:
            for rel, _, _ in listing:
                target = os.path.join(tmp, *rel.split("/"))
                os.makedirs(os.path.dirname(target), exist_ok=True)
                fs.get_file(f"{root}/{rel}", target)
            os.rename(tmp, dest)  # complete or absent: a killed download leaves only a .part- folder
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def push_dir(local: str, path: str) -> list[str]:
    """Copy every file under folder `local` to folder `path` (a URI or a local path), file by file:
    the same result on every filesystem, whatever its rules for copying folders. Returns the
    relative names copied."""
    fs, root = _fs(path)
    root = root.rstrip("/")
    copied = []
    for dirpath, _, names in os.walk(local):
        for name in sorted(names):
            src = os.path.join(dirpath, name)
            rel = os.path.relpath(src, local).replace(os.sep, "/")
            dst = f"{root}/{rel}"
            fs.makedirs(posixpath.dirname(dst), exist_ok=True)
            fs.put_file(src, dst)
            copied.append(rel)
    return copied


@contextlib.contextmanager
def local_dir(path: str, push: bool = True) -> Iterator[str]:
    """A local folder to write `path`'s contents into: `path` itself when local; for a URI, a
    temporary folder copied to `path` when the block ends without an error (and `push`), then
    removed. A failed block copies nothing: the stage folder holds no half-written model."""
    if not is_uri(path):
        os.makedirs(path, exist_ok=True)
        yield path
        return
    tmp = tempfile.mkdtemp(prefix="hsdpo-out-")
    try:
        yield tmp
        if push:
            push_dir(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def remove(path: str) -> None:
    """Remove a file or folder, local or URI; nothing when it does not exist."""
    fs, p = _fs(path)
    if fs.exists(p):
        fs.rm(p, recursive=True)


def _move_folder(src: str, dst: str) -> None:
    """Move folder `src` to `dst` (which does not exist). Locally one rename. On an object store,
    where a folder cannot be renamed, each file is copied (server-side) with the manifest last, then
    the manifest is removed first: killed at any point, `src` or `dst` is whole with its manifest."""
    fs, s = _fs(src)
    _, d = _fs(dst)
    s, d = s.rstrip("/"), d.rstrip("/")
    if _is_local(fs):
        os.makedirs(os.path.dirname(d), exist_ok=True)
        os.rename(s, d)
        return
    names = sorted(posixpath.relpath(f, s) for f, info in fs.find(s, detail=True).items()
                   if info.get("type") != "directory")
    names.sort(key=lambda rel: rel == MANIFEST)  # the manifest last
    for rel in names:
        fs.makedirs(posixpath.dirname(f"{d}/{rel}"), exist_ok=True)
        fs.copy(f"{s}/{rel}", f"{d}/{rel}")
    if MANIFEST in names:
        fs.rm(f"{s}/{MANIFEST}")
    fs.rm(s, recursive=True)


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
    manifest: dict[str, Any] = field(default_factory=dict)  # more manifest fields (the fixed ones win)


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
    """What downstream stages record of an input; None when it is not a finished stage's. A stage
    that records the `content_hash` of what it wrote (pairs) is known by it alone: re-made with the
    same rows (after a verifier change that moves no pair), the stages after it stay current."""
    if manifest is None or manifest.get("status") != "complete":
        return None
    if isinstance(manifest.get("content_hash"), str):
        keep = {k: manifest.get(k) for k in ("stage", "output", "content_hash")}
        return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:16]
    keep = {k: manifest.get(k) for k in ("stage", "output", "config_hash", "inputs", "rows", "finished_at")}
    return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:16]


class RunDir:
    def __init__(self, root: str):
        self.root = local_path(root)

    def path(self, output: str, *parts: str) -> str:
        return join(self.root, output, *parts)

    def manifest(self, output: str) -> dict[str, Any] | None:
        """The stage's manifest; None when it has none. One that does not parse as a JSON object
        (a zero-length file after a machine was lost before the rename reached the disk, a hand
        edit) reads as `{"status": "unreadable", "error": ...}`: not complete, so the stage runs
        again and `hsdpo status` says why, instead of every command failing with a traceback."""
        try:
            m = read_json(self.path(output, MANIFEST))
        except ValueError as err:  # JSONDecodeError, UnicodeDecodeError
            return {"status": "unreadable", "error": f"{type(err).__name__}: {str(err)[:120]}"}
        if m is not None and not isinstance(m, dict):
            return {"status": "unreadable", "error": f"it holds a JSON {type(m).__name__}, not an object"}
        return m

    def input_hashes(self, inputs: list[str]) -> dict[str, str | None]:
        return {name: manifest_hash(self.manifest(name)) for name in inputs}

    def staleness(self, output: str, config_hash: str, inputs: list[str],
                  files: tuple[str, ...] = ()) -> tuple[str, str] | None:
        """None when `output` is complete and current; else why not: ("missing", ""),
        ("config", ""), ("input missing", name) or ("input re-made", name) -- the last also when
        the inputs recorded are not the inputs now -- or ("file changed", path) for one of `files`
        (read from outside the run dir) whose `fingerprint` is not the one recorded (a manifest
        that records none, written by an older hsdpo, is not compared)."""
        m = self.manifest(output)
        if not m or m.get("status") != "complete":
            return ("missing", "")
        if m.get("config_hash") != config_hash:
            return ("config", "")
        now = self.input_hashes(inputs)
        recorded = m.get("inputs") if isinstance(m.get("inputs"), dict) else {}
        for name, h in now.items():
            if h is None:
                return ("input missing", name)
            if recorded.get(name) != h:
                return ("input re-made", name)
        if set(recorded) != set(now):
            return ("input re-made", ", ".join(sorted(set(recorded) ^ set(now))))
        if isinstance(m.get("files"), dict):
            # a recorded path no longer among `files` with the config unchanged: a model folder gone
            for path in dict.fromkeys([*files, *m["files"]]):
                if m["files"].get(path) != (fingerprint(path) if path in files else None):
                    return ("file changed", path)
        return None

    def is_current(self, output: str, config_hash: str, inputs: list[str], files: tuple[str, ...] = ()) -> bool:
        return self.staleness(output, config_hash, inputs, files) is None

    def require(self, output: str) -> dict[str, Any]:
        m = self.manifest(output)
        if m and m.get("status") == "unreadable":
            raise FileNotFoundError(f"stage output {self.path(output)} has an unreadable {MANIFEST} ({m['error']});"
                                    " run its stage again")
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

    # ---- the previous output, kept while a stage runs again ------------------------------------
    # A stage that runs again sets its last complete output aside in `_previous/<output>` before it
    # empties its folder, and removes it once the new manifest is written. A body that fails (an
    # error found only halfway, Ctrl-C) puts it back; a killed run leaves it there, and the next run
    # of the stage puts it back before it decides whether to run (`recover`). Locally the set-aside
    # is one rename; on an object store files are copied (server-side) manifest last and removed
    # manifest first, so that at every moment one of the two folders is whole and marked complete.

    def previous(self, output: str) -> str:
        return self.path(PREVIOUS, output)

    def _complete(self, path: str) -> bool:
        try:
            m = read_json(join(path, MANIFEST))
        except ValueError:
            return False
        return isinstance(m, dict) and m.get("status") == "complete"

    def has_previous(self, output: str) -> bool:
        """A complete output set aside by a run of the stage that has not finished."""
        return self._complete(self.previous(output))

    def set_aside(self, output: str) -> bool:
        """Move `output`, when it is complete, to `_previous/<output>` (replacing what a killed run
        left there); True when it did. An incomplete folder is left for `reset` to remove."""
        src, dst = self.path(output), self.previous(output)
        if not self._complete(src):
            return False
        remove(dst)
        _move_folder(src, dst)
        return True

    def restore(self, output: str, keep_failed: bool = False) -> bool:
        """Put the output set aside back in place of what a run left in the folder; True when there
        was one. `keep_failed`: what the run left goes to `_failed/<output>` (its logs and metrics,
        to see why it failed; the one kept before it is replaced) instead of being removed."""
        src, dst = self.previous(output), self.path(output)
        if not self._complete(src):
            return False
        fs, p = _fs(dst)
        if keep_failed and fs.exists(p):
            remove(self.path(FAILED, output))
            _move_folder(dst, self.path(FAILED, output))
        remove(dst)
        _move_folder(src, dst)
        return True

    def recover(self, output: str) -> bool:
        """After a killed run: its partial folder replaced by the complete output it had set aside.
        A complete folder wins over anything set aside (a run killed after its manifest was
        written); what is set aside is then dropped. True when something was put back."""
        if self._complete(self.path(output)):
            self.drop_previous(output)
            return False
        return self.restore(output)

    def drop_previous(self, output: str) -> None:
        remove(self.previous(output))

    def record_failure(self, output: str, err: BaseException) -> None:
        """`<output>/_failure.json` in a failed run's folder (moved with it to `_failed/` when the
        previous output is put back): the error's type and first line, when, and the command."""
        from hsdpo.configbase import first_line

        write_json_atomic(self.path(output, FAILURE), {
            "error": first_line(err, 500),
            "failed_at": time.time(), "host": socket.gethostname(), "command": " ".join(sys.argv)[:300]})

    def last_failure(self, output: str) -> dict[str, Any] | None:
        """The failure record of the stage's last failed run that is newer than its output: in the
        folder itself (a failed run that had nothing to put back) or in `_failed/<output>` (one whose
        previous output was put back, and that has not been followed by a successful run)."""
        m = self.manifest(output) or {}
        done = m.get("finished_at") if m.get("status") == "complete" else None
        for path in (self.path(output, FAILURE), self.path(FAILED, output, FAILURE)):
            try:
                rec = read_json(path)
            except ValueError:
                continue
            if isinstance(rec, dict) and isinstance(rec.get("failed_at"), (int, float)) and \
                    (not isinstance(done, (int, float)) or rec["failed_at"] > done):
                return rec
        return None

    def finish(self, result: StageResult, config_hash: str, inputs: list[str], config: dict[str, Any],
               input_hashes: dict[str, str | None] | None = None, files: dict[str, str | None] | None = None) -> None:
        """Write the manifest. `input_hashes`: the inputs' hashes as the stage found them when it
        started (`run_stage` passes them); an input re-made while the stage ran then leaves it
        stale, where hashes taken now would record the new input as the one it was made from.
        `files`: the `fingerprint` of each file outside the run dir it read, taken likewise."""
        write_json_atomic(
            self.path(result.output, MANIFEST),
            {
                **result.manifest,
                "stage": result.stage,
                "output": result.output,
                "status": "complete",
                "config_hash": config_hash,
                "inputs": self.input_hashes(inputs) if input_hashes is None else input_hashes,
                "files": files or {},
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

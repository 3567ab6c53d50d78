"""Driver side of a training stage: one `TorchTrainer` run of `worker.ray_train_loop`.

Checkpoints live outside the stage folder (which `run_stage` clears at start), in
`<run_dir>/_checkpoints/<output>/<key>/`, where `key` hashes everything that changes the optimisation
(the stage section minus topology/logging fields, the precision it resolves to, the model section,
the seed and the input manifests). A stage re-run after a crash, with the same key, resumes from its latest checkpoint:
Ray Train restores the run of that name in that storage path, even with a different `num_workers`.
The folder is removed after a successful run (and before a forced one).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import posixpath
import tempfile
from typing import Any

from hsdpo.config import InputError, PipelineConfig
from hsdpo.rundir import RunDir, _fs, join, local_path, remove
from hsdpo.stage import log
from hsdpo.train.config import TrainConfig

# fields that do not change what is learned (world size and micro-batching are invariant by design);
# fused_clip stays in the key: DeepSpeed's checkpoint carries its clipping setting, and a load across
# the two settings fails (compute_grad_norm=false) or turns clipping off (its clip_grad is restored)
TOPOLOGY = {"num_workers", "cpus_per_worker", "micro_batch_size", "use_gpu", "compile", "compile_backend", "checkpoint_every", "keep_checkpoints", "max_failures",
            "fail_at_step", "log_every", "report_interval_s", "tensorboard", "wandb_project", "output", "logp_chunk", "logp_recompute",
            "coalesce_grad_reduction", "eval_every"}


def checkpoint_root(cfg: PipelineConfig, t: TrainConfig, inputs: list[str]) -> str:
    from hsdpo.train.strategy import use_bf16

    rd = RunDir(cfg.run_dir)
    blob = {
        "train": {k: v for k, v in t.model_dump(mode="json").items() if k not in TOPOLOGY},
        # use_gpu is topology, but with precision auto it picks bf16 or fp32, and DeepSpeed's states
        # of one do not load into an engine of the other
        "bf16": use_bf16(t),
        "model": cfg.model.model_dump(mode="json"),
        "seed": cfg.seed,
        "inputs": rd.input_hashes(inputs),
    }
    key = hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]
    return local_path(rd.path("_checkpoints", t.output, key))


def clear_checkpoints(root: str) -> None:
    remove(root)


def check_resume(kind: str, root: str) -> None:
    """The checkpoint a re-run would resume from, looked at on the driver before any worker starts:
    Ray Train's run snapshot (`run/checkpoint_manager_snapshot.json`) readable and every checkpoint
    it lists there, and in the latest one DeepSpeed's `latest` tag naming a step folder whose `.pt`
    states are whole zip archives (a copy that stopped, a full disk). Unchecked, each worker, and each
    of its restarts, fails loading it with a traceback. Reads only the files' ends."""
    import zipfile

    from hsdpo.configbase import first_line

    fs, base = _fs(join(root, "run"))
    snap = f"{base}/checkpoint_manager_snapshot.json"
    if not fs.exists(snap):
        return
    fix = f"; re-run with --force to train from the start (it removes {root})"
    try:
        state = json.loads(fs.cat_file(snap))
        names = [r["checkpoint_dir_name"] for r in state.get("checkpoint_results") or []]
        latest = (state.get("latest_checkpoint_result") or {}).get("checkpoint_dir_name")
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise InputError(f"{kind}: the run snapshot {snap} does not read ({first_line(err)}){fix}") from None
    for name in names + ([latest] if latest else []):
        if not fs.isdir(f"{base}/{name}"):
            raise InputError(f"{kind}: checkpoint {base}/{name}, which the run snapshot lists, is gone{fix}")
    if not latest:
        return
    ckpt = f"{base}/{latest}"
    bad = f"{kind}: the checkpoint to resume from, {ckpt},"
    if not fs.exists(f"{ckpt}/latest"):
        raise InputError(f"{bad} has no 'latest' file (the tag of DeepSpeed's states){fix}")
    tag = fs.cat_file(f"{ckpt}/latest").decode(errors="replace").strip()
    if not tag or not fs.isdir(f"{ckpt}/{tag}"):
        raise InputError(f"{bad} names {tag!r} in its 'latest' file and has no such folder{fix}")
    states = sorted(f for f in fs.ls(f"{ckpt}/{tag}", detail=False) if f.endswith(".pt"))
    if not states:
        raise InputError(f"{bad} holds no DeepSpeed states (.pt) in {tag}/{fix}")
    for f in states:
        with fs.open(f, "rb") as fh:
            whole = zipfile.is_zipfile(fh)
        if not whole:
            raise InputError(f"{bad} has {tag}/{posixpath.basename(f)} cut short ({fs.size(f)} bytes, not a whole"
                             f" torch archive){fix}")


def rejected_note(rejects: list[dict[str, Any]]) -> str:
    """' (5 rejected: empty_completion 1, ...)' for an error that no row is left; '' for none."""
    counts: dict[str, int] = {}
    for r in rejects:
        counts[r["reason"]] = counts.get(r["reason"], 0) + 1
    listed = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    return f" ({len(rejects)} rejected: {listed})" if rejects else ""


def split_heldout(kind: str, t: TrainConfig, rows: list[dict[str, Any]]) -> tuple[list[dict], list[dict]]:
    """(training rows, held-out rows): a problem is held out when a hash of its `problem_id` (a row
    without one: its `pair_id`) falls under `t.eval_fraction`, the same on every run and machine,
    so a problem's rows, and its other pairs, never sit on both sides."""
    if not t.eval_fraction:
        return rows, []
    keys = [str(r["problem_id"] if r.get("problem_id") is not None else r.get("pair_id")) for r in rows]
    held = {k for k in set(keys)
            if int.from_bytes(hashlib.sha256(k.encode()).digest()[:8], "big") / 2**64 < t.eval_fraction}
    train = [r for r, k in zip(rows, keys) if k not in held]
    heldout = [r for r, k in zip(rows, keys) if k in held]
    if not heldout or not train:
        side = "no" if not heldout else "every"
        raise InputError(f"{kind}.eval_fraction {t.eval_fraction:g} holds out {side} problem of {len(set(keys))};"
                         f" {'raise' if not heldout else 'lower'} it or set it to 0")
    return train, heldout


def worker_config(t: TrainConfig, run_seed: int) -> TrainConfig:
    """The config the workers run: its `seed` the stage's plus the run's, so a new run seed also
    redraws the data order (and LoRA's initial adapters), as it redraws problems and samples."""
    return t.model_copy(update={"seed": t.seed + run_seed})


def fit(kind: str, t: TrainConfig, rows: list[dict[str, Any]], *, model_path: str, tokenizer_path: str,
        out_dir: str, ckpt_root: str, heldout: list[dict[str, Any]] | None = None,
        run_seed: int = 0, trust_remote_code: bool = False) -> list[dict[str, Any]]:
    """Train on `rows` with `t.num_workers` Ray Train workers, scoring `heldout` rows (split_heldout)
    at evaluation steps; returns rank 0's metrics history. The workers' seed (data order, LoRA's
    initialisation) is the stage's `seed` plus the run's (`worker_config`)."""
    import ray
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from hsdpo.train.worker import ray_train_loop

    preflight(kind, t)
    os.environ.setdefault(POLL_ENV, str(POLL_S))  # Ray Train passes it on to its controller
    datasets = {"train": tokenized_dataset(kind, t, rows, tokenizer_path, trust_remote_code)}
    if heldout:
        datasets["eval"] = tokenized_dataset(kind, t, heldout, tokenizer_path, trust_remote_code)
    spec = {"kind": kind, "cfg": worker_config(t, run_seed).model_dump(mode="json"), "model_path": model_path,
            "tokenizer_path": tokenizer_path, "out_dir": local_path(out_dir),
            "marker": f"{ckpt_root}/_injected_failure", "eval": bool(heldout), "trust_remote_code": trust_remote_code}
    trainer = TorchTrainer(
        ray_train_loop,
        train_loop_config=spec,
        scaling_config=ScalingConfig(num_workers=t.num_workers, use_gpu=t.use_gpu,
                                     resources_per_worker={"CPU": t.cpus_per_worker}),
        run_config=RunConfig(
            name="run", storage_path=ckpt_root,
            failure_config=FailureConfig(max_failures=t.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=t.keep_checkpoints),
        ),
        datasets=datasets,
        dataset_config=DataConfig(datasets_to_split=[]),  # every worker sees the whole table (see worker.py)
    )
    held = f" ({len(heldout)} held out)" if heldout else ""
    log(f"{kind}: {len(rows)} rows{held}, {t.total_steps(len(rows))} steps, {t.num_workers} workers,"
        f" checkpoints in {ckpt_root}")
    trainer.fit()
    return read_history(out_dir)


# Ray Train's controller polls its workers every 2 s by default: a finished run waited for the next
# poll, and its shutdown for more, before `fit` returned (4.8 s from the export to the stage's end on
# the build machine; 1.2 s at 0.5 s), and a worker's report blocks until a poll takes it. A value
# the user sets wins.
POLL_ENV, POLL_S = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", 0.5


def tokenized_dataset(kind: str, t: TrainConfig, rows: list[dict[str, Any]], tokenizer_path: str,
                      trust_remote_code: bool = False):
    """The training table tokenised once, by Ray Data tasks on the cluster's CPUs (up to one a 50k
    rows at a time), and held in the object store (materialised before any worker starts, so no task
    competes with the worker group for CPUs): every worker, and a worker restarted after a failure,
    reads token arrays instead of tokenising every row itself. Only the columns the loss reads travel."""
    import ray

    from hsdpo.train.tokenize import INPUT_COLUMNS

    items = [{"_idx": i, **{k: r.get(k) for k in INPUT_COLUMNS[kind]}} for i, r in enumerate(rows)]
    ds = ray.data.from_items(items)
    # each worker reads the whole table once, up front: a progress bar left open there would be
    # re-drawn with every log line of the run (the worker executes with the dataset's context)
    ds.context.enable_progress_bars = False
    tasks = ray.data.TaskPoolStrategy(size=-(-len(rows) // TOKENIZE_TASK_ROWS))
    ds = ds.map_batches(tokenize_block, fn_kwargs={"kind": kind, "tokenizer_path": tokenizer_path,
                                                   "max_length": t.max_length, "trust_remote_code": trust_remote_code},
                        batch_format="pyarrow", batch_size=TOKENIZE_BATCH, compute=tasks)
    return ds.materialize()


TOKENIZE_BATCH = 2048  # rows a tokenising task takes at a time
# tasks at once: one a 50k rows (~15 s of work), so a small table does not start a worker process
# (and import transformers) on every CPU: 20k demo rows took 8.4 s over 4 fresh workers, 5.3 s on one
TOKENIZE_TASK_ROWS = 50_000


def tokenize_block(batch, kind: str, tokenizer_path: str, max_length: int, trust_remote_code: bool = False):
    """A Ray Data batch (pyarrow) of training rows -> its tokenised table (tokenize.tokenize_rows)."""
    from hsdpo.train.tokenize import tokenize_rows

    return tokenize_rows(kind, _tokenizer(tokenizer_path, trust_remote_code), batch.to_pylist(), max_length)


def _tokenizer(path: str, trust_remote_code: bool = False):
    """Loaded once per Ray worker process (which runs many tasks) and folder version: a folder
    rewritten in place, as a forced re-run of sft rewrites `_init/`, is loaded anew."""
    from hsdpo.rundir import fetch_dir

    local = fetch_dir(path)  # a URI: a local copy keyed by the folder's contents
    files = sorted((e.name, e.stat().st_size, e.stat().st_mtime_ns) for e in os.scandir(local) if e.is_file()) \
        if os.path.isdir(local) else []
    return _load_tokenizer(local, tuple(files), trust_remote_code)


@functools.lru_cache(maxsize=2)
def _load_tokenizer(path: str, version: tuple, trust_remote_code: bool):
    from hsdpo.model import load_tokenizer

    return load_tokenizer(path, trust_remote_code)


def check_tokenizer(kind: str, tokenizer_path: str, model_path: str, trust_remote_code: bool = False) -> None:
    """What would fail every batch, refused on one line before any task starts: a config.json or a
    tokenizer that does not load, a tokenizer that turns text into no tokens (log-probs of 0.0 over
    nothing), one without an eos token (it ends every completion; `load_tokenizer` pads with it too),
    or one with token ids the model has no embedding for (its vocabulary larger than `vocab_size`)."""
    from transformers import AutoConfig

    from hsdpo.configbase import first_line
    from hsdpo.model import load_tokenizer

    with contextlib.ExitStack() as stack:
        model_dir = stack.enter_context(_light_copy(model_path))
        tok_dir = model_dir if tokenizer_path == model_path else stack.enter_context(_light_copy(tokenizer_path))
        try:
            config = AutoConfig.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
        except (OSError, ValueError, TypeError, KeyError) as err:  # a JSONDecodeError is a ValueError
            raise InputError(f"{kind}: the config.json of {model_path} does not load ({first_line(err)})") from None
        try:
            tok = load_tokenizer(tok_dir, trust_remote_code)
        except (OSError, ValueError, TypeError, KeyError) as err:
            raise InputError(f"{kind}: the tokenizer of {tokenizer_path} does not load ({first_line(err)})") from None
    if not tok(SAMPLE_TEXT, add_special_tokens=False)["input_ids"]:
        # what transformers builds from a folder without tokenizer.json: every text is no tokens, and
        # every log-prob a sum over nothing (0.0)
        raise InputError(f"{kind}: the tokenizer of {tokenizer_path} turns text into no tokens (is its"
                         " tokenizer.json missing?); give the model's own tokenizer")
    if tok.eos_token_id is None or tok.pad_token_id is None:
        raise InputError(f"{kind}: the tokenizer of {tokenizer_path} has no eos token (it ends every completion and"
                         " pads the batches); give it one (eos_token in its tokenizer_config.json)")
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    vocab = getattr(config, "vocab_size", None)
    try:
        top = max(tok.get_vocab().values(), default=-1)
    except (AttributeError, NotImplementedError):  # a tokenizer of its own code may not list its vocabulary
        top = len(tok) - 1
    if vocab is not None and top >= vocab:
        raise InputError(f"{kind}: the tokenizer of {tokenizer_path} has token ids up to {top} and the model"
                         f" {model_path} embeds {vocab} (vocab_size): they are not one model's; give the"
                         " model's own tokenizer")


SAMPLE_TEXT = "Question: What is 12 + 7?\nAnswer: 12 + 7 = 19 #### 19"


WEIGHT_FILES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".msgpack", ".h5", ".ckpt")


@contextlib.contextmanager
def _light_copy(path: str):
    """A local folder with `path`'s config, tokenizer and code files but not its weights: `path`
    itself when local (or a hub id); for a URI, those files copied to a temporary folder, so that the
    driver's checks do not download a whole model (the workers fetch it, once a node)."""
    from hsdpo.rundir import is_uri

    if not is_uri(path):
        yield path
        return
    fs, root = _fs(path)
    root = root.rstrip("/")
    with tempfile.TemporaryDirectory(prefix="hsdpo-check-") as tmp:
        for name, info in fs.find(root, detail=True).items():
            rel = posixpath.relpath(name, root)
            if info.get("type") == "directory" or "/" in rel or rel.endswith(WEIGHT_FILES):
                continue
            fs.get_file(name, os.path.join(tmp, rel))
        yield tmp


def preflight(kind: str, t: TrainConfig) -> None:
    """What fails a training run before any worker starts: a missing logger package, a batch that does
    not split over the workers, extra DeepSpeed settings DeepSpeed refuses or does not know, a worker
    group larger than a local Ray."""
    from hsdpo.train.strategy import check_ds_config
    from hsdpo.train.worker import check_batching

    check_loggers(kind, t)
    check_ds_config(kind, t, check_batching(kind, t, t.num_workers))
    check_resources(kind, t)


def check_resources(kind: str, t: TrainConfig) -> None:
    """On a local Ray this process started, a worker group larger than the machine is an error now:
    Ray Train would wait for an autoscaler that is not there, time out, and try again."""
    from hsdpo.rayutil import local_shortfall

    n = t.num_workers
    workers = f"{n} worker{'s' if n != 1 else ''}"
    short = local_shortfall({"CPU": n * t.cpus_per_worker, "GPU": n if t.use_gpu else 0})
    if short and short[0] == "CPU":
        raise InputError(f"{kind}: {workers} x {t.cpus_per_worker:g} CPU ({kind}.cpus_per_worker) need {short[1]:g} CPUs and this"
                         f" local Ray has {short[2]:g} (ray.num_cpus); lower {kind}.num_workers or"
                         f" {kind}.cpus_per_worker, or join a cluster (ray.address)")
    if short:
        raise InputError(f"{kind}.use_gpu: {workers} {'need' if n != 1 else 'needs'} {short[1]:g} GPU{'s' if n != 1 else ''} and"
                         f" this local Ray has {short[2]:g}; lower {kind}.num_workers, set {kind}.use_gpu=false, or join a"
                         " cluster (ray.address)")


def check_loggers(kind: str, t: TrainConfig) -> None:
    """Fail before any worker starts when a requested logger's package is missing."""
    import importlib.util

    for wanted, module, key in ((t.tensorboard, "tensorboard", "tensorboard=true"),
                                (t.wandb_project, "wandb", "wandb_project")):
        if wanted and importlib.util.find_spec(module) is None:
            raise InputError(f"{kind}.{key} needs the {module} package: pip install 'hsdpo[{module}]'")


def read_history(out_dir: str) -> list[dict[str, Any]]:
    fs, p = _fs(join(local_path(out_dir), "metrics.jsonl"))
    with fs.open(p, "r") as f:
        return [json.loads(line) for line in f if line.strip()]


def summary(history: list[dict[str, Any]], keys: tuple[str, ...]) -> dict[str, Any]:
    """End-of-stage figures for the manifest: the last row's `keys`, first loss, mean throughput."""
    if not history:
        return {}
    last = history[-1]
    out: dict[str, Any] = {k: last[k] for k in keys if last.get(k) is not None}
    out["first_loss"] = history[0]["loss"]
    out["steps"] = last["step"]
    out["tokens_per_s"] = sum(h["tokens_per_s"] for h in history) / len(history)
    out["resumes"] = sum("resumed_at" in h for h in history)  # after a worker failure or a restart
    mfu = [h["mfu"] for h in history if h.get("mfu") is not None]
    if mfu:
        out["mfu"] = sum(mfu) / len(mfu)
    evals = [h for h in history if any(k.startswith("eval_") for k in h)]
    if evals:  # the last held-out evaluation
        out.update({k: v for k, v in evals[-1].items() if k.startswith("eval_")})
    return out

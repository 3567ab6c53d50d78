"""The training loop shared by SFT and DPO: one function, run by every Ray Train worker or as a plain
process (world size 1, no Ray: `benchmarks/gpu_train.py`).

Data order (deterministic, so 1 worker and 2 workers see the same global batches): every worker
receives the *whole* table, already tokenised (a materialised Ray Data dataset, not split, rows
sorted by their `_idx` column; launch.tokenized_dataset), and
global batch s is rows `perm_e[i mod N]` for stream positions i = s*B .. s*B+B-1, where `perm_e`
is a seeded permutation per epoch e = i // N. Rank r takes the r-th contiguous slice of the global
batch and runs it in micro-batches; when there are several, it first orders the slice by length
(stable), so a micro-batch pads to lengths close to its own. Losses are normalised by the *global* denominator (the batch's
weight sum for DPO, its completion-token count for SFT), and the backward loss is multiplied by
`accum * world` to undo DeepSpeed's averaging, so the gradient equals the full-batch gradient for
any worker count and micro-batch size. Resume needs only the step number: each step reseeds torch
from (seed, step, rank) (`step_seed`), so a resumed run draws the dropout masks the uninterrupted
run drew.

Metrics are detached tensors summed over micro-batches and reduced once per logged step; the
step itself has no host sync.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import sys
import tempfile
import time
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from hsdpo.config import ConfigError
from hsdpo.rundir import _fs, local_dir, push_dir
from hsdpo.train import strategy
from hsdpo.train.config import DPOConfig, SFTConfig, TrainConfig
from hsdpo.train.losses import sft_loss, weighted_dpo_loss
from hsdpo.train.mfu import flops_per_token, head_flops_per_token, peak_flops, step_flops
from hsdpo.train.tokenize import Batch, LogpModel, Sequences, collate_rows, split_model, to_device, tokenize_rows


# ---- reporting: Ray Train when under it, else files only -----------------------------------------

def say(message: str) -> None:
    """One progress line on stdout. Not `print`: Ray Train patches it in workers to log *and* echo,
    so every line reached the driver twice."""
    sys.stdout.write(f"[hsdpo train] {message}\n")
    sys.stdout.flush()


class Reporter:
    def __init__(self, use_ray: bool, ckpt_dir: str | None):
        self.use_ray = use_ray
        self.ckpt_dir = ckpt_dir  # plain mode: where checkpoints live

    def latest_checkpoint(self):
        """A context manager yielding a local checkpoint directory, or None."""
        if self.use_ray:
            import ray.train

            ckpt = ray.train.get_checkpoint()
            return ckpt.as_directory() if ckpt else None
        if self.ckpt_dir and os.path.exists(os.path.join(self.ckpt_dir, "latest")):
            return contextlib.nullcontext(self.ckpt_dir)
        return None

    def report(self, metrics: dict[str, Any], engine=None, step: int = 0, state: dict | None = None) -> None:
        """Metrics (and a checkpoint when `engine` is given). Every rank must call it alike."""
        if not self.use_ray:
            if engine is not None and self.ckpt_dir:
                strategy.save_checkpoint(engine, self.ckpt_dir, step, state or {})
            return
        import ray.train

        if engine is None:
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory() as d:
            strategy.save_checkpoint(engine, d, step, state or {})
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))


class MetricsLog:
    """metrics.jsonl (+ TensorBoard / W&B) on rank 0; the history travels in checkpoints."""

    def __init__(self, path: str | None, t: TrainConfig, out_dir: str | None, history: list[dict]):
        self.path, self.history = path, list(history)
        self.tb = self.wandb = None
        if path is None:
            return
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.writelines(json.dumps(h) + "\n" for h in self.history)
        if t.tensorboard and out_dir:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(os.path.join(out_dir, "tb"))
        if t.wandb_project:
            import wandb

            self.wandb = wandb.init(project=t.wandb_project, config=t.model_dump(mode="json"))

    def add(self, row: dict[str, Any]) -> None:
        self.history.append(row)
        if self.path is None:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        values = {k: v for k, v in row.items() if k not in ("step", "time")}  # both loggers keep their own clock
        if self.tb:
            for k, v in values.items():
                if isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, row["step"])
        if self.wandb:
            self.wandb.log(values, step=row["step"])
        say(f"step={row['step']} " + " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                              for k, v in values.items()))

    def flush(self) -> None:
        if self.tb:
            self.tb.flush()

    def close(self) -> None:
        """Flush the event files (TensorBoard) and end the W&B run."""
        if self.tb:
            self.tb.close()
        if self.wandb:
            self.wandb.finish()


# ---- data ----------------------------------------------------------------------------------------

def global_batch_indices(step: int, batch: int, n: int, seed: int) -> list[int]:
    return [int(epoch_order(n, seed, i // n)[i % n]) for i in range(step * batch, (step + 1) * batch)]


@functools.lru_cache(maxsize=2)
def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The seeded permutation of epoch `epoch`, drawn once: drawn at every step, it cost 11.6 ms of host
    time a step at 395k rows (MetaMathQA) on the 2-core build machine, before the step's first kernel
    (with a metrics line every step, the device waits for it); now 0.2 ms."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).numpy()


def load_task(kind: str, t: TrainConfig, pad_id: int, shard=None, name: str = "train") -> "Task":
    """This worker's copy of the whole tokenised table (launch.tokenized_dataset), in `_idx` order.
    `shard`: anything with Ray Data's `iter_batches`; default this worker's Ray Train shard `name`."""
    if shard is None:
        import ray.train

        shard = ray.train.get_dataset_shard(name)
    table = pa.concat_tables(list(shard.iter_batches(batch_size=None, batch_format="pyarrow"))).sort_by("_idx")
    task = Task(kind, t, table, pad_id)
    del table
    pa.default_memory_pool().release_unused()  # the sort's scratch; mimalloc keeps freed pages resident
    return task


# ---- model ---------------------------------------------------------------------------------------

def build_policy(spec: dict[str, Any], t: TrainConfig, model=None) -> torch.nn.Module:
    if model is None:
        from hsdpo.model import load_model

        model = load_model(spec["model_path"], spec.get("trust_remote_code", False), dtype=torch.float32,
                           attn_implementation=t.attn_implementation)
    model.config.use_cache = False
    if t.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if t.lora.enabled:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=t.lora.r, lora_alpha=t.lora.alpha, lora_dropout=t.lora.dropout,
                                                 target_modules=t.lora.target_modules, task_type="CAUSAL_LM"))
    if t.compile:
        # each layer, and (LogpModel) the LM head + log-softmax chunk; sequence lengths vary, so shapes go dynamic
        for layer in split_model(model)[0].layers:
            layer.compile(backend=t.compile_backend)
    model.train()
    return LogpModel(model, t.logp_chunk, compile_backend=t.compile_backend if t.compile else None,
                     recompute=t.logp_recompute)


# ---- steps ---------------------------------------------------------------------------------------

class Task:
    """The tokenised training table (`tokenize_rows`) plus the micro-step of one method. An example
    has one side (SFT) or two (DPO: chosen, rejected), run in one batch."""

    def __init__(self, kind: str, cfg: TrainConfig, table: pa.Table, pad_id: int):
        self.kind, self.cfg, self.pad = kind, cfg, pad_id
        if kind == "dpo":
            self.sides = [Sequences.from_columns(table, "chosen_"), Sequences.from_columns(table, "rejected_")]
            uniform = cfg.weighting == "uniform"
            self.weights = [1.0] * table.num_rows if uniform else table["weight"].to_pylist()
            self.ref = np.stack([table["ref_chosen_logp"].to_numpy(), table["ref_rejected_logp"].to_numpy()], 1)
        else:
            self.sides = [Sequences.from_columns(table, "")]
        lengths = [s.lengths for s in self.sides]
        self.width = np.maximum.reduce(lengths)  # padded width an example needs (its sides share a batch)
        self.ntokens = sum(lengths)
        # scored tokens (eos included): all but the prompt's, and never a row's first token (no position
        # predicts it: an empty prompt's first completion token), as `collate_rows` scores them
        self.completion = [np.maximum(n - np.maximum(s.prompt_len, 1), 0) for n, s in zip(lengths, self.sides)]
        self.truncated = int(np.logical_or.reduce([s.truncated for s in self.sides]).sum())

    @classmethod
    def from_rows(cls, kind: str, cfg: TrainConfig, rows: list[dict[str, Any]], tokenizer: Any) -> "Task":
        return cls(kind, cfg, tokenize_rows(kind, tokenizer, rows, cfg.max_length), tokenizer.pad_token_id)

    def __len__(self) -> int:
        return len(self.sides[0])

    def denominators(self, idx: list[int]) -> dict[str, float]:
        if self.kind == "dpo":
            # a batch of zero-weight pairs has weight 0; the loss then divides by 1 (a zero step)
            return {"weight": sum(self.weights[i] for i in idx), "chosen_tokens": int(self.completion[0][idx].sum())}
        return {"tokens": int(self.completion[0][idx].sum())}

    def length(self, i: int) -> int:
        return int(self.width[i])

    def scored(self, idx: list[int]) -> int:
        """Positions whose next token is scored (where the LM head runs): the completion tokens."""
        return int(sum(c[idx].sum() for c in self.completion))

    def tokens(self, idx: list[int]) -> int:
        return int(self.ntokens[idx].sum())

    def batch(self, idx: list[int]) -> Batch:
        """Examples `idx`, every side in one right-padded batch (DPO: `[2n, T]`, chosen then rejected)."""
        return collate_rows([(side, idx) for side in self.sides], self.pad,
                            pack=self.cfg.max_length if self.cfg.packing else None)

    def micro_step(self, engine, idx: list[int], den: dict[str, float], batch_frac: float, device):
        """(loss for backward, metric sums) for one micro-batch; metrics already global-normalised."""
        b = self.batch(idx).to(device)
        if self.kind == "sft":
            logps, ntok = engine(*b.logp_args())
            loss = sft_loss(logps, ntok, denominator=den["tokens"])
            return loss, {"loss": loss.detach()}
        ref = to_device(torch.tensor(self.ref[idx], dtype=torch.float32), device)  # [n, 2]
        w = to_device(torch.tensor([self.weights[i] for i in idx], dtype=torch.float32), device)
        logps, ntok = engine(*b.logp_args())  # [2n]
        n = len(idx)
        nll = -logps[:n].sum() / max(den["chosen_tokens"], 1)  # no scored token: 0, not 0/0
        loss, m = weighted_dpo_loss(logps[:n], logps[n:], ref[:, 0], ref[:, 1], w, beta=self.cfg.beta,
                                    nll_coef=self.cfg.nll_coef, chosen_nll=nll, denominator=den["weight"],
                                    loss_type=self.cfg.loss_type, label_smoothing=self.cfg.label_smoothing,
                                    chosen_tokens=ntok[:n], rejected_tokens=ntok[n:])
        sums = {k: (v if k == "dpo_loss" else v * (n * batch_frac)) for k, v in m.items()}
        return loss, {"loss": loss.detach(), "chosen_nll": nll.detach(), **sums}


def run_step(task: Task, engine, step: int, n: int, world: int, rank: int, device) -> tuple[dict, int, int]:
    t = task.cfg
    idx = global_batch_indices(step, t.batch_size, n, t.seed)
    den = task.denominators(idx)
    per_rank = t.batch_size // world
    mine = idx[rank * per_rank:(rank + 1) * per_rank]
    accum = per_rank // t.micro_batch_size
    if accum > 1:  # micro-batches of similar lengths pad less; the slice's gradient is a sum either way
        mine = sorted(mine, key=task.length)
    sums: dict[str, torch.Tensor] = {}
    for a in range(accum):
        micro = mine[a * t.micro_batch_size:(a + 1) * t.micro_batch_size]
        loss, m = task.micro_step(engine, micro, den, 1.0 / t.batch_size, device)
        with strategy.grad_reduction(engine, t, accum):
            engine.backward(loss * (accum * world))
        engine.step()
        for k, v in m.items():
            sums[k] = sums.get(k, 0) + v
    return sums, task.tokens(idx), task.scored(idx)


def evaluate(task: Task, engine, world: int, rank: int, device) -> dict[str, float]:
    """The held-out rows' metrics (`eval_` + the training metric names: loss, and for DPO the weighted
    and unweighted DPO loss, rewards, margins, accuracy), without gradients, in eval mode (LoRA
    dropout off). Every row is scored once: rank r takes the r-th contiguous slice, ordered by length,
    in micro-batches. Every rank runs the same number of forwards (ZeRO-3 gathers parameters in each
    one, collectively); a rank short of rows repeats a row of its own, or row 0, and counts it zero."""
    t, n = task.cfg, len(task)
    idx = list(range(n))
    den = task.denominators(idx)
    per_rank, micro = -(-n // world), t.micro_batch_size
    mine = sorted(idx[rank * per_rank:(rank + 1) * per_rank], key=task.length)
    sums: dict[str, torch.Tensor] = {}
    engine.eval()
    try:
        with torch.no_grad():
            for a in range(-(-per_rank // micro)):
                part = mine[a * micro:(a + 1) * micro]
                _, m = task.micro_step(engine, part or mine[:1] or [0], den, 1.0 / n, device)
                for k, v in m.items():
                    sums[k] = sums.get(k, 0) + (v if part else v * 0)
    finally:
        engine.train()
    out = {f"eval_{k}": v for k, v in reduce_metrics(sums).items()}
    if task.kind == "dpo" and not den["weight"]:  # held-out pairs all weigh 0: no weighted loss to report
        out.pop("eval_dpo_loss", None)  # (the loss divides by 1 there and reads 0, as if perfect)
    return out


def reduce_metrics(sums: dict[str, torch.Tensor]) -> dict[str, float]:
    keys = sorted(sums)
    flat = strategy.all_reduce_sum(torch.stack([sums[k].float() for k in keys]))
    return dict(zip(keys, flat.cpu().tolist()))


def check_batching(kind: str, t: TrainConfig, world: int) -> int:
    """Gradient accumulation steps; the driver calls it too, so a mismatch fails before workers start."""
    if t.batch_size % (t.micro_batch_size * world):
        raise ConfigError(f"{kind}.batch_size {t.batch_size} is not a multiple of {kind}.micro_batch_size"
                          f" {t.micro_batch_size} x {kind}.num_workers {world}")
    return t.batch_size // (t.micro_batch_size * world)


# ---- the loop ------------------------------------------------------------------------------------

def step_seed(seed: int, step: int, rank: int) -> int:
    """The torch seed of one rank's optimizer step (its dropout masks), from the run's seed."""
    return (seed * 1_000_003 + step * 7_919 + rank * 104_729 + 1) % 2**63


def train_worker(spec: dict[str, Any], rows: list[dict[str, Any]] | None = None, model=None,
                 tokenizer=None) -> list[dict[str, Any]]:
    """Train per `spec` (kind, cfg, model_path, tokenizer_path, out_dir, ckpt_dir, marker, use_ray,
    export); returns the metrics history (rank 0). `rows`/`model`/`tokenizer` bypass Ray Data and
    loading (plain-process benchmark)."""
    kind = spec["kind"]
    t: TrainConfig = (DPOConfig if kind == "dpo" else SFTConfig).model_validate(spec["cfg"])
    if not t.use_gpu and spec.get("use_ray"):
        torch.set_num_threads(max(1, int(t.cpus_per_worker)))  # Ray pins OMP threads to 1 by default
    strategy.init_distributed(t.use_gpu)
    world, rank = strategy.world_size(), strategy.rank()
    device = torch.device(f"cuda:{torch.cuda.current_device()}") if t.use_gpu else torch.device("cpu")
    accum = check_batching(kind, t, world)
    if tokenizer is None:
        from hsdpo.model import load_tokenizer

        tokenizer = load_tokenizer(spec["tokenizer_path"], spec.get("trust_remote_code", False))
    task = Task.from_rows(kind, t, rows, tokenizer) if rows is not None else load_task(kind, t, tokenizer.pad_token_id)
    heldout = load_task(kind, t, tokenizer.pad_token_id, name="eval") if spec.get("eval") else None
    # `epochs` and `warmup_ratio` become step counts once the table's size is known (the same on every
    # rank and resume)
    t = t.for_rows(len(task))
    for table in (task, heldout):
        if table is not None:
            table.cfg = t
    rows_per_forward = t.micro_batch_size * (2 if kind == "dpo" else 1)
    reporter = Reporter(spec.get("use_ray", False), spec.get("ckpt_dir"))
    torch.manual_seed(t.seed)  # what the policy draws at build (LoRA's A): the same on every rank and run
    engine, start, history = build_and_resume(spec, t, model, rows_per_forward, accum, reporter)
    # a URI stage folder is written in a local one on rank 0 and copied there once the run is
    # complete; metrics.jsonl and TensorBoard events also at every checkpoint
    out_uri = spec.get("out_dir")
    with local_dir(out_uri, push=rank == 0) if out_uri else contextlib.nullcontext() as out_dir:
        log = MetricsLog(os.path.join(out_dir, "metrics.jsonl") if out_dir and rank == 0 else None, t, out_dir,
                         history)
        n_flop, head_flop = flops_per_token(engine.module.model), head_flops_per_token(engine.module.model)
        peak = peak_flops(device) if t.use_gpu else None
        if rank == 0:
            held = f" ({len(heldout)} held out, {heldout.truncated} truncated)" if heldout is not None else ""
            epochs = f" ({spec['cfg']['epochs']:g} epochs)" if spec["cfg"].get("epochs") is not None else ""
            say(f"{kind}: {len(task)} rows, {task.truncated} truncated{held}, world {world}, accum {accum},"
                f" steps {t.steps}{epochs} (warmup {t.warmup_steps}), start step {start}")
        last_report = -math.inf
        resumed_at = start or None  # tagged on the first line logged after a resume
        for step in range(start, t.steps):
            inject_failure(t, spec, step, rank)
            # the step's random draws (dropout) are a function of (seed, step, rank) alone: a run
            # resumed at this step draws what the uninterrupted run drew
            torch.manual_seed(step_seed(t.seed, step, rank))
            t0 = time.perf_counter()
            lr = engine.optimizer.param_groups[0]["lr"]
            sums, tokens, scored = run_step(task, engine, step, len(task), world, rank, device)
            done = step + 1
            ckpt = bool(t.checkpoint_every) and done % t.checkpoint_every == 0 and done < t.steps
            scoring = heldout is not None and (done == t.steps or (t.eval_every and done % t.eval_every == 0))
            if done % t.log_every == 0 or done == t.steps or ckpt or scoring:
                # rank 0's clock decides whether Ray Train gets this line too; the flag travels in the
                # metrics' all-reduce, so every rank reports alike
                due = rank == 0 and time.monotonic() - last_report >= t.report_interval_s
                sums["_report"] = torch.full((), float(due), device=device)  # a fill kernel: no host copy
                row = reduce_metrics(sums)  # syncs the device once
                report = row.pop("_report") > 0 or ckpt or done == t.steps
                dt = time.perf_counter() - t0
                row.update(step=done, lr=lr, grad_norm=strategy.grad_norm(engine),
                           skipped_steps=strategy.take_skipped_steps(engine),
                           tokens_per_s=tokens / dt, step_s=dt, truncated=task.truncated, workers=world)
                row["mfu"] = (step_flops(n_flop, head_flop, tokens, scored) / dt / (peak * world)) if peak else None
                if scoring:  # after the step's clock: throughput is the training step's
                    row.update(evaluate(heldout, engine, world, rank, device), eval_truncated=heldout.truncated)
                row["time"] = time.time()
                if resumed_at is not None:
                    row["resumed_at"], resumed_at = resumed_at, None
                log.add(row)
                if report:
                    state = {"step": done, "world": world, "history": log.history}
                    reporter.report(row, engine if ckpt else None, done, state)
                    last_report = time.monotonic()
                if ckpt and rank == 0 and out_dir != out_uri:  # the logs so far reach a URI stage folder too
                    log.flush()
                    push_dir(out_dir, out_uri)
        log.close()
        if rank == 0 and out_dir:
            write_engine_info(os.path.join(out_dir, "engine.json"), engine, world, accum)
        if spec.get("export", True):
            strategy.export_hf(engine, os.path.join(out_dir, "model"), spec.get("model_path"), tokenizer,
                               t.lora.enabled)
        return log.history


def write_engine_info(path: str, engine, world: int, accum: int) -> None:
    """What the run actually ran with: the DeepSpeed config handed to the engine (ours merged with
    `deepspeed` extras), world size, accumulation, and graphs torch.compile built (`compile`)."""
    from torch._dynamo.utils import counters

    info = {"deepspeed": engine.config, "world": world, "accum": accum,
            "compiled_graphs": int(counters["stats"].get("unique_graphs", 0))}
    with open(path, "w") as f:
        json.dump(info, f, indent=2, default=str)


def build_and_resume(spec: dict[str, Any], t: TrainConfig, model, rows_per_forward: int, accum: int,
                     reporter: Reporter):
    """(engine, start step, metrics history); a checkpoint from another world size goes universal."""
    policy = build_policy(spec, t, model)
    ctx = reporter.latest_checkpoint()
    if ctx is None:
        return strategy.initialize(policy, t, rows_per_forward, accum), 0, []
    with contextlib.ExitStack() as stack:
        d = stack.enter_context(ctx)
        universal = strategy.checkpoint_world(d) != strategy.world_size()
        if universal:
            d = stack.enter_context(strategy.universal_copy(d))
        engine = strategy.initialize(policy, t, rows_per_forward, accum, universal=universal)
        state = strategy.load_checkpoint(engine, d)
    strategy.take_skipped_steps(engine)  # the restored count was logged before the checkpoint
    if strategy.rank() == 0:
        say(f"resumed at step {state['step']} (checkpoint from {state['world']} workers)")
    return engine, int(state["step"]), list(state.get("history", []))


def inject_failure(t: TrainConfig, spec: dict[str, Any], step: int, rank: int) -> None:
    """Testing aid: rank 0 raises once when step `fail_at_step` begins (marker file = already failed)."""
    marker = spec.get("marker")
    if t.fail_at_step is None or step + 1 != t.fail_at_step or rank != 0 or not marker:
        return
    fs, path = _fs(marker)  # beside the checkpoints: local or a URI
    if fs.exists(path):
        return
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    fs.touch(path)
    raise RuntimeError(f"injected failure at step {t.fail_at_step} (fail_at_step, a testing aid)")


def ray_train_loop(spec: dict[str, Any]) -> None:
    """The Ray Train entry point (train_loop_per_worker)."""
    quiet_report_log()
    train_worker({**spec, "use_ray": True})


def quiet_report_log() -> None:
    """Ray Train 2.60 logs every `ray.train.report` of a worker at INFO, its whole metrics dict on
    one line, through a logger named by its module's file path: outside `ray.train`, so
    `LoggingConfig(log_level)` does not reach it, and the root logger Ray Train sets up in the worker
    sends it to the driver (19 such lines in the demo, beside hsdpo's own progress lines, which say
    the same on rank 0). That logger keeps its warnings; nothing changes where Ray Train has none."""
    try:
        from ray.train.v2._internal.execution import context
    except ImportError:
        return
    logger = getattr(context, "logger", None)
    if isinstance(logger, logging.Logger):
        logger.setLevel(logging.WARNING)

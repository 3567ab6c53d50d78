"""Connect to Ray: the configured address, else $RAY_ADDRESS (set inside `ray job submit`), else
a new local Ray. The only place that calls `ray.init`."""

from __future__ import annotations

import logging
import os
import re
import socket

import ray

from hsdpo.config import RayConfig

# Ray Train's placement-group cleaner asks the State API (served by the dashboard) whether the
# controller is alive, and warns every few seconds when it cannot
PG_CLEANER_LOGGER = "ray.train.v2._internal.execution.controller.placement_group_cleaner"


def quiet_worker() -> None:
    """Worker setup hook of a local Ray started without a dashboard: the cleaner's State API warning
    would flood the driver's log for the length of every training run, and says nothing there. The
    worker's own cluster becomes `RAY_ADDRESS`: with another Ray running on the machine, the State API
    client could not tell which to ask, and the cleaner's thread died on that with a traceback."""
    logging.getLogger(PG_CLEANER_LOGGER).setLevel(logging.ERROR)
    if ray.is_initialized():
        os.environ.setdefault("RAY_ADDRESS", ray.get_runtime_context().gcs_address)


def init_ray(cfg: RayConfig) -> None:
    if ray.is_initialized():
        return
    kwargs = init_kwargs(cfg)
    if kwargs["address"] != "local":
        check_address(kwargs["address"])
    ray.init(**kwargs)
    # progress bars on both paths (local and cluster); HSDPO_PROGRESS=0 turns them off
    ray.data.DataContext.get_current().enable_progress_bars = os.environ.get("HSDPO_PROGRESS", "1") != "0"


def init_kwargs(cfg: RayConfig) -> dict:
    """`ray.init` arguments: join a cluster, or start a local Ray (no dashboard, quiet workers)."""
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    kwargs: dict = {"log_to_driver": True}
    if cfg.runtime_env:
        kwargs["runtime_env"] = cfg.runtime_env
    if address and address != "local":
        kwargs["address"] = address
    else:
        # a new Ray of our own, as documented; without "local", ray.init joins the latest `ray start` on
        # this machine (then refuses num_cpus with a traceback, or runs on a cluster nobody named). An
        # address of "local", Ray's own name for this, is the same: before, it lost num_cpus and the hook
        kwargs["address"] = "local"
        kwargs["include_dashboard"] = False
        kwargs["runtime_env"] = {"worker_process_setup_hook": "hsdpo.rayutil.quiet_worker", **cfg.runtime_env}
        if cfg.num_cpus is not None:
            kwargs["num_cpus"] = cfg.num_cpus
        if cfg.object_store_memory_gb is not None:
            kwargs["object_store_memory"] = int(cfg.object_store_memory_gb * 2**30)
    return kwargs


def started_here() -> bool:
    """Whether this process started the Ray it runs on (a local Ray: no autoscaler, what it has is
    all there is), as opposed to joining a cluster that may scale up to meet a request."""
    node = getattr(ray._private.worker, "_global_node", None)
    return bool(node is not None and getattr(node, "head", False))


def local_shortfall(need: dict[str, float]) -> tuple[str, float, float] | None:
    """(resource, needed, available) for the first of `need` that a local Ray this process started
    cannot give, else None; on a joined cluster always None (it may scale up to meet the request,
    where a local Ray would leave the request waiting forever)."""
    if not started_here():
        return None
    have = ray.cluster_resources()
    for res, amount in need.items():
        if amount > have.get(res, 0):
            return res, amount, have.get(res, 0)
    return None


def pool_bounds(size: int | tuple[int, int]) -> tuple[int, int]:
    """A pool size from config, `n` (exactly n actors) or `(min, max)` (autoscaling), as (min, max)."""
    if isinstance(size, (tuple, list)):
        return int(size[0]), int(size[1])
    return int(size), int(size)


def check_address(address: str, timeout_s: float = 10.0) -> None:
    """A `host:port` (or `ray://host:port`) address where nothing answers is a one-line error after at
    most `timeout_s`; `ray.init` itself would wait minutes for the GCS, then fail with a traceback.
    `auto` and other forms are left to Ray."""
    from hsdpo.config import InputError

    m = re.fullmatch(r"(?:ray://)?\[?([^\[\]/]+?)\]?:(\d+)", address.strip())
    if not m:
        return
    host, port = m.group(1), int(m.group(2))
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as err:
        raise InputError(f"Ray address {address}: nothing answers at {host}:{port} ({err.strerror or err});"
                         " start the cluster (`ray start --head`, `ray up`) or unset ray.address / RAY_ADDRESS"
                         " for a local Ray") from None


def table_dataset(table, batch_size: int, pool: int | tuple[int, int]) -> "ray.data.Dataset":
    """A stage's table (read on the driver: pairs, stored samples) as a Ray Data dataset for an actor
    pool of `pool` actors taking `batch_size` rows a call: about four blocks an actor, each a whole
    number of batches, so every actor of the pool has work (an actor takes a block at a time; a
    one-file table read by `read_parquet` is one block, one busy actor). Not `read_parquet`: for each
    read, Ray Data 2.60 starts 32 footer-reader actors (RAY_DATA_PARQUET_FOOTER_NUM_ACTORS), about
    9 s on a 2-core machine for a one-file table that pyarrow reads in milliseconds."""
    hi = pool_bounds(pool)[1]
    batches = max(1, -(-table.num_rows // batch_size))
    per_block = batch_size * -(-batches // (4 * hi))
    blocks = [table.slice(i, per_block) for i in range(0, table.num_rows, per_block)] or [table]
    return ray.data.from_arrow(blocks)


def actor_pool(size: int | tuple[int, int]) -> "ray.data.ActorPoolStrategy":
    """Ray Data's `compute` for a stateful map: `n` actors, or `(min, max)` autoscaling."""
    lo, hi = pool_bounds(size)
    return ray.data.ActorPoolStrategy(size=lo) if lo == hi else ray.data.ActorPoolStrategy(min_size=lo, max_size=hi)

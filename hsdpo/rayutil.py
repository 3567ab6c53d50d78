"""Connect to Ray: the configured address, else $RAY_ADDRESS (set inside `ray job submit`), else
a new local Ray. The only place that calls `ray.init`."""

from __future__ import annotations

import os

import ray

from hsdpo.config import RayConfig


def init_ray(cfg: RayConfig) -> None:
    if ray.is_initialized():
        return
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    kwargs: dict = {"log_to_driver": True}
    if cfg.runtime_env:
        kwargs["runtime_env"] = cfg.runtime_env
    if address:
        kwargs["address"] = address
    else:
        kwargs["include_dashboard"] = False
        if cfg.num_cpus is not None:
            kwargs["num_cpus"] = cfg.num_cpus
        if cfg.object_store_memory_gb is not None:
            kwargs["object_store_memory"] = int(cfg.object_store_memory_gb * 2**30)
    ray.init(**kwargs)
    # progress bars on both paths (local and cluster); HSDPO_PROGRESS=0 turns them off
    ray.data.DataContext.get_current().enable_progress_bars = os.environ.get("HSDPO_PROGRESS", "1") != "0"

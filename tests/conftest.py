"""Shared fixtures: one real local Ray for the whole session (of each pytest-xdist worker), paths to
the shared real data; the order test files run in."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"

os.environ.setdefault("HSDPO_PROGRESS", "0")
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA.is_dir():
        pytest.fail(f"real data not found at {DATA} (expected ../shared/data beside the repo)")
    return DATA


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray shared by every test of this process that needs one (4 logical CPUs on 2
    cores, so trainers, samplers and verifiers can be scheduled together). Under `make test` each of
    its pytest processes starts its own."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False,
                 object_store_memory=512 * 2**20, runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false"}})
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, data_dir) -> Path:
    """A random `micro` Qwen2 model with a tokenizer built from GSM8K text, saved as an HF folder."""
    import json

    from hsdpo.model import build_model, build_tokenizer

    out = tmp_path_factory.mktemp("tiny_model")
    rows = [json.loads(line) for line in (data_dir / "gsm8k" / "train.jsonl").read_text().splitlines()[:2000]]
    corpus = ["Question: " + r["question"] + "\nAnswer: " + r["answer"] for r in rows]
    tok = build_tokenizer(corpus, out)
    build_model("micro", tok, max_position_embeddings=512).save_pretrained(out)
    return out


# Test files, slowest first (on 2 CPU cores test_train.py takes 7-10 minutes, the next four 1-4,
# most others seconds). `make test` hands whole files to its pytest processes in collection order
# (`--dist loadfile --no-loadscope-reorder`): the longest start first, and the processes finish
# close together. Within a file the order is its own.
SLOW_FIRST = ("test_train.py", "test_cluster_jobs.py", "test_rundir.py", "test_sampling.py", "test_train_worker.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(SLOW_FIRST)))  # stable: in-file order kept

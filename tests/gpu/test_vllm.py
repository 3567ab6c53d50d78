"""The vllm backend for real: the ray.data.llm vLLM processor on the tiny model, in the same
Ray Data stream as the verifier. Skipped (not faked) where vLLM or CUDA is absent; the CPU side
(the one-line error without vLLM) is tests/cpu/test_sampling.py."""

from __future__ import annotations

import pytest

vllm = pytest.importorskip("vllm", reason="vLLM not installed (pip install 'hsdpo[vllm]' on a CUDA machine)")
torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_vllm_backend_writes_n_verified_rows(tmp_path, data_dir, tiny_model_dir, ray_local):
    from hsdpo.config import config_from_dict
    from hsdpo.data.stage import run_data
    from hsdpo.sampling.stage import run_sample
    from hsdpo.stage import read_rows

    cfg = config_from_dict({
        "run_dir": str(tmp_path / "run"),
        "data": {"sources": [{"name": "gsm8k", "path": str(data_dir / "gsm8k" / "train.jsonl"), "limit": 20}]},
        "sample": {"model_from": str(tiny_model_dir), "backend": "vllm", "n": 4, "max_new_tokens": 24,
                   "batch_size": 16, "vllm": {"gpu_memory_utilization": 0.3, "max_model_len": 512,
                                              "engine_kwargs": {"enforce_eager": True}}},
    })
    run_data(cfg)
    result = run_sample(cfg)
    rows = read_rows(result.path)
    assert len(rows) == 80 and len({(r["problem_id"], r["sample_id"]) for r in rows}) == 80
    assert all(r["finish_reason"] in ("stop", "length") and r["error"] == "" for r in rows)
    assert all(0 < r["num_tokens"] <= 24 for r in rows)
    assert all(isinstance(r["correct"], bool) for r in rows)
    # per-row seeds: the same (prompt, seed) samples the same text on a second run
    again = read_rows(run_sample(cfg, force=True).path)
    key = lambda r: (r["problem_id"], r["sample_id"])  # noqa: E731
    assert [r["completion"] for r in sorted(rows, key=key)] == [r["completion"] for r in sorted(again, key=key)]

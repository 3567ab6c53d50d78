"""GPU: the DPO worker as a plain process (bf16, ZeRO-2, NCCL world of one) via benchmarks/gpu_train.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

REPO = Path(__file__).resolve().parents[2]


def test_gpu_train_benchmark_small_shape(tmp_path):
    out = tmp_path / "gpu.json"
    subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_train.py"), "--preset", "small", "--pairs", "4",
                    "--seq", "128", "--steps", "3", "--warmup", "1", "--out", str(out)], check=True, timeout=600)
    res = json.loads(out.read_text())["results"]
    assert {r["name"] for r in res} == {"plain pytorch", "hsdpo (DeepSpeed ZeRO-2)"}
    assert all(r["tokens_per_s"] > 0 and r["peak_mem_gib"] > 0 for r in res)

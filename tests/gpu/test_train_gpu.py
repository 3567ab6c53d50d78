"""GPU: the DPO worker as a plain process (bf16, ZeRO-2, NCCL world of one) via benchmarks/gpu_train.py,
default and with compiled layers."""

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
                    "--seq", "128", "--steps", "3", "--warmup", "1", "--variant", 'compile:{"compile": true}',
                    "--out", str(out)], check=True, timeout=600)
    res = {r["name"]: r for r in json.loads(out.read_text())["results"]}
    assert set(res) == {"plain pytorch", "hsdpo (DeepSpeed ZeRO-2)", "hsdpo compile"}
    assert all(r["tokens_per_s"] > 0 and r["peak_mem_gib"] > 0 for r in res.values())
    # same model, pairs and seed: the compiled step starts from the same loss (bf16 kernels may differ slightly)
    assert res["hsdpo compile"]["first_loss"] == pytest.approx(res["hsdpo (DeepSpeed ZeRO-2)"]["first_loss"], abs=2e-2)

"""The training worker as a plain process (world size 1, no Ray), as benchmarks/gpu_train.py runs
it, with real DeepSpeed (gloo) and a micro Qwen2: each test runs a script in a fresh Python process
(DeepSpeed's comm backend and ZeRO state are per process) on four fixed pairs.

- a URI stage folder: the logs reach it at every checkpoint, the whole folder at the end, across a
  raise at step 3 and the resume from the step-2 checkpoint (PLAIN_WORKER);
- ZeRO-2's gradient reduction in one pass after backward, against its per-parameter hooks;
- `fused_clip` against DeepSpeed's own clipping and inf/NaN skip, and what a step reads back from
  the device;
- a model with its own code (`trust_remote_code`) through training, export (its generation config
  kept) and reference log-probs;
- LoRA with dropout: a run resumed from its checkpoint draws the uninterrupted run's masks.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest


PLAIN_WORKER = """
import json, os, sys
from hsdpo.train.config import DPOConfig
from hsdpo.train.worker import train_worker

model_dir, out_uri, ckpt, marker, rows_path = sys.argv[1:]
rows = json.load(open(rows_path))
cfg = DPOConfig(steps=4, batch_size=4, micro_batch_size=2, max_length=64, lr=1e-3, beta=0.5, checkpoint_every=2,
                fail_at_step=3, min_lr_ratio=1.0, tensorboard=True)
spec = {"kind": "dpo", "cfg": cfg.model_dump(mode="json"), "model_path": model_dir, "tokenizer_path": model_dir,
        "out_dir": out_uri, "ckpt_dir": ckpt, "marker": marker}
try:
    train_worker(spec, rows=rows)
except RuntimeError as e:
    print("CRASHED", str(e).splitlines()[0], flush=True)
local = out_uri[len("file://"):]
print("AFTER_CRASH", json.dumps(sorted(os.listdir(local)) if os.path.isdir(local) else []), flush=True)
hist = train_worker(spec, rows=rows)  # resumes from ckpt, as a restarted worker would
print("STEPS", json.dumps([h["step"] for h in hist]), flush=True)
"""


def test_a_uri_stage_folder_gets_the_logs_at_checkpoints_and_everything_at_the_end(tiny_model_dir, tmp_path):
    """The worker as a plain process (world size 1), writing to a URI stage folder: a run that dies
    after its step-2 checkpoint has pushed metrics.jsonl and TensorBoard events so far, but no
    model; resumed, it pushes the whole folder."""
    import subprocess
    import sys

    from transformers import AutoModelForCausalLM

    rows = [{"pair_id": f"p{i}", "prompt": "Question: 3 and 4?\nAnswer: ", "chosen": f"#### {7 + i}",
             "rejected": f"#### {9 - i}", "weight": 1.0, "ref_chosen_logp": -5.0, "ref_rejected_logp": -6.0}
            for i in range(4)]
    (tmp_path / "rows.json").write_text(json.dumps(rows))
    out = tmp_path / "bucket" / "dpo"
    proc = subprocess.run([sys.executable, "-c", PLAIN_WORKER, str(tiny_model_dir), f"file://{out}",
                           str(tmp_path / "ckpt"), str(tmp_path / "marker"), str(tmp_path / "rows.json")],
                          capture_output=True, text=True, timeout=300)
    lines = {ln.split(" ", 1)[0]: ln.split(" ", 1)[1] for ln in proc.stdout.splitlines()
             if ln.split(" ", 1)[0] in ("CRASHED", "AFTER_CRASH", "STEPS")}
    assert proc.returncode == 0 and "injected failure at step 3" in lines.get("CRASHED", ""), proc.stderr[-3000:]
    assert json.loads(lines["AFTER_CRASH"]) == ["metrics.jsonl", "tb"]  # the logs to the checkpoint, no model
    assert json.loads(lines["STEPS"]) == [1, 2, 3, 4]
    assert [json.loads(ln)["step"] for ln in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4]
    assert (out / "engine.json").exists() and list((out / "tb").iterdir())
    AutoModelForCausalLM.from_pretrained(out / "model")


COALESCE_WORKER = """
import json, sys
import hsdpo.train.strategy as strategy
from hsdpo.train.config import DPOConfig
from hsdpo.train.worker import train_worker

model_dir, rows_path = sys.argv[1:]
rows = json.load(open(rows_path))
seen = []
build = strategy.grad_reduction
def grad_reduction(engine, t, accum):  # records which path each backward took
    ctx = build(engine, t, accum)
    seen.append(type(ctx).__name__ != "nullcontext")
    return ctx
strategy.grad_reduction = grad_reduction
out = {}
for key in ("True 4", "True 2", "False 4", "False 2", "True 4 lora", "False 4 lora"):
    coalesce, micro = key.split()[0] == "True", int(key.split()[1])
    seen.clear()
    cfg = DPOConfig(steps=4, batch_size=4, micro_batch_size=micro, max_length=64, lr=2e-3, beta=0.5,
                    min_lr_ratio=1.0, coalesce_grad_reduction=coalesce, lora={"enabled": key.endswith("lora")})
    spec = {"kind": "dpo", "cfg": cfg.model_dump(mode="json"), "model_path": model_dir,
            "tokenizer_path": model_dir, "out_dir": None, "export": False}
    hist = train_worker(spec, rows=rows)
    out[key] = {"coalesced": sorted(set(seen)), "loss": [h["loss"] for h in hist],
                "grad_norm": [h["grad_norm"] for h in hist]}
import deepspeed.comm.comm as ds_comm
out["shm_comm_op"] = ds_comm.cdb.shm_comm_op is not None  # DeepSpeed's CPU backend, started by the worker
print("RESULT", json.dumps(out), flush=True)
"""


def _four_pair_worker(script: str, model_dir: Path, tmp_path: Path) -> dict:
    """Run `script` (a plain-process worker, world size 1) on four fixed pairs; its RESULT line."""
    import subprocess
    import sys

    rows = [{"pair_id": f"p{i}", "prompt": "Question: 3 and 4?\nAnswer: ", "chosen": f"3 + 4 = {7 + i}\n#### {7 + i}",
             "rejected": f"#### {9 - i}", "weight": [0.5, 1.0, 2.0, 1.5][i], "ref_chosen_logp": -5.0 - i,
             "ref_rejected_logp": -6.0} for i in range(4)]
    (tmp_path / "rows.json").write_text(json.dumps(rows))
    proc = subprocess.run([sys.executable, "-c", script, str(model_dir), str(tmp_path / "rows.json")],
                          capture_output=True, text=True, timeout=300)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and line, proc.stderr[-3000:]
    return json.loads(line[0][len("RESULT "):])


def test_coalesced_gradient_reduction_in_a_world_of_one_matches_per_parameter_hooks(tiny_model_dir, tmp_path):
    """World of one, one micro-batch a step: ZeRO-2 reduces gradients in one pass after backward
    (DeepSpeed's coalesce_grad_reduction), and the run is the same as with a hook a parameter, also
    with LoRA; with gradient accumulation the hooks stay. DeepSpeed's comm backend started without
    compiling its inference all-reduce op (strategy.skip_shm_comm_op)."""
    out = _four_pair_worker(COALESCE_WORKER, tiny_model_dir, tmp_path)
    assert out["shm_comm_op"] is False
    assert out["True 4"]["coalesced"] == [True]  # engaged only where it applies
    assert out["True 2"]["coalesced"] == out["False 4"]["coalesced"] == out["False 2"]["coalesced"] == [False]
    ref = out["False 4"]
    assert ref["loss"][-1] < ref["loss"][0]  # it trains
    for key in ("True 4", "True 2", "False 2"):
        assert out[key]["loss"] == pytest.approx(ref["loss"], rel=1e-6)
        assert out[key]["grad_norm"] == pytest.approx(ref["grad_norm"], rel=1e-5)
    lora, ref = out["True 4 lora"], out["False 4 lora"]  # frozen base weights: only adapters reduced
    assert lora["coalesced"] == [True] and ref["coalesced"] == [False] and ref["loss"][-1] < ref["loss"][0]
    assert lora["loss"] == pytest.approx(ref["loss"], rel=1e-6)
    assert lora["grad_norm"] == pytest.approx(ref["grad_norm"], rel=1e-5)


FUSED_CLIP_WORKER = """
import json, sys, tempfile
import torch
import hsdpo.train.strategy as strategy
from hsdpo.model import load_tokenizer
from hsdpo.train.config import DPOConfig
from hsdpo.train.worker import Reporter, build_and_resume, build_policy, train_worker
from transformers import AutoModelForCausalLM

model_dir, rows_path = sys.argv[1:]
rows = json.load(open(rows_path))
out = {}
for fused in (True, False):
    for precision in ("fp32", "bf16"):
        cfg = DPOConfig(steps=4, batch_size=4, micro_batch_size=4, max_length=64, lr=2e-3, beta=0.5, min_lr_ratio=1.0,
                        max_grad_norm=0.05, fused_clip=fused, precision=precision)
        spec = {"kind": "dpo", "cfg": cfg.model_dump(mode="json"), "model_path": model_dir,
                "tokenizer_path": model_dir, "out_dir": None, "export": False}
        hist = train_worker(spec, rows=rows)
        out[f"{fused} {precision}"] = {k: [h[k] for h in hist] for k in ("loss", "grad_norm", "skipped_steps")}

# a NaN loss: its step is skipped (weights, moments and step count kept) and counted, on both paths
for fused in (True, False):
    t = DPOConfig(steps=4, batch_size=2, micro_batch_size=2, lr=1e-2, fused_clip=fused)
    torch.manual_seed(0)
    engine = strategy.initialize(build_policy({}, t, AutoModelForCausalLM.from_pretrained(model_dir)), t, 2, 1)
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
    seen = []
    for scale in (float("nan"), 1.0, float("inf")):
        before = [p.detach().clone() for p in engine.module.parameters()]
        with strategy.grad_reduction(engine, t, 1):
            engine.backward(-engine(ids, torch.ones_like(ids))[0].sum() * scale)
        engine.step()
        moved = any(not torch.equal(a, p) for a, p in zip(before, engine.module.parameters()))
        finite = all(bool(torch.isfinite(p).all()) for p in engine.module.parameters())
        seen.append([moved, finite, strategy.take_skipped_steps(engine)])
    # DeepSpeed's own path keeps its count of skipped steps in the checkpoint: a run resumed from it
    # must not report those two steps again at its first step
    ckpt = tempfile.mkdtemp()
    strategy.save_checkpoint(engine, ckpt, 3, {"step": 3, "world": 1, "history": []})
    resumed, at, _ = build_and_resume({}, t, AutoModelForCausalLM.from_pretrained(model_dir), 2, 1,
                                      Reporter(False, ckpt))
    with strategy.grad_reduction(resumed, t, 1):
        resumed.backward(-resumed(ids, torch.ones_like(ids))[0].sum())
    resumed.step()
    out[f"nan {fused}"] = {"seen": seen, "clipping": engine.config["gradient_clipping"],
                           "compute_grad_norm": engine.config["zero_optimization"].get("compute_grad_norm", True),
                           "throughput_timer": engine.config["timers"]["throughput"]["enabled"],
                           "resumed": [at, int(getattr(resumed, "skipped_steps", 0)),
                                       strategy.take_skipped_steps(resumed)]}

# what backward + step read back from the device (on a GPU each read drains the queue): counted
# with a dispatch mode; DeepSpeed's synchronize calls counted through its accelerator
from deepspeed.accelerator import get_accelerator
from torch.utils._python_dispatch import TorchDispatchMode

class Reads(TorchDispatchMode):
    n = 0
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.n += func.overloadpacket.__name__ in ("_local_scalar_dense", "is_nonzero")
        return func(*args, **(kwargs or {}))

acc = get_accelerator()
plain_sync = acc.synchronize
for fused in (True, False):
    t = DPOConfig(steps=4, batch_size=2, micro_batch_size=2, precision="bf16", fused_clip=fused)
    engine = strategy.initialize(AutoModelForCausalLM.from_pretrained(model_dir), t, 2, 1)
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
    syncs = []
    acc.synchronize = lambda *a, **k: (syncs.append(1), plain_sync(*a, **k))[1]
    for step in range(2):  # the second step is counted: the first one also builds state
        loss = engine(input_ids=ids).logits.float().logsumexp(-1).mean()
        syncs.clear()
        with Reads() as reads:
            with strategy.grad_reduction(engine, t, 1):
                engine.backward(loss)
            engine.step()
    acc.synchronize = plain_sync
    out[f"reads {fused}"] = {"reads": reads.n, "synchronize": len(syncs)}
print("RESULT", json.dumps(out), flush=True)
"""


def test_fused_clip_equals_deepspeeds_clipping_and_skips_non_finite_steps(tiny_model_dir, tmp_path):
    """ZeRO-2's gradient norm, clip and inf/NaN skip inside the fused AdamW (`fused_clip`) train as
    DeepSpeed's own per-parameter path does, with clipping active every step (max_grad_norm 0.05), in
    fp32 and bf16; a NaN or inf loss leaves weights untouched on both paths and is counted (once: not
again by a run resumed from a checkpoint that holds DeepSpeed's count); and at
    bf16 its backward + step read nothing back from the device, where DeepSpeed's path does."""
    out = _four_pair_worker(FUSED_CLIP_WORKER, tiny_model_dir, tmp_path)
    ref = out["False fp32"]
    assert min(ref["grad_norm"]) > 0.05 and ref["loss"][-1] < ref["loss"][0]  # clipped every step, and trains
    assert out["True fp32"]["loss"] == pytest.approx(ref["loss"], rel=1e-6)
    assert out["True fp32"]["grad_norm"] == pytest.approx(ref["grad_norm"], rel=1e-5)
    assert out["True bf16"]["loss"] == pytest.approx(out["False bf16"]["loss"], rel=1e-4)
    # bf16 weights round at 2^-8: a weight that rounds the other way after 3 updates moves the norm ~1e-4
    assert out["True bf16"]["grad_norm"] == pytest.approx(out["False bf16"]["grad_norm"], rel=1e-3)
    assert all(out[k]["skipped_steps"] == [0] * 4 for k in ("True fp32", "False fp32", "True bf16", "False bf16"))
    for fused in (True, False):
        nan = out[f"nan {fused}"]
        assert nan["seen"] == [[False, True, 1], [True, True, 0], [False, True, 1]], fused
        assert nan["throughput_timer"] is False  # it synchronises the device at every forward and step
    assert out["nan False"]["resumed"] == [3, 2, 0]  # DeepSpeed restored its count of 2; none of them new
    assert out["nan True"]["resumed"] == [3, 0, 0]  # fused_clip counts in its own hook, step by step
    assert out["nan True"]["clipping"] == 0 and out["nan True"]["compute_grad_norm"] is False  # ours, not DeepSpeed's
    assert out["nan False"]["clipping"] == 1.0 and out["nan False"]["compute_grad_norm"] is True
    # the step asks nothing of the host: no device read or synchronize in backward + step (DeepSpeed's
    # own path reads its overflow flag and gradient norm back before the update)
    assert out["reads True"] == {"reads": 0, "synchronize": 0}
    assert out["reads False"]["reads"] >= 2 and out["reads False"]["synchronize"] == 0


CUSTOM_CODE_WORKER = """
import json, sys
import pandas as pd
import torch
from hsdpo.train.config import DPOConfig
from hsdpo.train.reflogp import RefLogpActor
from hsdpo.train.worker import train_worker
from transformers import AutoModelForCausalLM

_, rows_path = sys.argv[1:]
rows = json.load(open(rows_path))
custom = rows_path.rsplit("/", 1)[0] + "/custom"
out = {}
for trust in (False, True):
    cfg = DPOConfig(steps=2, batch_size=4, micro_batch_size=4, max_length=64, lr=2e-3)
    spec = {"kind": "dpo", "cfg": cfg.model_dump(mode="json"), "model_path": custom, "tokenizer_path": custom,
            "out_dir": f"{custom}_out_{trust}", "export": True, "trust_remote_code": trust}
    try:
        out[str(trust)] = [h["loss"] for h in train_worker(spec, rows=rows)]
    except Exception as err:
        out[str(trust)] = str(err).splitlines()[0]
exported = AutoModelForCausalLM.from_pretrained(f"{custom}_out_True/model", trust_remote_code=True)
ids = torch.tensor([[5, 6, 7]])
out["exported"] = [type(exported).__name__,
                   exported.generate(ids, max_new_tokens=3, min_new_tokens=3, do_sample=False).shape[1]]
out["generation"] = json.load(open(f"{custom}_out_True/model/generation_config.json"))
scored = RefLogpActor(custom, 64, 16, False, trust_remote_code=True)(pd.DataFrame(rows))
out["reflogp"] = scored["ref_chosen_logp"].tolist()
print("RESULT", json.dumps(out), flush=True)
"""


def test_a_model_with_its_own_code_trains_exports_and_scores_with_trust_remote_code(tiny_model_dir, tmp_path):
    """`model.trust_remote_code` reaches the training workers (model and tokenizer), the export (the
    exported folder keeps the model's class and code) and the reference and vLLM engines; before, the
    setting was read nowhere and such a model could not be loaded at all."""
    import shutil

    from hsdpo.sampling.config import SampleConfig
    from hsdpo.sampling.vllm import engine_kwargs

    custom = tmp_path / "custom"
    shutil.copytree(tiny_model_dir, custom)
    config = json.loads((custom / "config.json").read_text())
    config.update(model_type="hsdpo_custom", architectures=["CustomForCausalLM"],
                  auto_map={"AutoConfig": "configuration_custom.CustomConfig",
                            "AutoModelForCausalLM": "modeling_custom.CustomForCausalLM"})
    (custom / "config.json").write_text(json.dumps(config))
    (custom / "configuration_custom.py").write_text(
        "from transformers import Qwen2Config\n\nclass CustomConfig(Qwen2Config):\n    model_type = 'hsdpo_custom'\n")
    (custom / "modeling_custom.py").write_text(
        "from transformers import Qwen2ForCausalLM\nfrom .configuration_custom import CustomConfig\n\n"
        "class CustomForCausalLM(Qwen2ForCausalLM):\n    config_class = CustomConfig\n")
    # the base's own generation config (an Instruct model's extra end-of-turn eos id, its sampling
    # defaults) travels to the export, where one derived from config.json would lose them
    eos = config["eos_token_id"]
    (custom / "generation_config.json").write_text(json.dumps(
        {"eos_token_id": [eos, config["vocab_size"] - 1], "temperature": 0.7, "top_p": 0.8, "do_sample": True}))
    out = _four_pair_worker(CUSTOM_CODE_WORKER, tiny_model_dir, tmp_path)
    assert isinstance(out["False"], str) and "contains custom code which must" in out["False"]  # transformers refuses
    assert len(out["True"]) == 2 and all(math.isfinite(x) for x in out["True"])
    assert out["exported"] == ["CustomForCausalLM", 6]
    gen = out["generation"]
    assert (gen["eos_token_id"], gen["temperature"], gen["top_p"]) == ([eos, config["vocab_size"] - 1], 0.7, 0.8)
    assert len(out["reflogp"]) == 4 and all(x < 0 for x in out["reflogp"])
    assert engine_kwargs(SampleConfig(), trust_remote_code=True)["trust_remote_code"] is True
    assert "trust_remote_code" not in engine_kwargs(SampleConfig())


DROPOUT_RESUME_WORKER = """
import json, sys, tempfile
from hsdpo.train.config import DPOConfig
from hsdpo.train.worker import train_worker

model_dir, rows_path = sys.argv[1:]
rows = json.load(open(rows_path))
out = {}
for mode in ("straight", "crash"):
    d = tempfile.mkdtemp()
    cfg = DPOConfig(steps=4, batch_size=4, micro_batch_size=4, max_length=64, lr=1e-2, beta=0.5, checkpoint_every=2,
                    min_lr_ratio=1.0, fail_at_step=3 if mode == "crash" else None,
                    lora={"enabled": True, "r": 4, "alpha": 8, "dropout": 0.3})
    spec = {"kind": "dpo", "cfg": cfg.model_dump(mode="json"), "model_path": model_dir, "tokenizer_path": model_dir,
            "out_dir": None, "export": False, "ckpt_dir": d + "/ckpt", "marker": d + "/marker"}
    try:
        hist = train_worker(spec, rows=rows)
    except RuntimeError:
        hist = train_worker(spec, rows=rows)  # resumes from the step-2 checkpoint
    out[mode] = [h["loss"] for h in hist]
print("RESULT", json.dumps(out), flush=True)
"""


def test_lora_dropout_after_a_resume_draws_what_the_uninterrupted_run_drew(tiny_model_dir, tmp_path):
    """Steps 3 and 4 of a run that failed at step 3 and resumed from its step-2 checkpoint: with
    dropout on, the same losses as the run that never stopped (each step reseeds from the step, where
    a resumed run used to start again from the first step's random state)."""
    out = _four_pair_worker(DROPOUT_RESUME_WORKER, tiny_model_dir, tmp_path)
    assert len(out["straight"]) == len(out["crash"]) == 4
    assert out["crash"] == pytest.approx(out["straight"], rel=1e-6, abs=1e-6)
    assert out["straight"][2] != out["straight"][1]  # it trains

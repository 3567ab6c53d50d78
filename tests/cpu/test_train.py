"""Training on real Ray Train + real DeepSpeed (gloo, fp32) with a micro Qwen2: the stages end to end
and the invariances. One module-scoped run directory serves every test; each TorchTrainer run is a
few steps of 8 pairs x <= 64 tokens.

    run A: 1 worker, micro 4 x accum 2, ZeRO-2, checkpoints every 2 steps (global batch 8) -- the reference
    run C: 2 workers x micro 2 x accum 2 crash at step 3 (no retries); the stage re-run with
           1 worker, micro 2 x accum 4, resumes from their checkpoint (DeepSpeed universal
           checkpoint); once with ZeRO-2 and CPU offload (DeepSpeed's CPU Adam), once with ZeRO-3 -- = A
    run D: as A with torch.compile'd decoder layers (aot_eager), packing, a DeepSpeed extra (tiny buckets) and
           TensorBoard events                                                                -- = A

A worker that raises once and is restarted by FailureConfig, keeping its worker count: the LoRA SFT
test (2 workers against 1 uninterrupted: the same trajectory); the full-weight DPO worker run as a
plain process that raises at step 3 and resumes from its checkpoint: test_train_worker.py.
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from hsdpo.config import config_from_dict, with_overrides
from hsdpo.plan import Plan
from hsdpo.prompts import format_prompt
from hsdpo.rundir import RunDir, StageResult
from hsdpo.stage import read_rows, run_stage, write_rows
from hsdpo.train.tokenize import collate, encode_batch, pair_batch, sequence_logps

MAXLEN = 64


def _cfg(run_dir: Path):
    return config_from_dict({
        "run_dir": str(run_dir),
        "model": {"preset": "micro", "build_tokenizer": {"kind": "char"}, "max_position_embeddings": 128},
        "data": {"sources": [{"name": "synthetic", "synthetic": {"num_problems": 32}}]},
        # 0.7 passes over the 32 examples, 8 a step: ceil(2.8) = 3 steps, ceil(0.5 x 3) = 2 of them warmup
        "sft": {"epochs": 0.7, "warmup_ratio": 0.5, "batch_size": 8, "micro_batch_size": 4, "max_length": MAXLEN,
                "lr": 3e-3},
        "reflogp": {"max_length": MAXLEN, "batch_size": 4},
        "dpo": {"steps": 4, "batch_size": 8, "micro_batch_size": 4, "max_length": MAXLEN, "lr": 2e-3,
                "beta": 0.5, "checkpoint_every": 2, "min_lr_ratio": 1.0},
    })


def _pairs(run_dir: Path, cfg) -> None:
    probs = read_rows(RunDir(str(run_dir)).path("problems"))[:8]
    rows = [{"pair_id": f"p{i}", "problem_id": p["problem_id"], "prompt": format_prompt(p["question"]),
             "chosen": p["gold_solution"][:30], "rejected": p["gold_solution"][:30][::-1],
             "weight": [0.5, 1.0, 1.5, 0.0][i % 4] if i else 2.0, "kind": "hard"} for i, p in enumerate(probs)]

    def body(out: str) -> StageResult:
        write_rows(rows, out + "/pairs.parquet")
        return StageResult("pairs", "pairs", out, rows={"pairs": len(rows)})

    run_stage(cfg, Plan("pairs", "pairs", (), ("seed",)), body=body)


@pytest.fixture(scope="module")
def run(tmp_path_factory, ray_local):
    from hsdpo.data.stage import run_data
    from hsdpo.train.reflogp import run_reflogp
    from hsdpo.train.sft import run_sft

    run_dir = tmp_path_factory.mktemp("train_run")
    cfg = _cfg(run_dir)
    run_data(cfg)
    sft = run_sft(cfg)
    _pairs(run_dir, cfg)
    run_reflogp(cfg)
    return cfg, sft


def _history(cfg, output: str) -> list[dict]:
    lines = (Path(cfg.run_dir) / output / "metrics.jsonl").read_text().splitlines()
    return [json.loads(x) for x in lines]


@pytest.fixture(scope="module")
def run_a(run):
    from hsdpo.train.dpo import run_dpo

    cfg = with_overrides(run[0], ["dpo.output=dpo_a"])
    return cfg, run_dpo(cfg), _history(cfg, "dpo_a")


def _assert_same_trajectory(a: list[dict], b: list[dict], keys=("loss", "dpo_loss", "grad_norm")) -> None:
    assert [h["step"] for h in a] == [h["step"] for h in b]
    for ha, hb in zip(a, b):
        for k in keys:
            assert hb[k] == pytest.approx(ha[k], rel=1e-5, abs=1e-6), (k, ha["step"])


# ---- tokenisation and log-probs -------------------------------------------------------------------

def test_masking_and_truncation(tiny_model_dir):
    from hsdpo.model import load_tokenizer

    tok = load_tokenizer(str(tiny_model_dir))

    def encode(prompt: str, completion: str, max_length: int):
        return encode_batch(tok, [prompt], [completion], max_length)[0]

    e = encode("Question: 2+2?\nAnswer: ", "4", max_length=64)
    assert not e.truncated and e.input_ids[-1] == tok.eos_token_id
    b = collate([e, encode("Q", "12", 64)], tok.pad_token_id)
    assert b.loss_mask[0].sum().item() == len(e.input_ids) - e.prompt_len  # completion + eos only
    assert b.loss_mask[0, : e.prompt_len].sum().item() == 0
    assert b.attention_mask[1].sum().item() < b.input_ids.shape[1]  # right-padded
    # the LM head runs at the positions before each completion token: after the prompt, never in padding
    width = b.input_ids.shape[1]
    e2 = encode("Q", "12", 64)
    expect = [t for t in range(e.prompt_len - 1, len(e.input_ids) - 1)]
    expect += [width + t for t in range(e2.prompt_len - 1, len(e2.input_ids) - 1)]
    assert b.scored.tolist() == expect
    long = encode("Question: " + "x " * 100, "y " * 100, max_length=32)
    assert long.truncated and len(long.input_ids) == 32 and long.prompt_len == 16
    # a pair: the long chosen cuts the prompt, and the short rejected sees the same cut prompt
    from hsdpo.train.tokenize import encode_pairs

    rows = [{"prompt": "Question: " + "x " * 20, "chosen": "y " * 30, "rejected": "#### 9"},
            {"prompt": "Q: 1+1?", "chosen": "#### 2", "rejected": "#### 3"}]
    chosen, rejected = encode_pairs(tok, rows, 32)
    assert chosen.prompt_len[0] == rejected.prompt_len[0] == 16 and chosen.truncated[0] and rejected.truncated[0]
    assert chosen[0].input_ids[:16] == rejected[0].input_ids[:16]
    alone = encode(rows[0]["prompt"], rows[0]["rejected"], 32)  # on its own it would keep the whole prompt
    assert not alone.truncated and alone.prompt_len > 16
    assert rejected[1].input_ids == encode(rows[1]["prompt"], rows[1]["rejected"], 32).input_ids
    assert not chosen.truncated[1] and not rejected.truncated[1]


def test_batches_from_the_flat_table_are_the_examples_right_padded(tiny_model_dir):
    """`collate_rows` (the trainer's batches: rows of the chosen and the rejected table at once) puts
    each example's tokens, in order, left-aligned in its row: pad after, attention on the real tokens,
    the loss mask on the completion; any row order, repeats, and a padded width (`pad_to`)."""
    from hsdpo.model import load_tokenizer
    from hsdpo.train.tokenize import collate_rows

    tok = load_tokenizer(str(tiny_model_dir))
    prompts = ["Q: 1+1?\nA: ", "Question: what is 17 times 3?\nAnswer: ", "Q", "Q: 9-4?\nA: "]
    chosen = encode_batch(tok, prompts, ["2", "17 * 3 = 51. The answer is 51.", "12", "5"], 64)
    rejected = encode_batch(tok, prompts, ["3", "17 * 3 = 41", "13 13", "4 4 4 4 4 4"], 64, eos=False)
    pad = tok.pad_token_id
    for idx, pad_to in (([2, 0, 3], None), ([1, 1], 80), ([3], None)):
        b = collate_rows([(chosen, idx), (rejected, idx)], pad, pad_to)
        examples = [chosen[i] for i in idx] + [rejected[i] for i in idx]
        width = max([len(e.input_ids) for e in examples] + [pad_to or 0])
        assert b.input_ids.shape == (2 * len(idx), width) and b.input_ids.dtype == torch.long
        for row, e in enumerate(examples):
            n, p = len(e.input_ids), e.prompt_len
            assert b.input_ids[row].tolist() == e.input_ids + [pad] * (width - n)
            assert b.attention_mask[row].tolist() == [1] * n + [0] * (width - n)
            assert b.loss_mask[row].tolist() == [0] * p + [1] * (n - p) + [0] * (width - n)
        assert torch.equal(b.scored, (b.loss_mask[:, 1:] > 0).nonzero() @ torch.tensor([width, 1]))
        one = collate(examples, pad, pad_to)  # the same rule from encoded examples
        assert all(torch.equal(x, y) for x, y in zip((b.input_ids, b.attention_mask, b.loss_mask, b.scored),
                                                      (one.input_ids, one.attention_mask, one.loss_mask, one.scored)))


def test_packed_batches_score_each_example_as_its_own_padded_row_does(tiny_model_dir):
    """`collate_rows(pack=capacity)` (`packing: true`): examples end to end in fewer rows, each token
    where the layout puts it, positions from 0 an example; the log-probs, token counts and gradients
    are those of the padded batch (to 1e-5), in example order. An empty prompt (a completion scored
    from its second token on, as in a padded row) and an example longer than the capacity too."""
    from hsdpo.model import load_model, load_tokenizer
    from hsdpo.train.tokenize import collate_rows, pack_layout

    tok, model = load_tokenizer(str(tiny_model_dir)), load_model(str(tiny_model_dir), dtype="float32")
    prompts = ["Q: 1+1?\nA: ", "Question: what is 17 times 3?\nAnswer: ", "", "Q: 9-4?\nA: ", "Q"]
    chosen = encode_batch(tok, prompts, ["2", "17 * 3 = 51. The answer is 51.", "12 and 12", "5", "7 " * 20], 64)
    rejected = encode_batch(tok, prompts, ["3", "17 * 3 = 41", "13", "4 4 4 4 4 4", "8"], 64, eos=False)
    assert chosen.prompt_len[2] == 0
    idx = np.arange(5)
    padded = collate_rows([(chosen, idx), (rejected, idx)], tok.pad_token_id)
    examples = [chosen[i] for i in idx] + [rejected[i] for i in idx]
    lengths = np.array([len(e.input_ids) for e in examples])
    capacity = int(lengths.max()) - 1  # the longest example gets a row of its own, wider than the rest
    packed = collate_rows([(chosen, idx), (rejected, idx)], tok.pad_token_id, pack=capacity)
    row, start = pack_layout(lengths, capacity)
    assert packed.input_ids.shape[0] == row.max() + 1 < len(examples)
    assert packed.input_ids.numel() < padded.input_ids.numel()
    for e, ex in enumerate(examples):
        cols = slice(int(start[e]), int(start[e]) + len(ex.input_ids))
        assert packed.input_ids[row[e], cols].tolist() == ex.input_ids
        assert packed.position_ids[row[e], cols].tolist() == list(range(len(ex.input_ids)))
        assert packed.loss_mask[row[e], cols].tolist() == [0] * ex.prompt_len + [1] * (len(ex.input_ids) - ex.prompt_len)
    assert int(packed.attention_mask.sum()) == int(lengths.sum()) and packed.examples == len(examples)
    want, want_n = sequence_logps(model, padded.input_ids, padded.loss_mask, 4, scored=padded.scored)
    g_want = torch.autograd.grad(want.sum(), model.model.embed_tokens.weight)[0]
    got, got_n = sequence_logps(model, *packed.logp_args()[:2], 4, scored=packed.scored,
                                position_ids=packed.position_ids, owner=packed.owner, counts=packed.counts)
    g_got = torch.autograd.grad(got.sum(), model.model.embed_tokens.weight)[0]
    assert got_n.tolist() == want_n.tolist()
    assert torch.allclose(got, want, atol=1e-5) and torch.allclose(g_got, g_want, atol=1e-5)
    # longest first into the least filled row, ties to the first; the row count that computes least
    assert [a.tolist() for a in pack_layout(np.array([2, 1, 2]), 4)] == [[0, 0, 1], [0, 2, 0]]  # 2 rows x 3
    assert [a.tolist() for a in pack_layout(np.array([3, 3, 3, 3]), 10)] == [[0, 1, 0, 1], [0, 0, 3, 3]]  # not 9 + 3
    assert [a.tolist() for a in pack_layout(np.array([5, 1]), 3)] == [[0, 1], [0, 0]]  # one too long: a row of its own
    from hsdpo.train.config import DPOConfig
    from hsdpo.train.worker import Task

    rows = [{"prompt": p, "chosen": "#### 7", "rejected": "#### 9", "weight": 1.0, "ref_chosen_logp": -5.0,
             "ref_rejected_logp": -6.0} for p in prompts]
    for packing in (False, True):  # the trainer's micro-batches follow the config
        b = Task.from_rows("dpo", DPOConfig(max_length=64, packing=packing), rows, tok).batch([0, 1, 3])
        assert (b.position_ids is not None) == packing and b.examples == 6 and (b.input_ids.shape[0] < 6) == packing


def test_batched_encoding_is_one_tokenizer_call_a_text_and_survives_arrow(tiny_model_dir, data_dir):
    """encode_batch (what the trainer and the reference stage tokenise with) gives, for real GSM8K
    rows, what one tokenizer call a prompt and a completion gives, truncated by the documented rule
    (the prompt keeps its last max_length // 2 tokens, the completion is cut on the right); the flat
    arrays survive the Arrow columns the tokenised table travels in, read back across chunks."""
    import pyarrow as pa

    from hsdpo.model import load_tokenizer
    from hsdpo.train.tokenize import Sequences, encode_batch

    tok = load_tokenizer(str(tiny_model_dir))
    rows = [json.loads(line) for line in (data_dir / "gsm8k" / "test.jsonl").read_text().splitlines()[:40]]
    prompts, completions = [format_prompt(r["question"]) for r in rows], [r["answer"] for r in rows]
    eos = [i % 3 != 0 for i in range(len(rows))]
    max_length = 200  # 31 of the 40 are longer, 25 of those with a prompt over 100
    seqs = encode_batch(tok, prompts, completions, max_length, eos)
    expect = []
    for p, c, e in zip(prompts, completions, eos):
        p = tok(p, add_special_tokens=False)["input_ids"]
        c = tok(c, add_special_tokens=False)["input_ids"] + ([tok.eos_token_id] if e else [])
        cut = len(p) + len(c) > max_length
        if cut:
            p = p[-100:] if len(p) > 100 else p
            c = c[:max_length - len(p)]
        expect.append((p + c, len(p), cut))
    assert [(seqs[i].input_ids, seqs[i].prompt_len, seqs[i].truncated) for i in range(len(rows))] == expect
    assert 0 < sum(seqs.truncated) < len(rows) and 0 < sum(seqs.prompt_len == 100) < sum(seqs.truncated)
    halves = [pa.table(encode_batch(tok, prompts[a:b], completions[a:b], max_length, eos[a:b]).columns("x_"))
              for a, b in ((0, 25), (25, 40))]
    back = Sequences.from_columns(pa.concat_tables(halves), "x_")
    for name in ("ids", "offsets", "prompt_len", "truncated"):
        assert getattr(back, name).tolist() == getattr(seqs, name).tolist(), name
    assert back.ids.dtype.itemsize == 4 and len(encode_batch(tok, [], [], max_length)) == 0


def test_the_tokenising_tasks_load_a_rewritten_tokenizer_folder_anew(tmp_path):
    """Ray Data's tokenising tasks keep a tokenizer per worker process; a folder rewritten in place
    (a forced re-run of sft rebuilds `_init/` from another corpus) must not be served from that cache."""
    import os

    from hsdpo.model import TokenizerBuildConfig, build_tokenizer
    from hsdpo.train.launch import _tokenizer

    folder = tmp_path / "_init"
    build_tokenizer(["one two three"] * 10, folder, cfg=TokenizerBuildConfig(kind="char"))
    first = _tokenizer(str(folder))
    assert _tokenizer(str(folder)) is first  # cached while the folder is unchanged
    mtimes = {f.name: f.stat().st_mtime_ns for f in folder.iterdir()}
    build_tokenizer(["four five six seven"] * 10, folder, cfg=TokenizerBuildConfig(kind="char"))
    for f in folder.iterdir():  # rewritten within a coarse clock's tick: the sizes still tell
        os.utime(f, ns=(mtimes[f.name], mtimes[f.name]))
    second = _tokenizer(str(folder))
    assert second is not first and second.get_vocab() != first.get_vocab()
    assert second("seven")["input_ids"] != first("seven")["input_ids"]


def test_global_batches_walk_a_seeded_permutation_an_epoch():
    """Stream position i is row perm_e[i mod N] of epoch e = i // N (worker.py): each epoch visits
    every row once, batches run across the epoch boundary, and a resumed run (a later step first, the
    permutations drawn afresh) gets the same batches."""
    from hsdpo.train.worker import epoch_order, global_batch_indices

    n, batch, seed = 10, 4, 3
    perms = [torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + e)).tolist() for e in range(3)]
    stream = [perms[i // n][i % n] for i in range(7 * batch)]
    assert [global_batch_indices(s, batch, n, seed) for s in range(7)] == [stream[s * batch:(s + 1) * batch] for s in range(7)]
    assert sorted(stream[:n]) == sorted(stream[n:2 * n]) == list(range(n)) and stream[:n] != stream[n:2 * n]
    epoch_order.cache_clear()
    assert global_batch_indices(5, batch, n, seed) == stream[20:24]
    from hsdpo.train.config import SFTConfig
    from hsdpo.train.launch import worker_config

    t = SFTConfig(seed=seed)  # the workers' seed is the stage's plus the run's: a run seed redraws the order
    assert worker_config(t, 0).seed == seed and worker_config(t, 2).seed == seed + 2
    assert global_batch_indices(0, batch, n, worker_config(t, 2).seed) != global_batch_indices(0, batch, n, seed)


def test_the_held_out_split_is_by_problem_stable_and_refuses_an_empty_side():
    from hsdpo.config import InputError
    from hsdpo.train.config import DPOConfig
    from hsdpo.train.launch import split_heldout

    rows = [{"problem_id": f"q{i // 3}", "pair_id": f"p{i}"} for i in range(3000)]  # 3 pairs a problem
    t = DPOConfig(eval_fraction=0.1)
    train, held = split_heldout("dpo", t, rows)
    assert len(train) + len(held) == 3000 and 0.07 < len(held) / 3000 < 0.13
    assert not {r["problem_id"] for r in train} & {r["problem_id"] for r in held}  # a problem on one side
    assert split_heldout("dpo", t, list(reversed(rows)))[1] == list(reversed(held))  # not by position
    assert split_heldout("dpo", DPOConfig(), rows) == (rows, [])
    no_problem = [{"pair_id": f"p{i}"} for i in range(200)]  # external pairs: by pair_id
    assert 0 < len(split_heldout("dpo", DPOConfig(eval_fraction=0.5), no_problem)[1]) < 200
    null_problem = [{"problem_id": None, **r} for r in no_problem]  # a null column (parquet): by pair_id too
    assert split_heldout("dpo", DPOConfig(eval_fraction=0.5), null_problem)[1] == [
        {"problem_id": None, **r} for r in split_heldout("dpo", DPOConfig(eval_fraction=0.5), no_problem)[1]]
    with pytest.raises(InputError, match=r"^dpo.eval_fraction 0.01 holds out no problem of 2; raise it or set it to 0$"):
        split_heldout("dpo", DPOConfig(eval_fraction=0.01), rows[:6])
    with pytest.raises(InputError, match=r"^sft.eval_fraction 0.999 holds out every problem of 1; lower it"):
        split_heldout("sft", DPOConfig(eval_fraction=0.999), rows[:3])


def test_chunked_logps_equal_full_logits(tiny_model_dir):
    from hsdpo.model import load_model, load_tokenizer

    tok, model = load_tokenizer(str(tiny_model_dir)), load_model(str(tiny_model_dir), dtype="float32")
    rows = [{"prompt": "Question: 3 apples and 4 more?\nAnswer: ", "chosen": "3 + 4 = 7\n#### 7", "rejected": "#### 9"}]
    b = pair_batch(tok, rows * 2, 64)
    assert not bool(b.attention_mask.all())  # right padding: no mask reaches the decoder, the full forward has it
    chunked, n = sequence_logps(model, b.input_ids, b.loss_mask, chunk=5)
    logits = model(input_ids=b.input_ids, attention_mask=b.attention_mask).logits[:, :-1].float()
    full = torch.gather(logits.log_softmax(-1), -1, b.input_ids[:, 1:, None]).squeeze(-1)
    full = (full * b.loss_mask[:, 1:]).sum(-1)
    assert torch.allclose(chunked, full, atol=1e-5)
    g1 = torch.autograd.grad(chunked.sum(), model.model.embed_tokens.weight)[0]
    logits = model(input_ids=b.input_ids, attention_mask=b.attention_mask).logits[:, :-1].float()
    full = (torch.gather(logits.log_softmax(-1), -1, b.input_ids[:, 1:, None]).squeeze(-1) * b.loss_mask[:, 1:]).sum()
    g2 = torch.autograd.grad(full, model.model.embed_tokens.weight)[0]
    assert torch.allclose(g1, g2, atol=1e-5)
    assert n.tolist() == b.loss_mask[:, 1:].sum(-1).tolist()
    kept, _ = sequence_logps(model, b.input_ids, b.loss_mask, chunk=5, recompute=False)
    assert torch.allclose(kept, chunked, atol=1e-6)  # no recompute in backward: same values and gradient
    g3 = torch.autograd.grad(kept.sum(), model.model.embed_tokens.weight)[0]
    assert torch.allclose(g3, g1, atol=1e-6)


@pytest.mark.parametrize("name, peak", [
    ("NVIDIA H200", 989e12), ("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 PCIe", 756e12),
    ("NVIDIA H100 NVL", 835e12), ("NVIDIA A100-SXM4-80GB", 312e12), ("NVIDIA A100 80GB PCIe", 312e12),
    ("NVIDIA GH200 480GB", 989e12), ("NVIDIA L40S", 362e12), ("NVIDIA L4", 121e12),
    ("NVIDIA GeForce RTX 4090", 165e12),
    # not in the table: a name that merely contains a listed one is not that device
    ("NVIDIA L40", None), ("NVIDIA GB200", None), ("NVIDIA RTX A1000 6GB Laptop GPU", None), ("NVIDIA H20", None),
])
def test_the_peak_flops_table_matches_whole_model_names_and_never_guesses(name, peak):
    from hsdpo.train.mfu import peak_flops_of

    assert peak_flops_of(name) == peak


def test_model_flops_count_the_lm_head_only_where_it_runs(tiny_model_dir):
    from hsdpo.model import load_model, load_tokenizer
    from hsdpo.train.config import DPOConfig
    from hsdpo.train.mfu import flops_per_token, head_flops_per_token, step_flops
    from hsdpo.train.worker import Task

    model = load_model(str(tiny_model_dir), dtype="float32")
    cfg = model.config
    params = sum(p.numel() for p in model.parameters())  # tied: the embedding matrix once, as the head
    assert cfg.tie_word_embeddings and flops_per_token(model) == 6 * params
    assert head_flops_per_token(model) == 6 * cfg.vocab_size * cfg.hidden_size
    assert step_flops(100.0, 10.0, tokens=50, scored=20) == 100.0 * 50 - 10.0 * 30
    tok = load_tokenizer(str(tiny_model_dir))
    rows = [{"prompt": "Question: 3 and 4?\nAnswer: ", "chosen": "#### 7", "rejected": "3 + 4 = 8\n#### 8",
             "weight": 1.0, "ref_chosen_logp": -5.0, "ref_rejected_logp": -6.0}] * 3
    task = Task.from_rows("dpo", DPOConfig(max_length=MAXLEN), rows, tok)
    b = task.batch([0, 2])
    assert task.scored([0, 2]) == len(b.scored) == int(b.loss_mask.sum())  # what the MFU counts = what runs
    assert task.tokens([0, 2]) == int(b.attention_mask.sum())


def test_a_batch_of_zero_weight_pairs_gives_zero_loss_and_gradient(tiny_model_dir):
    from hsdpo.model import load_model, load_tokenizer
    from hsdpo.train.config import DPOConfig
    from hsdpo.train.tokenize import LogpModel
    from hsdpo.train.worker import Task

    tok, model = load_tokenizer(str(tiny_model_dir)), load_model(str(tiny_model_dir), dtype="float32")
    rows = [{"prompt": "Question: 3 and 4?\nAnswer: ", "chosen": "#### 7", "rejected": "#### 9", "weight": w,
             "ref_chosen_logp": -5.0, "ref_rejected_logp": -6.0} for w in (0.0, 0.0, 2.0)]
    task = Task.from_rows("dpo", DPOConfig(beta=0.5, max_length=MAXLEN), rows, tok)
    den = task.denominators([0, 1])
    loss, m = task.micro_step(LogpModel(model, 16), [0, 1], den, 1 / 2, torch.device("cpu"))
    loss.backward()
    assert den["weight"] == 0.0 and loss.item() == 0.0 and math.isfinite(m["dpo_loss_unweighted"].item())
    assert all(p.grad is None or not p.grad.any() for p in model.parameters())
    loss, _ = task.micro_step(LogpModel(model, 16), [0, 2], task.denominators([0, 2]), 1 / 2, torch.device("cpu"))
    assert loss.item() > 0  # a batch with any weight still counts
    from hsdpo.train.worker import evaluate

    zero = Task.from_rows("dpo", DPOConfig(beta=0.5, max_length=MAXLEN), rows[:2], tok)  # held out, all weight 0
    got = evaluate(zero, LogpModel(model, 16), 1, 0, torch.device("cpu"))
    assert "eval_dpo_loss" not in got and got["eval_dpo_loss_unweighted"] > 0  # not a 0.0 that reads as perfect
    assert "eval_dpo_loss" in evaluate(task, LogpModel(model, 16), 1, 0, torch.device("cpu"))


def test_ipo_in_the_worker_scores_each_pair_by_its_mean_token_log_probs(tiny_model_dir):
    """The micro-step hands IPO each side's completion token count: completions of different
    lengths, the loss against one computed from the same model's sums and counts. IPO takes no
    label smoothing (a config error)."""
    from hsdpo.model import load_model, load_tokenizer
    from hsdpo.train.config import DPOConfig
    from hsdpo.train.losses import weighted_dpo_loss
    from hsdpo.train.tokenize import LogpModel
    from hsdpo.train.worker import Task

    tok, model = load_tokenizer(str(tiny_model_dir)), load_model(str(tiny_model_dir), dtype="float32")
    rows = [{"prompt": "Question: 3 and 4?\nAnswer: ", "chosen": c, "rejected": r, "weight": w,
             "ref_chosen_logp": -9.0, "ref_rejected_logp": -14.0}
            for c, r, w in (("3 + 4 = 7\n#### 7", "#### 9", 1.0), ("#### 7", "3 + 4 = 12, so 12\n#### 12", 2.0))]
    cfg = DPOConfig(beta=0.5, max_length=MAXLEN, loss_type="ipo")
    task = Task.from_rows("dpo", cfg, rows, tok)
    loss, m = task.micro_step(LogpModel(model, 16), [0, 1], task.denominators([0, 1]), 1 / 2, torch.device("cpu"))
    b = pair_batch(tok, rows, MAXLEN)
    with torch.no_grad():
        logps, ntok = sequence_logps(model, b.input_ids, b.loss_mask)
    assert ntok[0] != ntok[2] and ntok[1] != ntok[3]  # the sides' lengths differ
    ref, w = torch.tensor([[-9.0, -14.0]] * 2), torch.tensor([1.0, 2.0])
    direct, _ = weighted_dpo_loss(logps[:2], logps[2:], ref[:, 0], ref[:, 1], w, beta=0.5, loss_type="ipo",
                                  chosen_tokens=ntok[:2], rejected_tokens=ntok[2:])
    summed, _ = weighted_dpo_loss(logps[:2], logps[2:], ref[:, 0], ref[:, 1], w, beta=0.5, loss_type="ipo",
                                  chosen_tokens=torch.ones(2), rejected_tokens=torch.ones(2))
    assert loss.item() == pytest.approx(direct.item(), rel=1e-5) and abs(loss.item() - summed.item()) > 1e-2
    with pytest.raises(ValueError, match="label_smoothing applies to loss_type sigmoid or robust, not ipo"):
        DPOConfig(loss_type="ipo", label_smoothing=0.1)


def test_dpo_rows_count_unusable_pairs_as_rejects(run, run_a, tmp_path, capsys):
    """And a pairs folder with no usable pair is one line before the stage folder is emptied."""
    from hsdpo.cli import main
    from hsdpo.config import dump_config
    from hsdpo.train.dpo import dpo_rows

    cfg = run[0]
    good = read_rows(RunDir(cfg.run_dir).path("ref_logps"))[0]
    bad = [{**good, "pair_id": "neg", "weight": -1.0}, {**good, "pair_id": "nan", "ref_chosen_logp": float("nan")},
           {**good, "pair_id": "empty", "rejected": "  "}, {**good, "pair_id": "none", "chosen": None},
           {**good, "pair_id": "same", "rejected": good["chosen"], "rejected_cut": False}]

    def body(out: str) -> StageResult:
        write_rows([good, *bad], out + "/pairs.parquet")
        return StageResult("reflogp", "ref_bad", out, rows={"pairs": 6})

    run_stage(cfg, Plan("reflogp", "ref_bad", (), ("seed",)), body=body)
    rows, rejects = dpo_rows(with_overrides(cfg, ["dpo.pairs_from=ref_bad"]))
    assert [r["pair_id"] for r in rows] == [good["pair_id"]]
    assert sorted((r["row"], r["reason"]) for r in rejects) == [
        ("empty", "empty_completion"), ("nan", "non_finite"), ("neg", "negative_weight"), ("none", "missing_chosen"),
        ("same", "identical_completions")]

    def only_bad(out: str) -> StageResult:
        write_rows(bad, out + "/pairs.parquet")
        return StageResult("reflogp", "ref_all_bad", out, rows={"pairs": 5})

    run_stage(cfg, Plan("reflogp", "ref_all_bad", (), ("seed",)), body=only_bad)
    path = tmp_path / "c.yaml"
    path.write_text(dump_config(cfg))
    before = RunDir(cfg.run_dir).manifest("dpo_a")
    assert main(["dpo", str(path), "dpo.output=dpo_a", "dpo.pairs_from=ref_all_bad"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "hsdpo: dpo: no usable pairs in 'ref_all_bad' (5 rejected: empty_completion 1, identical_completions 1,"
        " missing_chosen 1, negative_weight 1, non_finite 1)")
    assert RunDir(cfg.run_dir).manifest("dpo_a") == before


# ---- stages ---------------------------------------------------------------------------------------

def test_a_reference_pool_larger_than_the_local_ray_is_refused_and_the_cache_stays(run):
    from hsdpo.config import InputError
    from hsdpo.train.reflogp import run_reflogp

    rd = RunDir(run[0].run_dir)
    before = rd.manifest("ref_logps")
    with pytest.raises(InputError, match=r"^reflogp: 2 actors x 1 GPU \(reflogp.num_gpus\) is 2 in all and this local Ray has 0;"):
        run_reflogp(with_overrides(run[0], ["reflogp.num_gpus=1", "reflogp.concurrency=2"]))
    assert rd.manifest("ref_logps") == before and before["status"] == "complete"
    assert before["prompt_specials"] == 0  # this tokenizer puts no BOS before a prompt (dpo checks it)


def test_sft_from_scratch_trains_and_exports(run):
    cfg, sft = run
    hist = _history(cfg, "sft")
    assert [h["step"] for h in hist] == [1, 2, 3] and hist[-1]["loss"] < hist[0]["loss"]  # epochs 0.7 -> 3 steps
    # 2 warmup steps, then the cosine over the one step left, at its start
    assert [h["lr"] for h in hist] == pytest.approx([1.5e-3, 3e-3, 3e-3], rel=1e-6)
    assert sft.rows["examples"] == 32 and sft.metrics["tokens_per_s"] > 0
    assert (Path(cfg.run_dir) / "sft" / "model" / "model.safetensors").exists()
    assert RunDir(cfg.run_dir).manifest("sft")["status"] == "complete"


def test_cached_reference_equals_online_forward(run):
    from hsdpo.model import load_model, load_tokenizer

    cfg, _ = run
    ref = sorted(read_rows(RunDir(cfg.run_dir).path("ref_logps")), key=lambda r: r["pair_id"])
    path = str(Path(cfg.run_dir) / "sft" / "model")
    tok, model = load_tokenizer(path), load_model(path, dtype="float32").eval()
    b = pair_batch(tok, ref, MAXLEN)
    with torch.no_grad():
        logps, _ = sequence_logps(model, b.input_ids, b.loss_mask)
    n = len(ref)
    cached = torch.tensor([[r["ref_chosen_logp"], r["ref_rejected_logp"]] for r in ref], dtype=torch.float64)
    assert torch.allclose(cached[:, 0], logps[:n].double(), atol=1e-5)
    assert torch.allclose(cached[:, 1], logps[n:].double(), atol=1e-5)


def test_dpo_first_step_is_ln2_and_loss_falls_and_export_generates(run_a):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg, result, hist = run_a
    # policy starts as the reference: an online-reference loss would be exactly ln 2
    assert hist[0]["dpo_loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert hist[-1]["loss"] < hist[0]["loss"]  # one fixed batch of 8 pairs
    assert result.rows["pairs"] == 8 and hist[-1]["accuracy"] > 0.5
    folder = Path(cfg.run_dir) / "dpo_a" / "model"
    model, tok = AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    # training runs without the KV cache; the export must not carry that into inference
    assert model.config.use_cache and model.generation_config.use_cache
    ids = tok("Question: 1 + 2?\nAnswer: ", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=5, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape[1] > ids["input_ids"].shape[1]
    assert not list((Path(cfg.run_dir) / "_checkpoints" / "dpo_a").glob("*"))  # cleared after success


def test_ray_trains_report_lines_stay_out_of_the_worker_logs(run_a):
    """Ray Train logs each report's whole metrics dict at INFO through a logger outside `ray.train`;
    the worker keeps that logger at warnings (worker.quiet_report_log), so neither the worker's
    stderr, which reaches the driver, nor Ray Train's application log has them."""
    import ray

    logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"
    files = [*logs.glob("worker-*.err"), *(logs / "train").glob("ray-train-app-worker-*.log")]
    assert any(f.name.startswith("worker-") for f in files)
    assert not [f.name for f in files if "Reporting training result" in f.read_text(errors="replace")]


@pytest.mark.parametrize("zero", [2, 3])
def test_checkpoint_from_two_workers_resumes_with_one(run, run_a, zero):
    """2 workers (rank 0 raises at step 3, no retries), then a re-run with 1 resumes from their step-2
    checkpoint through DeepSpeed's universal format: the 1-worker trajectory throughout. ZeRO-2 runs
    with CPU offload (DeepSpeed's CPU Adam, its states converted and restored, = torch's AdamW);
    the raise-once-and-resume of a run that keeps its workers: the LoRA SFT test."""
    from transformers import AutoModelForCausalLM

    from hsdpo.config import InputError
    from hsdpo.train.dpo import run_dpo

    out = f"dpo_c{zero}"
    extra = ["dpo.offload=true"] if zero == 2 else []
    crash = with_overrides(run[0], [f"dpo.output={out}", f"dpo.zero_stage={zero}", "dpo.num_workers=2",
                                    "dpo.micro_batch_size=2", "dpo.fail_at_step=3", "dpo.max_failures=0", *extra])
    with pytest.raises(Exception):
        run_dpo(crash)
    assert RunDir(crash.run_dir).manifest(out) is None
    rerun = with_overrides(run[0], [f"dpo.output={out}", f"dpo.zero_stage={zero}", "dpo.micro_batch_size=2", *extra])
    # a state file of the checkpoint cut short (a copy that stopped) is one line before any worker
    # starts, the checkpoint kept; it used to fail every worker loading it
    (state,) = Path(rerun.run_dir, "_checkpoints", out).glob("*/run/checkpoint_2*/step2/zero_pp_rank_1_*optim_states.pt")
    whole = state.read_bytes()
    state.write_bytes(whole[:len(whole) // 2])
    with pytest.raises(InputError, match=rf"^dpo: the checkpoint to resume from, {state.parents[1]}, has step2/{state.name}"
                       rf" cut short \({len(whole) // 2} bytes, not a whole torch archive\); re-run with --force to"
                       rf" train from the start \(it removes {state.parents[3]}\)$"):
        run_dpo(rerun)
    state.write_bytes(whole)
    run_dpo(rerun)
    hist = _history(rerun, out)
    assert [h["workers"] for h in hist] == [2, 2, 1, 1]  # steps 1-2 come from the 2-worker checkpoint
    assert [h.get("resumed_at") for h in hist] == [None, None, 2, None]
    assert hist[-1]["loss"] < hist[0]["loss"]
    _assert_same_trajectory(run_a[2], hist)
    assert not list(Path(tempfile.gettempdir()).glob("hsdpo_universal_*"))  # the node's converted copy: removed
    AutoModelForCausalLM.from_pretrained(Path(rerun.run_dir) / out / "model")  # ZeRO-3: consolidated from shards


def test_compiled_layers_deepspeed_extras_and_tensorboard(run, run_a):
    """Also packed micro-batches (`packing`): compiled layers then take transformers' block mask.
    With the aot_eager backend: dynamo's capture of each layer and the log-softmax chunk, and
    AOTAutograd's forward and backward graphs, are what inductor is given; its C++ codegen on CPU
    (about a minute in a fresh venv, whose compiler flags miss inductor's cache) is left to the GPU
    check, where `compile` is measured with inductor."""
    from hsdpo.train.dpo import run_dpo

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = with_overrides(run[0], ["dpo.output=dpo_d", "dpo.compile=true", "dpo.compile_backend=aot_eager",
                                  "dpo.tensorboard=true", "dpo.packing=true",
                                  "dpo.deepspeed.zero_optimization.reduce_bucket_size=1000"])
    run_dpo(cfg)
    events = EventAccumulator(str(Path(cfg.run_dir) / "dpo_d" / "tb"))
    events.Reload()
    logged = [(e.step, e.value) for e in events.Scalars("loss")]
    assert logged == [(h["step"], pytest.approx(h["loss"], rel=1e-6)) for h in _history(cfg, "dpo_d")]
    info = json.loads((Path(cfg.run_dir) / "dpo_d" / "engine.json").read_text())
    assert info["deepspeed"]["zero_optimization"]["reduce_bucket_size"] == 1000  # reached the engine
    assert info["deepspeed"]["zero_optimization"]["contiguous_gradients"] is True  # ours kept beside it
    assert info["compiled_graphs"] > 0 and info["world"] == 1 and info["accum"] == 2
    _assert_same_trajectory(run_a[2], _history(cfg, "dpo_d"))
    reference = json.loads((Path(cfg.run_dir) / "dpo_a" / "engine.json").read_text())
    assert reference["compiled_graphs"] == 0 and "reduce_bucket_size" in reference["deepspeed"]["zero_optimization"]


def test_lora_dpo_trains_adapters_scores_held_out_pairs_and_exports_them_merged(run):
    """With the robust loss under 10 % label noise, which the held-out figures must use too. Also: a
    metrics line every step, reported to Ray Train only at the first and the last (no checkpoints,
    report_interval_s 5): Ray Train takes one report per controller poll (every 0.5 s as hsdpo sets
    it) and blocks the next one until then, which would hold each of steps 2-4 for up to a poll."""
    from safetensors.torch import load_file

    from hsdpo.train.dpo import dpo_rows, run_dpo
    from hsdpo.train.launch import split_heldout

    cfg = with_overrides(run[0], ["dpo.output=dpo_lora", "dpo.lora.enabled=true", "dpo.lora.r=8", "dpo.lora.alpha=16",
                                  "dpo.lora.target_modules=[q_proj, v_proj]", "dpo.checkpoint_every=0",
                                  "dpo.eval_fraction=0.4", "dpo.loss_type=robust", "dpo.label_smoothing=0.1"])
    run_dpo(cfg)
    hist = _history(cfg, "dpo_lora")
    assert [h["step"] for h in hist] == [1, 2, 3, 4]
    # 3 of the 8 pairs held out, scored at the last step only (eval_every 0): the exported model's losses
    _, heldout = split_heldout("dpo", cfg.dpo, dpo_rows(cfg)[0])
    assert RunDir(cfg.run_dir).manifest("dpo_lora")["rows"] == {"pairs": 5, "eval_pairs": 3}
    assert [("eval_dpo_loss" in h) for h in hist] == [False, False, False, True]
    direct = _heldout_losses(Path(cfg.run_dir) / "dpo_lora" / "model", "dpo", heldout, beta=cfg.dpo.beta,
                             loss_type="robust", label_smoothing=0.1)
    assert hist[-1]["eval_dpo_loss"] == pytest.approx(direct["eval_dpo_loss"], rel=1e-5)
    assert hist[-1]["eval_accuracy"] == pytest.approx(direct["eval_accuracy"])
    assert hist[-1]["time"] - hist[0]["time"] < 1.5  # three steps of a tiny model, no report waits between
    assert hist[0]["dpo_loss"] == pytest.approx(math.log(2), abs=1e-5)  # B = 0: policy starts as the reference
    assert hist[-1]["loss"] < hist[0]["loss"]
    before = load_file(Path(cfg.run_dir) / "sft" / "model" / "model.safetensors")
    after = load_file(Path(cfg.run_dir) / "dpo_lora" / "model" / "model.safetensors")
    assert set(after) == set(before)  # a plain HF folder: adapters merged, no peft keys
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.endswith(("q_proj.weight", "v_proj.weight")) for k in changed)


def _heldout_losses(model_dir: Path, kind: str, rows: list[dict], beta: float = 0.1,
                    **loss: Any) -> dict[str, float]:
    """The eval_* figures computed directly from an exported model: the SFT token NLL, or the DPO
    losses and accuracy against the cached reference log-probs, over all `rows` at once."""
    from hsdpo.model import load_model, load_tokenizer
    from hsdpo.train.losses import weighted_dpo_loss

    tok, model = load_tokenizer(str(model_dir)), load_model(str(model_dir), dtype="float32").eval()
    if kind == "sft":
        enc = encode_batch(tok, [r["prompt"] for r in rows], [r["completion"] for r in rows], MAXLEN)
        b = collate([enc[i] for i in range(len(enc))], tok.pad_token_id)
    else:
        b = pair_batch(tok, rows, MAXLEN)
    with torch.no_grad():
        logps, ntok = sequence_logps(model, b.input_ids, b.loss_mask)
    if kind == "sft":
        return {"eval_loss": float(-logps.sum() / ntok.sum()), "eval_truncated": int(enc.truncated.sum())}
    n = len(rows)
    ref = torch.tensor([[r["ref_chosen_logp"], r["ref_rejected_logp"]] for r in rows])
    w = torch.tensor([float(r["weight"]) for r in rows])
    _, m = weighted_dpo_loss(logps[:n], logps[n:], ref[:, 0], ref[:, 1], w, beta=beta, **loss)
    return {"eval_dpo_loss": float(m["dpo_loss"]), "eval_accuracy": float(m["accuracy"])}


def test_lora_sft_resumes_on_two_workers_after_a_failure_and_scores_held_out_problems(run):
    """LoRA SFT from the SFT model, 13 of the 32 problems held out: 1 worker uninterrupted against 2
    workers whose rank 0 raises at step 3 and resumes from the step-2 checkpoint (the adapters and
    their Adam state come back from DeepSpeed's checkpoint; the frozen base from `init_from`). The
    same trajectory, held-out losses included (13 rows over 2 ranks x micro 2: rank 1 pads its last
    forward with a row counted zero); the last equals the exported model's loss on those rows; the
    export is a plain HF folder in which only the adapted projections moved."""
    from safetensors.torch import load_file

    from hsdpo.train.launch import split_heldout
    from hsdpo.train.sft import run_sft, sft_rows

    lora = ["sft.init_from=sft", "sft.epochs=null", "sft.steps=4", "sft.checkpoint_every=2", "sft.lora.enabled=true", "sft.lora.r=4",
            "sft.lora.alpha=8", "sft.lora.target_modules=[q_proj, v_proj]", "sft.lr=1e-2", "sft.eval_fraction=0.4",
            "sft.eval_every=2"]
    one = with_overrides(run[0], lora + ["sft.output=sft_lora_a"])
    two = with_overrides(run[0], lora + ["sft.output=sft_lora_b", "sft.num_workers=2", "sft.micro_batch_size=2",
                                         "sft.fail_at_step=3", "sft.max_failures=1"])
    run_sft(one)
    run_sft(two)
    a, b = _history(one, "sft_lora_a"), _history(two, "sft_lora_b")  # (that LoRA learns: the DPO test)
    assert [h["workers"] for h in b] == [2, 2, 2, 2]
    assert [h.get("resumed_at") for h in b] == [None, None, 2, None]  # rank 0 did fail at step 3
    manifest = RunDir(one.run_dir).manifest("sft_lora_b")
    assert manifest["metrics"]["resumes"] == 1 and manifest["rows"] == {"examples": 19, "eval_examples": 13}
    assert not any("resumed_at" in h for h in a)
    assert [("eval_loss" in h) for h in a] == [False, True, False, True]
    _assert_same_trajectory(a, b, keys=("loss", "grad_norm"))
    for ha, hb in zip(a[1::2], b[1::2]):
        assert hb["eval_loss"] == pytest.approx(ha["eval_loss"], rel=1e-5)
    assert a[1]["eval_loss"] != a[3]["eval_loss"]
    _, heldout = split_heldout("sft", one.sft, sft_rows(one)[0])
    direct = _heldout_losses(Path(one.run_dir) / "sft_lora_a" / "model", "sft", heldout)
    assert a[-1]["eval_loss"] == pytest.approx(direct["eval_loss"], rel=1e-5)
    assert a[-1]["eval_truncated"] == b[-1]["eval_truncated"] == direct["eval_truncated"] > 0
    assert RunDir(one.run_dir).manifest("sft_lora_a")["metrics"]["eval_loss"] == a[-1]["eval_loss"]
    before = load_file(Path(one.run_dir) / "sft" / "model" / "model.safetensors")
    for out in ("sft_lora_a", "sft_lora_b"):
        after = load_file(Path(one.run_dir) / out / "model" / "model.safetensors")
        assert set(after) == set(before)  # adapters merged, no peft keys
        changed = {k for k in before if not torch.equal(before[k], after[k])}
        assert changed and all(k.endswith(("q_proj.weight", "v_proj.weight")) for k in changed), out
    merged_a = load_file(Path(one.run_dir) / "sft_lora_a" / "model" / "model.safetensors")
    merged_b = load_file(Path(one.run_dir) / "sft_lora_b" / "model" / "model.safetensors")
    for k in merged_a:
        assert torch.allclose(merged_a[k], merged_b[k], atol=1e-5), k


@pytest.mark.parametrize("overrides, message", [
    (["dpo.wandb_project=hsdpo-test"], "hsdpo: dpo.wandb_project needs the wandb package: pip install 'hsdpo[wandb]'"),
    (["dpo.batch_size=6"], "hsdpo: dpo.batch_size 6 is not a multiple of dpo.micro_batch_size 4 x dpo.num_workers 1"),
    # the session's local Ray has 4 CPUs and no GPU: Ray Train would wait for an autoscaler
    (["dpo.num_workers=8", "dpo.batch_size=32"], "hsdpo: dpo: 8 workers x 1 CPU (dpo.cpus_per_worker) need 8 CPUs and this"
     " local Ray has 4 (ray.num_cpus); lower dpo.num_workers or dpo.cpus_per_worker, or join a cluster (ray.address)"),
    (["dpo.epochs=2"], "hsdpo: bad config value at dpo: Value error, steps 4 and epochs 2 are both set; give one"
     " (steps=null to train by epochs)"),
    (["dpo.warmup_steps=2", "dpo.warmup_ratio=0.1"], "hsdpo: bad config value at dpo: Value error, warmup_steps 2 and"
     " warmup_ratio 0.1 are both set; give one"),
    (["dpo.loss_type=hinge", "dpo.label_smoothing=0.1"], "hsdpo: bad config value at dpo: Value error,"
     " label_smoothing applies to loss_type sigmoid or robust, not hinge"),
    (["dpo.eval_fraction=0.01"], "hsdpo: dpo.eval_fraction 0.01 holds out no problem of 8; raise it or set it to 0"),
    (["dpo.attn_implementation=flash_attention_2"], "hsdpo: bad config value at dpo: Value error, attn_implementation"
     " flash_attention_2 runs on GPUs only; set use_gpu=true or use sdpa"),
    (["dpo.compile=true", "dpo.compile_backend=cudagraphs"], "hsdpo: bad config value at dpo: Value error,"
     " compile_backend cudagraphs runs on GPUs only; set use_gpu=true or use inductor"),
    (["dpo.compile_backend=tvm"], "hsdpo: bad config value at dpo.compile_backend: Input should be 'inductor',"
     " 'cudagraphs' or 'aot_eager' (got 'tvm')"),
    (["dpo.use_gpu=true"], "hsdpo: dpo.use_gpu: 1 worker needs 1 GPU and this local Ray has 0; lower dpo.num_workers,"
     " set dpo.use_gpu=false, or join a cluster (ray.address)"),
    # what passes through to DeepSpeed is read by DeepSpeed on the driver: it used to fail in each
    # worker (a section it validates) or be ignored without a word (a key it does not read)
    (["dpo.deepspeed.zero_optimization.reduce_bucket_sise=1000"], "hsdpo: dpo.deepspeed: DeepSpeed refuses the merged"
     " config (ValidationError in DeepSpeedZeroConfig: reduce_bucket_sise: Extra inputs are not permitted)"),
    (["dpo.deepspeed.gradient_acumulation_steps=2"], "hsdpo: dpo.deepspeed.gradient_acumulation_steps: DeepSpeed"
     f" {importlib.metadata.version('deepspeed')} reads no such key (it would be ignored); see its config documentation"),
])
def test_bad_training_settings_fail_on_one_line_before_any_worker(run, run_a, tmp_path, capsys, overrides, message):
    """Refused before the stage folder is emptied: a re-run of `dpo_a` with a bad setting keeps the
    finished output it would have replaced."""
    import importlib.util

    from hsdpo.cli import main
    from hsdpo.config import dump_config

    if "wandb" in overrides[0] and importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here")
    path = tmp_path / "c.yaml"
    path.write_text(dump_config(run[0]))
    rd = RunDir(run[0].run_dir)
    before = rd.manifest("dpo_a")
    assert before["status"] == "complete"
    assert main(["dpo", str(path), "dpo.output=dpo_a", *overrides]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == message
    assert rd.manifest("dpo_a") == before and (Path(rd.path("dpo_a")) / "model" / "config.json").is_file()
